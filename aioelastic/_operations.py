"""Operations on jobs through the registry alone (ElasticJob's Lifecycle, Statistics, Sharding
and Config APIs): no running scheduler needed, only the registry URL.

    async with Operations("zookeeper://127.0.0.1:2181/my-app") as ops:
        for job in await ops.jobs():
            print(job.name, job.status)
        await ops.trigger("settle")

On a scheduler's live session (e.g. the embedded ``memory://`` one): ``Operations.of(scheduler)``.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Self, TypeVar

import anyio

from ._config import MAX_SHARDING_TOTAL_COUNT, JobConfig, decode_registry_config
from ._coordination import write_triggers
from ._cron import CronTrigger
from ._errors import (
    BadVersionError,
    ConfigError,
    JobNotFoundError,
    NodeExistsError,
    NoNodeError,
    NotFoundError,
    OperationRefusedError,
    SessionLostError,
)
from ._escape import printable
from ._json import loads as loads_json
from ._layout import DISABLED, ENABLED, SHUTDOWN, JobPaths, item_of, namespace_root
from ._missed import DEFAULT_TOLERANCE, MissedFire, missed_fires
from ._urls import RegistryURL, check_node_name, parse_registry_url
from .registry import create_registry
from .registry._protocol import Registry, Watcher, WatchEvent

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from .tracing._search import TraceSearch

__all__ = [
    "InstanceInfo",
    "ItemInfo",
    "ItemStatus",
    "JobBrief",
    "JobSchedule",
    "JobStatus",
    "Operations",
    "ServerInfo",
    "ServerStatus",
]

T = TypeVar("T")
P = ParamSpec("P")

#: Fields an operator may not change through ``update_job_config``.
_FIXED_FIELDS = frozenset({"name", "listeners", "overwrite"})


class JobStatus(enum.StrEnum):
    """ElasticJob's ``JobStatisticsAPI`` statuses."""

    OK = "OK"
    CRASHED = "CRASHED"  # no live instance
    DISABLED = "DISABLED"  # every server of the job is disabled
    SHARDING_FLAG = "SHARDING_FLAG"  # a reshard is pending or an owner is gone
    INVALID_CONFIG = "INVALID_CONFIG"  # the config node cannot be decoded: the job is held


class ServerStatus(enum.StrEnum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


class ItemStatus(enum.StrEnum):
    """ElasticJob's ``ShardingStatisticsAPI`` statuses, in their order of precedence."""

    DISABLED = "DISABLED"
    RUNNING = "RUNNING"
    SHARDING_FLAG = "SHARDING_FLAG"  # no owner, or the owner is not a live instance
    PENDING = "PENDING"


@dataclass(frozen=True, slots=True)
class JobBrief:
    """A job's summary; with ``INVALID_CONFIG`` the description says what is wrong."""

    name: str
    cron: str | None
    sharding_total_count: int
    description: str
    instance_count: int
    status: JobStatus
    time_zone: str = "UTC"
    next_fire_time: datetime | None = None
    """When the stored cron fires next (None: no cron, an invalid one, or none ahead)."""


@dataclass(frozen=True, slots=True)
class JobSchedule:
    """A job's stored cron and zone, and since when (the config node's last write, UTC)."""

    cron: str | None
    time_zone: str
    since: datetime | None


@dataclass(frozen=True, slots=True)
class JobChain:
    """A job's dependencies: the jobs it runs after, and the jobs that run after it."""

    upstream: tuple[str, ...]
    downstream: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    host: str
    status: ServerStatus
    instances: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A live instance's node. ``shutting_down``: an operator asked it to stop the job (its
    identity fields are then unknown: the node holds ``SHUTDOWN``)."""

    instance_id: str
    host: str | None
    ip: str | None
    hostname: str | None
    pid: int | None
    shutting_down: bool = False
    problem: str | None = None
    """What is wrong with the node (e.g. persistent: no live instance holds it), or None."""


@dataclass(frozen=True, slots=True)
class ItemInfo:
    item: int
    instance: str | None
    status: ItemStatus
    failover: bool
    misfire: bool
    problem: str | None = None
    """What is wrong with the item's nodes (an unreadable owner, a stale mark), or None."""


def _parse_instance(instance_id: str, raw: bytes) -> InstanceInfo:
    if raw == SHUTDOWN:
        return InstanceInfo(instance_id, None, None, None, None, shutting_down=True)
    try:
        data = loads_json(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return InstanceInfo(instance_id, None, None, None, None)
    pid = data.get("pid")
    return InstanceInfo(
        instance_id=instance_id,
        host=_str_or_none(data.get("host")),
        ip=_str_or_none(data.get("ip")),
        hostname=_str_or_none(data.get("hostname")),
        pid=pid if isinstance(pid, int) else None,
    )


def _parse_config(job: str, raw: bytes) -> dict[str, Any]:
    try:
        return dict(decode_registry_config(raw))
    except ConfigError as exc:
        raise ConfigError(exc.field, exc.value, f"job {job!r}: {exc.reason}") from None


def _owner_text(raw: bytes | None) -> tuple[str | None, str | None]:
    """An owner node's data as shown (undecodable bytes escaped) and its problem, if any."""
    if not raw:
        return None, None
    try:
        return raw.decode(), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), "owner is not UTF-8 (leader reshards)"


def _next_fire(cron: str | None, zone: str) -> datetime | None:
    if not cron:
        return None
    try:
        return CronTrigger(cron, zone).next_fire_time(datetime.now(UTC))
    except ConfigError:
        return None


def _printable(data: bytes) -> str:
    """Node data as text: undecodable bytes and control characters escaped (``\\xNN``)."""
    return printable(data.decode("utf-8", "backslashreplace"))


def _count(stored: dict[str, Any]) -> int:
    count = stored.get("sharding_total_count", 1)
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _setter(event: anyio.Event) -> Watcher:
    def watcher(_: WatchEvent) -> None:
        event.set()

    return watcher


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _deadline(
    method: Callable[Concatenate[Operations, P], Awaitable[T]],
) -> Callable[Concatenate[Operations, P], Coroutine[Any, Any, T]]:
    """The operation gets ``self.timeout`` seconds; past it, ``SessionLostError``."""

    async def bounded(self: Operations, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            with anyio.fail_after(self.timeout):
                return await method(self, *args, **kwargs)
        except TimeoutError:
            where = f" at {self.url}" if self.url is not None else ""
            raise SessionLostError(
                f"the registry{where} did not answer within {self.timeout:g}s"
            ) from None

    functools.update_wrapper(bounded, method)
    return bounded


class Operations:
    """Job operations over one registry namespace. Every call has a deadline (``timeout``
    seconds); an unreachable or lost registry raises ``SessionLostError``."""

    def __init__(self, registry_url: str | RegistryURL, *, timeout: float = 30.0) -> None:
        url = parse_registry_url(registry_url) if isinstance(registry_url, str) else registry_url
        self._setup(url, url.namespace, None, timeout)

    def _setup(
        self, url: RegistryURL | None, namespace: str, registry: Registry | None, timeout: float
    ) -> None:
        self.url = url
        self.namespace = check_node_name("namespace", namespace)
        if not timeout >= 0:  # (NaN too: no operation would ever time out)
            raise ConfigError("timeout", timeout, "must be >= 0 seconds")
        self.timeout = timeout
        self._registry = registry
        self._stack: AsyncExitStack | None = None

    @classmethod
    def for_registry(cls, registry: Registry, namespace: str, *, timeout: float = 30.0) -> Self:
        """Operations on a registry session someone else owns (and has started)."""
        ops = cls.__new__(cls)
        ops._setup(None, namespace, registry, timeout)
        return ops

    @classmethod
    def of(cls, scheduler: Scheduler, *, timeout: float = 30.0) -> Self:
        """Operations on a running scheduler's registry session and namespace."""
        return cls.for_registry(
            scheduler.registry, scheduler.registry_url.namespace, timeout=timeout
        )

    async def __aenter__(self) -> Self:
        if self.url is None or self._stack is not None:
            return self  # a borrowed session (or already open): nothing to open
        stack = AsyncExitStack()
        registry = create_registry(self.url)
        try:
            await registry.start(stack)  # bounded by the URL's connect_timeout
        except (SessionLostError, OSError) as exc:
            await stack.aclose()
            raise SessionLostError(f"cannot reach the registry at {self.url}: {exc}") from exc
        self._stack, self._registry = stack, registry
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self._registry = None
            await stack.aclose()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise RuntimeError("use `async with Operations(url) as ops:` first")
        return self._registry

    def paths(self, job: str) -> JobPaths:
        return JobPaths(self.namespace, job)

    # -- small reads --

    async def _data(self, path: str) -> bytes | None:
        try:
            data, _ = await self.registry.get(path)
        except NoNodeError:
            return None
        return data

    async def _children(self, path: str) -> list[str]:
        try:
            return await self.registry.get_children(path)
        except NoNodeError:
            return []

    async def _exists(self, path: str) -> bool:
        return await self.registry.exists(path) is not None

    async def _stored_config(self, job: str) -> dict[str, Any]:
        raw = await self._data(self.paths(job).config)
        if raw is None:
            raise JobNotFoundError(job)
        return _parse_config(job, raw)

    async def _require_job(self, job: str) -> None:
        """``JobNotFoundError`` unless the job has a config node (valid or not)."""
        if not await self._exists(self.paths(job).config):
            raise JobNotFoundError(job)

    async def _live_instances(self, job: str) -> dict[str, InstanceInfo]:
        p = self.paths(job)
        out = {}
        for inst in sorted(await self._children(p.instances)):
            try:
                raw, stat = await self.registry.get(p.instance(inst))
            except NoNodeError:
                continue
            info = _parse_instance(inst, raw)
            if not stat.ephemeral_owner:
                info = replace(info, problem="persistent node: no live instance holds it")
            out[inst] = info
        return out

    # -- statistics --

    @_deadline
    async def jobs(self) -> list[JobBrief]:
        """Every job of the namespace (sorted by name), with ElasticJob's job status."""
        out = []
        for name in sorted(await self._children(namespace_root(self.namespace))):
            try:
                out.append(await self._brief(name))
            except JobNotFoundError:
                continue  # not a job (or one being removed)
        return out

    @_deadline
    async def job(self, name: str) -> JobBrief:
        """One job's brief; ``JobNotFoundError`` if there is none."""
        return await self._brief(name)

    async def _brief(self, name: str) -> JobBrief:
        instances = await self._children(self.paths(name).instances)
        try:
            stored = await self._stored_config(name)
        except ConfigError as exc:
            return JobBrief(name, None, 0, str(exc), len(instances), JobStatus.INVALID_CONFIG)
        cron = _str_or_none(stored.get("cron"))
        zone = _str_or_none(stored.get("time_zone")) or "UTC"
        return JobBrief(
            name=name,
            cron=cron,
            sharding_total_count=_count(stored),
            description=str(stored.get("description", "")),
            instance_count=len(instances),
            status=await self._status(name, instances),
            time_zone=zone,
            next_fire_time=_next_fire(cron, zone),
        )

    async def _status(self, name: str, instances: list[str]) -> JobStatus:
        p = self.paths(name)
        if not instances:
            return JobStatus.CRASHED
        servers = await self._children(p.servers)
        states = [await self._data(p.server(host)) for host in servers]
        if servers and all(state == DISABLED for state in states):
            return JobStatus.DISABLED
        if await self._exists(p.sharding_necessary):
            return JobStatus.SHARDING_FLAG
        owners = set()
        for item in await self._children(p.sharding):
            number = item_of(item)
            owner = await self._data(p.item_instance(number)) if number is not None else None
            text, _ = _owner_text(owner)
            if text is not None:
                owners.add(text)
        if not owners or not owners <= set(instances):  # ElasticJob's own check
            return JobStatus.SHARDING_FLAG
        return JobStatus.OK

    @_deadline
    async def schedule(self, name: str) -> JobSchedule:
        """The job's stored cron (None for a one-off job or an undecodable config) and since
        when it is stored; ``JobNotFoundError`` if there is no job."""
        try:
            raw, stat = await self.registry.get(self.paths(name).config)
        except NoNodeError:
            raise JobNotFoundError(name) from None
        since = datetime.fromtimestamp(stat.mtime, UTC) if stat.mtime > 0 else None
        try:
            stored = _parse_config(name, raw)
        except ConfigError:
            return JobSchedule(None, "UTC", since)
        zone = _str_or_none(stored.get("time_zone")) or "UTC"
        return JobSchedule(_str_or_none(stored.get("cron")), zone, since)

    async def missed_fires(
        self,
        search: TraceSearch,
        name: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        tolerance: timedelta = DEFAULT_TOLERANCE,
    ) -> list[MissedFire]:
        """Due fires of the job that started on no instance, per the trace (see
        :func:`aioelastic.missed_fires`; ``since`` defaults to a day ago)."""
        return await missed_fires(self, search, name, since=since, until=until, tolerance=tolerance)

    @_deadline
    async def servers(self, name: str) -> list[ServerInfo]:
        """The job's servers (sorted by host) with their status and live instances."""
        await self._require_job(name)
        p = self.paths(name)
        instances = await self._live_instances(name)
        out = []
        for host in sorted(await self._children(p.servers)):
            raw = await self._data(p.server(host))
            if raw is None:
                continue
            status = ServerStatus.DISABLED if raw == DISABLED else ServerStatus.ENABLED
            mine = tuple(i for i, info in instances.items() if info.host == host)
            out.append(ServerInfo(host, status, mine))
        return out

    @_deadline
    async def instances(self, name: str) -> list[InstanceInfo]:
        """The job's live instances (sorted by id), as their nodes describe them."""
        await self._require_job(name)
        return list((await self._live_instances(name)).values())

    @_deadline
    async def sharding(self, name: str) -> list[ItemInfo]:
        """Every item (``0..sharding_total_count-1`` and any stale one still in the registry;
        with an invalid config, the items present in the registry)."""
        try:
            total = _count(await self._stored_config(name))
        except ConfigError:
            total = 0
        p = self.paths(name)
        live = set(await self._children(p.instances))
        present = {i for i in map(item_of, await self._children(p.sharding)) if i is not None}
        out = []
        for item in sorted(present | set(range(min(total, MAX_SHARDING_TOTAL_COUNT)))):
            owner, problem = _owner_text(await self._data(p.item_instance(item)))
            running = await self.registry.exists(p.item_running(item))
            if running is not None and not running.ephemeral_owner:
                problem = "persistent running mark: no run holds it (leader deletes it)"
            if await self._exists(p.item_disabled(item)):
                status = ItemStatus.DISABLED
            elif running is not None:
                status = ItemStatus.RUNNING
            elif owner is None or owner not in live:
                status = ItemStatus.SHARDING_FLAG
            else:
                status = ItemStatus.PENDING
            failover = await self._exists(p.item_failover(item))
            misfire = await self._exists(p.item_misfire(item))
            out.append(ItemInfo(item, owner, status, failover, misfire, problem))
        return out

    @_deadline
    async def dump(self, name: str) -> dict[str, str]:
        """The job's registry subtree, path → data (UTF-8; undecodable bytes and control
        characters escaped)."""
        root = self.paths(name).root
        if not await self._exists(root):
            raise JobNotFoundError(name)
        out: dict[str, str] = {}
        pending = [root]
        while pending:
            path = pending.pop()
            try:
                data, _ = await self.registry.get(path)
                kids = await self.registry.get_children(path)
            except NoNodeError:
                continue  # deleted while we walked
            out[path] = _printable(data)
            pending.extend(f"{path}/{kid}" for kid in kids)
        return dict(sorted(out.items()))

    # -- config --

    @_deadline
    async def job_config(self, name: str) -> dict[str, Any]:
        """The job's stored config: ``JobConfig`` fields as JSON, minus code-only ones
        (``error_handler`` is ``"custom"`` when code passed a callable)."""
        return await self._stored_config(name)

    @_deadline
    async def update_job_config(self, name: str, /, **changes: Any) -> dict[str, Any]:
        """Validate ``changes`` through ``JobConfig`` and store them; live instances apply them
        (they watch the node). Returns the new stored config."""
        _check_changeable(changes)
        while True:  # compare-and-set on the node's version: no lost concurrent update
            stored, version = await self._config_at(name)
            try:
                return await self._store_config(name, stored, version, changes)
            except BadVersionError:
                continue

    async def _config_at(self, name: str) -> tuple[dict[str, Any], int]:
        try:
            raw, stat = await self.registry.get(self.paths(name).config)
        except NoNodeError:
            raise JobNotFoundError(name) from None
        return _parse_config(name, raw), stat.version

    async def _store_config(
        self, name: str, stored: dict[str, Any], version: int, changes: dict[str, Any]
    ) -> dict[str, Any]:
        """Write ``stored`` with ``changes`` (validated through ``JobConfig``) if the node still
        has ``version`` (``BadVersionError`` otherwise); a custom error handler stays marked."""
        custom = stored.get("error_handler") == "custom"
        base = {k: v for k, v in stored.items() if k in JobConfig.model_fields}
        if custom:
            base.pop("error_handler")
        config = JobConfig(**{**base, **changes, "name": name})
        if changes.keys() & {"cron", "time_zone", "catchup_window"}:
            config.check_fires()  # (a stored cron that expired since does not block others)
        new = config.to_registry()
        if custom and "error_handler" not in changes:
            data = {**json.loads(new), "error_handler": "custom"}
            new = json.dumps(data, sort_keys=True).encode()
        await self.registry.set(self.paths(name).config, new, version=version)
        result: dict[str, Any] = json.loads(new)
        return result

    @_deadline
    async def remove_job(self, name: str, *, force: bool = False) -> None:
        """Delete the job's whole registry tree. Refused (``OperationRefusedError``) while
        instances are alive, unless ``force`` (they are asked to shut the job down first)."""
        p = self.paths(name)
        if not await self._exists(p.root):
            raise JobNotFoundError(name)
        live = await self._children(p.instances)
        if live and not force:
            raise OperationRefusedError(
                f"job {name!r} still runs on {len(live)} instance(s): "
                "stop them first, or force the removal"
            )
        for inst in live:
            await self._set_if_exists(p.instance(inst), SHUTDOWN)
        if live:  # let them leave, or they may recreate nodes of the deleted tree
            await self._wait_no_instances(p, self.timeout / 2)
        try:
            await self.registry.delete(p.root, recursive=True)
        except NoNodeError:
            pass

    async def _wait_no_instances(self, p: JobPaths, timeout: float) -> bool:
        """Wait (watching, not polling) until the job has no instance node; False on timeout."""
        with anyio.move_on_after(timeout):
            while True:
                changed = anyio.Event()
                try:
                    left = await self.registry.get_children(p.instances, _setter(changed))
                except NoNodeError:
                    return True
                if not left:
                    return True
                await changed.wait()
        return False

    async def _set_if_exists(self, path: str, data: bytes) -> bool:
        try:
            await self.registry.set(path, data)
        except NoNodeError:
            return False
        return True

    # -- lifecycle --

    @_deadline
    async def trigger(self, name: str) -> list[str]:
        """Ask every live instance to run the job's items once now; returns their ids (an
        instance that already has a trigger queued keeps just that one)."""
        await self._stored_config(name)
        return await write_triggers(self.registry, self.paths(name))

    async def disable_server(self, name: str, host: str | None = None) -> list[str]:
        """Disable one server (or every server of the job); the leader reshards its items away.
        Returns the hosts changed."""
        return await self._set_servers(name, host, DISABLED)

    async def enable_server(self, name: str, host: str | None = None) -> list[str]:
        """Enable one server (or every server of the job). Returns the hosts changed."""
        return await self._set_servers(name, host, ENABLED)

    @_deadline
    async def _set_servers(self, name: str, host: str | None, state: bytes) -> list[str]:
        await self._stored_config(name)
        p = self.paths(name)
        hosts = sorted(await self._children(p.servers)) if host is None else [host]
        done = [h for h in hosts if await self._set_if_exists(p.server(h), state)]
        if host is not None and not done:
            raise NotFoundError(f"job {name!r} has no server {host!r}")
        return done

    @_deadline
    async def disable_item(self, name: str, item: int) -> None:
        """Stop running ``item`` (on whichever instance owns it) until enabled again."""
        path = self.paths(name).item_disabled(await self._check_item(name, item))
        try:
            await self.registry.create(path, make_parents=True)
        except NodeExistsError:
            pass

    @_deadline
    async def enable_item(self, name: str, item: int) -> None:
        """Run ``item`` again (undo ``disable_item``)."""
        path = self.paths(name).item_disabled(await self._check_item(name, item))
        try:
            await self.registry.delete(path)
        except NoNodeError:
            pass

    async def _check_item(self, name: str, item: int) -> int:
        total = int((await self._stored_config(name)).get("sharding_total_count", 1))
        if not 0 <= item < total:
            raise NotFoundError(f"job {name!r} has items 0..{total - 1}, not {item}")
        return item

    @_deadline
    async def shutdown_instance(self, name: str, instance_id: str) -> None:
        """Ask one instance to stop running the job (its node's data becomes ``SHUTDOWN``,
        ElasticJob's protocol); it then deletes its node and the others reshard."""
        await self._stored_config(name)
        if not await self._set_if_exists(self.paths(name).instance(instance_id), SHUTDOWN):
            raise NotFoundError(f"job {name!r} has no live instance {instance_id!r}")

    # -- config with an explicit version (the console's edit form) --

    @_deadline
    async def job_config_version(self, name: str) -> tuple[dict[str, Any], int]:
        """The job's stored config and its node's version, for ``update_job_config_at``."""
        return await self._config_at(name)

    @_deadline
    async def update_job_config_at(
        self, name: str, version: int, /, **changes: Any
    ) -> dict[str, Any]:
        """``update_job_config`` only if the config node still has ``version``: someone else's
        change in between raises ``BadVersionError`` instead of being overwritten."""
        _check_changeable(changes)
        stored, current = await self._config_at(name)
        if current != version:
            raise BadVersionError(f"{self.paths(name).config}: version {current}, not {version}")
        return await self._store_config(name, stored, version, changes)

    @_deadline
    async def chain(self, name: str) -> JobChain:
        """The job's dependency chain as stored: the jobs it runs after (its ``after``) and
        the jobs that run after it (every job whose ``after`` names it)."""
        upstream = _names(await self._stored_config(name))
        downstream = []
        for other in sorted(await self._children(namespace_root(self.namespace))):
            if other == name:
                continue
            try:
                if name in _names(await self._stored_config(other)):
                    downstream.append(other)
            except (JobNotFoundError, ConfigError):
                continue  # not a job, or one whose config is unreadable
        return JobChain(upstream, tuple(downstream))


def _check_changeable(changes: dict[str, Any]) -> None:
    fixed = sorted(_FIXED_FIELDS & changes.keys())
    if fixed:
        raise ConfigError(fixed[0], changes[fixed[0]], "cannot be changed here")


def _names(stored: dict[str, Any]) -> tuple[str, ...]:
    after = stored.get("after") or ()
    return tuple(str(n) for n in after) if isinstance(after, list | tuple) else ()
