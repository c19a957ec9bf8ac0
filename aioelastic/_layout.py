"""The registry node layout (ElasticJob's): the only place that builds registry paths, and the
values its status nodes hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .registry._paths import is_at_or_under

__all__ = [
    "DISABLED",
    "ENABLED",
    "SHUTDOWN",
    "JobPaths",
    "is_leaf",
    "is_number",
    "item_of",
    "namespace_root",
]

#: ``servers/{host}`` data: the server runs its items, or an operator disabled it.
ENABLED = b"ENABLED"
DISABLED = b"DISABLED"
#: ``instances/{id}`` data once an operator asked that instance to stop the job.
SHUTDOWN = b"SHUTDOWN"


def namespace_root(namespace: str) -> str:
    return f"/{namespace}"


def is_number(name: str) -> bool:
    """``name`` is what ``str()`` of a non-negative int writes (an item, a fire key's epoch
    ms): ASCII digits, no leading zero, at most 18. ``str.isdigit`` alone passes names that
    ``int()`` refuses ("\u00b2", 5,000 digits) or reads as another's number ("\u0661", "01")."""
    return (
        0 < len(name) <= 18
        and name.isascii()
        and name.isdigit()
        and (name[0] != "0" or len(name) == 1)
    )


_ITEM_LEAVES = frozenset({"instance", "running", "misfire", "disabled", "failover"})
_FIXED_LEAVES = frozenset(
    {
        ("config",),
        ("catchup", "last"),
        ("leader", "election", "instance"),
        ("leader", "sharding", "necessary"),
    }
)


def is_leaf(parts: tuple[str, ...]) -> bool:
    """A job's node (``parts`` relative to its root) that the layout keeps childless: a
    status or a mark, whose deletes fail once another client created a node under it. Their
    parents are ``JobPaths.leaf_parents``: a new leaf goes into both."""
    n = len(parts)
    if n == 2 and parts[0] in ("instances", "servers", "trigger"):
        return True
    if n == 3 and parts[0] == "sharding":
        return parts[2] in _ITEM_LEAVES and is_number(parts[1])
    if n == 3 and parts[0] == "guarantee":
        return parts[1] in ("started", "completed") and is_number(parts[2])
    if n == 4 and parts[:3] == ("leader", "failover", "items"):
        return is_number(parts[3])
    return parts in _FIXED_LEAVES


def item_of(name: str) -> int | None:
    """The sharding item a child of ``sharding`` (or of the failover items, a dependent
    fire's completions) stands for; None for a node of any other name (garbage)."""
    return int(name) if is_number(name) else None


#: One tuple per distinct parts, shared by every job's cache (items are small ints: job ``a``'s
#: ``("sharding", 0, "instance")`` is job ``b``'s). Only fixed and per-item parts get here.
_PARTS: dict[tuple[object, ...], tuple[object, ...]] = {}


@dataclass(frozen=True, slots=True)
class JobPaths:
    """Paths of one job's nodes under ``/{namespace}/{job}``."""

    namespace: str
    job: str
    # Paths are rebuilt on every fire for every item: each instance keeps the strings of the
    # paths that are fixed or per item (bounded by the job's items), keyed by their parts; paths
    # with an instance id or a fire key in them are joined on each call (``_u``).
    _cache: dict[tuple[object, ...], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # The last ``parts`` asked for: the subscriptions of one job ask for the same path in a row
    # (a fire's running mark), and one entry costs no per-path memory.
    _last: tuple[str, tuple[str, ...]] = field(
        default=("", ()), init=False, repr=False, compare=False
    )
    _root: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_root", f"/{self.namespace}/{self.job}")

    @property
    def root(self) -> str:
        return self._root

    def _p(self, *parts: object) -> str:
        path = self._cache.get(parts)
        if path is None:
            path = self._cache[_PARTS.setdefault(parts, parts)] = self._u(*parts)
        return path

    def _u(self, *parts: object) -> str:
        return "/".join([self.root, *map(str, parts)])

    @property
    def config(self) -> str:
        return self._p("config")

    @property
    def servers(self) -> str:
        return self._p("servers")

    def server(self, host: str) -> str:
        return self._u("servers", host)

    @property
    def instances(self) -> str:
        return self._p("instances")

    def instance(self, instance_id: str) -> str:
        return self._u("instances", instance_id)

    @property
    def sharding(self) -> str:
        return self._p("sharding")

    def item(self, item: int) -> str:
        return self._p("sharding", item)

    def item_instance(self, item: int) -> str:
        return self._p("sharding", item, "instance")

    def item_running(self, item: int) -> str:
        return self._p("sharding", item, "running")

    def item_misfire(self, item: int) -> str:
        return self._p("sharding", item, "misfire")

    def item_disabled(self, item: int) -> str:
        return self._p("sharding", item, "disabled")

    def item_failover(self, item: int) -> str:
        return self._p("sharding", item, "failover")

    @property
    def leader(self) -> str:
        return self._p("leader")

    @property
    def leader_election(self) -> str:
        return self._p("leader", "election")

    @property
    def leader_election_instance(self) -> str:
        return self._p("leader", "election", "instance")

    @property
    def leader_sharding(self) -> str:
        return self._p("leader", "sharding")

    @property
    def sharding_necessary(self) -> str:
        return self._p("leader", "sharding", "necessary")

    @property
    def failover_items(self) -> str:
        return self._p("leader", "failover", "items")

    def failover_item(self, item: int) -> str:
        return self._p("leader", "failover", "items", item)

    def guarantee_started(self, item: int | None = None) -> str:
        return (
            self._p("guarantee", "started")
            if item is None
            else self._p("guarantee", "started", item)
        )

    def guarantee_completed(self, item: int | None = None) -> str:
        return (
            self._p("guarantee", "completed")
            if item is None
            else self._p("guarantee", "completed", item)
        )

    # -- dependent jobs (an aioelastic extension: ElasticJob has none) --

    def dependents_fire(self, item: int, instance_id: str | None = None) -> str:
        """The fire key of an upstream item's run in progress on ``instance_id`` (a failover
        run of it completes that fire)."""
        base = self._p("dependents", "fires", item)
        return base if instance_id is None else f"{base}/{instance_id}"

    def dependents_upstream(self, item: int, instance_id: str | None = None) -> str:
        """A dependent job's run of ``item`` on ``instance_id`` in progress: its upstream fire
        and task ids (a failover run of it gets them from here)."""
        base = self._p("dependents", "upstream", item)
        return base if instance_id is None else f"{base}/{instance_id}"

    def dependents_done(self, key: str | None = None, item: int | None = None) -> str:
        """The items of the upstream fire ``key`` that completed (data: task id, outcome)."""
        base = self._p("dependents", "done") if key is None else self._u("dependents", "done", key)
        return base if item is None else f"{base}/{item}"

    def dependents_claimed(self, key: str) -> str:
        """Created by the one instance that requests the dependents' fires of fire ``key``."""
        return self._u("dependents", "done", key, "claimed")

    @property
    def requests(self) -> str:
        """A dependent job's fire requests, one child per upstream fire key."""
        return self._p("requests")

    def request(self, key: str) -> str:
        return self._u("requests", key)

    def request_upstream(self, key: str, upstream: str) -> str:
        """Upstream ``upstream`` completed fire ``key`` (data: its task ids, all succeeded?)."""
        return self._u("requests", key, f"up-{upstream}")

    def request_ran(self, key: str, item: int | None = None) -> str:
        """Items of the dependent job claimed for the request ``key`` (each runs once)."""
        base = self._u("requests", key, "ran")
        return base if item is None else f"{base}/{item}"

    # -- bounded catch-up (an aioelastic extension) --

    def leaf_parents(self, items: Iterable[int]) -> list[str]:
        """Every node with children that ``is_leaf`` takes for leaves (``items``: the job's
        items, whose marks are leaves)."""
        return [
            self.root,  # config
            self.instances,
            self.servers,
            self.triggers,
            self.failover_items,
            self.leader_election,
            self.leader_sharding,
            self._p("catchup"),
            self.guarantee_started(),
            self.guarantee_completed(),
            *map(self.item, items),
        ]

    @property
    def catchup_last(self) -> str:
        """The scheduled time (epoch ms) of the latest fire that started running items."""
        return self._p("catchup", "last")

    @property
    def catchup_requests(self) -> str:
        return self._p("catchup", "requests")

    def catchup_request(self, key: str) -> str:
        """A catch-up fire requested (data: the missed fire times it stands for)."""
        return self._u("catchup", "requests", key)

    def catchup_ran(self, key: str, item: int | None = None) -> str:
        """Items claimed for the catch-up fire ``key`` (each runs once)."""
        base = self._u("catchup", "requests", key, "ran")
        return base if item is None else f"{base}/{item}"

    @property
    def triggers(self) -> str:
        return self._p("trigger")

    def trigger(self, instance_id: str) -> str:
        return self._u("trigger", instance_id)

    @property
    def system_time(self) -> str:
        return self._p("systemTime", "current")

    def parts(self, path: str) -> tuple[str, ...]:
        """``path`` relative to the job's root, split (``()`` for the root, or outside it)."""
        last = self._last
        if last[0] == path:
            return last[1]
        root = self._root
        if not is_at_or_under(path, root):
            parts: tuple[str, ...] = ()
        else:
            parts = tuple(path[len(root) + 1 :].split("/")) if len(path) > len(root) else ()
        object.__setattr__(self, "_last", (path, parts))
        return parts

    def persistent_skeleton(self) -> list[str]:
        """Persistent container nodes every job has (created once, never ephemeral)."""
        return [
            self.root,
            self.servers,
            self.instances,
            self.sharding,
            self.leader,
            self.leader_election,
            self.leader_sharding,
            self._p("leader", "failover"),
            self.failover_items,
            self.triggers,
            self.guarantee_started(),
            self.guarantee_completed(),
        ]
