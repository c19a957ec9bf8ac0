"""Registry commands: jobs, job, servers, instances, sharding, item, instance, dump."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

from .._config import JobConfig, load_settings
from .._errors import ConfigError, OperationRefusedError
from .._json import loads as loads_json
from .._operations import JobBrief, JobStatus, Operations
from .._urls import RegistryURL
from ..registry._paths import invalid_path_reason
from ._format import (
    compact_time,
    parse_time,
    short_time,
    to_jsonable,
    write_json,
    write_table,
)
from ._glance import Glance, glance_json, glances
from ._trace import open_search, optional_tracing_url, outcome_text, tracing_url

__all__ = ["registry_url", "run_registry_command"]


@dataclass(frozen=True)
class _Call:
    ops: Operations
    args: argparse.Namespace
    out: TextIO
    json: bool

    def done(self, message: str, data: Any) -> None:
        if self.json:
            write_json(self.out, data)
        else:
            self.out.write(message + "\n")

    def table(self, data: Any, headers: list[str], rows: list[tuple[Any, ...]]) -> None:
        if self.json:
            write_json(self.out, data)
        else:
            write_table(self.out, headers, rows)


def registry_url(args: argparse.Namespace) -> RegistryURL:
    """``--registry`` or ``AIOELASTIC_REGISTRY_URL`` (with ``AIOELASTIC_REGISTRY_USERNAME`` /
    ``..._PASSWORD``); the embedded ``memory://`` registry is refused (it lives in one process)."""
    url = load_settings(registry_url=getattr(args, "registry", None)).registry()
    if url.scheme == "memory":
        raise ConfigError(
            "registry_url",
            str(url),
            "the CLI needs a zookeeper:// URL (--registry or AIOELASTIC_REGISTRY_URL); "
            "a memory:// registry lives inside one process",
        )
    return url


def _assignment(text: str) -> tuple[str, Any]:
    field, sep, raw = text.partition("=")
    if not sep or not field.strip():
        raise ConfigError("FIELD=VALUE", text, "expected FIELD=VALUE")
    field = field.strip()
    info = JobConfig.model_fields.get(field)
    if info is not None and info.annotation in (str, str | None) and raw != "null":
        return field, raw  # a text field: job_parameter=7 stays "7"
    try:
        value = loads_json(raw)
    except ValueError:
        value = raw  # a bare string: cron=0/5 * * * * ? needs no JSON quotes
    return field, value


async def _jobs(c: _Call) -> None:
    jobs = await c.ops.jobs()
    if not jobs and not c.json:
        print(f"aioelastic: no jobs in namespace {c.ops.namespace!r}", file=sys.stderr)
        return
    glance = await _glance(c, jobs)
    if c.json:
        rows = [to_jsonable(j) for j in jobs]
        if glance is not None:
            for data, j in zip(rows, jobs, strict=True):
                data.update(glance_json(glance[j.name]))
        write_json(c.out, rows)
        return
    wide: bool = c.args.wide
    when = (lambda t: t) if wide else compact_time
    headers = ["NAME", "STATUS", "CRON", "NEXT_FIRE", "ITEMS", "INSTANCES"]
    rows_out: list[tuple[Any, ...]] = []
    for j in jobs:
        row: tuple[Any, ...] = (
            j.name,
            j.status,
            j.cron,
            when(j.next_fire_time),
            j.sharding_total_count,
            j.instance_count,
        )
        if glance is not None:
            g = glance[j.name]
            last = g.last_fire
            row += (
                when(None if last is None else last.start_time),
                None if last is None else outcome_text(last),
                g.missed,
            )
        if glance is None or wide:
            row += (j.description,)
        rows_out.append(row)
    if glance is not None:
        headers += ["LAST_FIRE", "OUTCOME", "MISSED"]
    if glance is None or wide:
        headers.append("DESCRIPTION")
    write_table(c.out, headers, rows_out)


async def _glance(c: _Call, jobs: list[JobBrief]) -> dict[str, Glance] | None:
    """Each job's last fire and missed fires (None without a trace database)."""
    url = optional_tracing_url(c.args)
    if url is None:
        return None
    async with AsyncExitStack() as stack:
        search = await open_search(stack, url, c.args.timeout)
        return await glances(c.ops, search, jobs)


async def _missed(c: _Call) -> None:
    since = parse_time(c.args.since)
    until = parse_time(c.args.until) if c.args.until else None
    await c.ops.job(c.args.name)  # JobNotFoundError before opening the trace
    async with AsyncExitStack() as stack:
        search = await open_search(stack, tracing_url(c.args), c.args.timeout)
        missed = await c.ops.missed_fires(
            search,
            c.args.name,
            since=since,
            until=until,
            tolerance=timedelta(seconds=c.args.tolerance),
        )
    if c.json:
        write_json(c.out, missed)
        return
    if not missed:
        c.out.write(f"no missed fires of {c.args.name!r} since {since:%Y-%m-%d %H:%M:%S} UTC\n")
        return
    write_table(
        c.out, ["DUE", "JOB", "REASON"], [(short_time(m.due), m.job, m.reason) for m in missed]
    )
    c.out.write(f"({len(missed)} missed)\n")


async def _job_show(c: _Call) -> None:
    brief = await c.ops.job(c.args.name)
    if brief.status is JobStatus.INVALID_CONFIG:  # show the bad node, not a config error
        config: dict[str, Any] = {"problem": brief.description}
    else:
        config = await c.ops.job_config(c.args.name)
    code, overwrite = _code_config(c.args)
    rows: list[tuple[Any, ...]] = [("status", brief.status), ("instances", brief.instance_count)]
    rows.append(("next_fire_time", brief.next_fire_time))
    chain = None
    if brief.status is not JobStatus.INVALID_CONFIG:
        chain = await c.ops.chain(c.args.name)
        rows.append(("runs_after", ", ".join(chain.upstream) or "-"))
        rows.append(("runs_before", ", ".join(chain.downstream) or "-"))
    rows += [(k, _shown(v)) for k, v in config.items()]
    if code is None:
        c.table({"job": brief, "config": config, "chain": chain}, ["FIELD", "VALUE"], rows)
        return
    differing = sorted(k for k in config.keys() | code.keys() if config.get(k) != code.get(k))
    if c.json:
        write_json(
            c.out,
            {
                "job": brief,
                "config": config,
                "code": code,
                "differing": differing,
                "overwrite": overwrite,
            },
        )
        return
    rows = [(*r, "") for r in rows[: len(rows) - len(config)]]
    rows += [
        (k, _shown(config.get(k)), _shown(code.get(k)) if k in differing else "(same)")
        for k in sorted(config.keys() | code.keys())
    ]
    write_table(c.out, ["FIELD", "REGISTRY", "CODE"], rows)
    if differing:
        wins = "the code's (overwrite=True)" if overwrite else "the registry's (overwrite=False)"
        c.out.write(f"differs in {', '.join(differing)}: {wins} is in effect at start\n")


def _shown(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict) else value


def _code_config(args: argparse.Namespace) -> tuple[dict[str, Any] | None, bool]:
    """The job's config as the ``--code`` Scheduler registers it, and its ``overwrite``
    (None without ``--code``)."""
    target = getattr(args, "code", None)
    if target is None:
        return None, False
    from ._run import load_scheduler

    scheduler = load_scheduler(target, args.app_dir)
    config = scheduler.jobs.get(args.name)
    if config is None:
        raise ConfigError("--code", target, f"registers no job {args.name!r}")
    code: dict[str, Any] = json.loads(config.to_registry())
    return code, config.overwrite


async def _job_trigger(c: _Call) -> None:
    name = c.args.name
    instances = await c.ops.trigger(name)
    if not instances:
        raise OperationRefusedError(f"job {name!r} has no live instance to trigger")
    c.done(
        f"triggered {name!r} on {len(instances)} instance(s)",
        {"job": name, "instances": instances},
    )


async def _job_enable_disable(c: _Call) -> None:
    name, action = c.args.name, c.args.action
    change = c.ops.disable_server if action == "disable" else c.ops.enable_server
    hosts = await change(name, c.args.host)
    c.done(
        f"{action}d {name!r} on server(s): {', '.join(hosts) or '-'}",
        {"job": name, "servers": hosts, "status": f"{action.upper()}D"},
    )


async def _job_remove(c: _Call) -> None:
    await c.ops.remove_job(c.args.name, force=c.args.force)
    c.done(f"removed {c.args.name!r}", {"job": c.args.name, "removed": True})


async def _job_update(c: _Call) -> None:
    changes = dict(_assignment(a) for a in c.args.changes)
    config = await c.ops.update_job_config(c.args.name, **changes)
    c.done(f"updated {c.args.name!r}: {', '.join(changes)}", config)


async def _servers(c: _Call) -> None:
    servers = await c.ops.servers(c.args.name)
    c.table(
        servers, ["HOST", "STATUS", "INSTANCES"], [(s.host, s.status, s.instances) for s in servers]
    )


async def _instances(c: _Call) -> None:
    found = await c.ops.instances(c.args.name)
    c.table(
        found,
        ["INSTANCE", "HOST", "IP", "HOSTNAME", "PID", "STATE"],
        [
            (
                i.instance_id,
                i.host,
                i.ip,
                i.hostname,
                i.pid,
                "SHUTDOWN" if i.shutting_down else "STALE" if i.problem else "ONLINE",
            )
            for i in found
        ],
    )


async def _sharding(c: _Call) -> None:
    items = await c.ops.sharding(c.args.name)
    c.table(
        items,
        ["ITEM", "STATUS", "INSTANCE", "FAILOVER", "MISFIRE", "PROBLEM"],
        [(i.item, i.status, i.instance, i.failover, i.misfire, i.problem) for i in items],
    )


async def _item(c: _Call) -> None:
    name, item, action = c.args.name, c.args.item, c.args.action
    await (c.ops.disable_item if action == "disable" else c.ops.enable_item)(name, item)
    c.done(
        f"{action}d item {item} of {name!r}",
        {"job": name, "item": item, "disabled": action == "disable"},
    )


async def _instance_shutdown(c: _Call) -> None:
    name, instance = c.args.name, c.args.instance_id
    await c.ops.shutdown_instance(name, instance)
    c.done(
        f"asked {instance!r} to shut {name!r} down",
        {"job": name, "instance": instance, "shutdown": True},
    )


async def _dump(c: _Call) -> None:
    tree = await c.ops.dump(c.args.name)
    if c.json:
        write_json(c.out, tree)
        return
    for path, data in tree.items():
        c.out.write(f"{path} = {data}\n" if data else f"{path}\n")


_HANDLERS: dict[str, Callable[[_Call], Awaitable[None]]] = {
    "jobs": _jobs,
    "missed": _missed,
    "job show": _job_show,
    "job trigger": _job_trigger,
    "job disable": _job_enable_disable,
    "job enable": _job_enable_disable,
    "job remove": _job_remove,
    "job update": _job_update,
    "servers": _servers,
    "instances": _instances,
    "sharding": _sharding,
    "item disable": _item,
    "item enable": _item,
    "instance shutdown": _instance_shutdown,
    "dump": _dump,
}


def command_key(args: argparse.Namespace) -> str:
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if action else str(args.command)


_NODE_ARGUMENTS = {"name": "NAME", "host": "--host", "instance_id": "INSTANCE_ID"}


def check_node_arguments(args: argparse.Namespace) -> None:
    """Names that become one registry node must be one that ZooKeeper accepts (exit 2, not a
    registry error)."""
    for dest, shown in _NODE_ARGUMENTS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        reason = "contains '/'" if "/" in value else invalid_path_reason(f"/{value}")
        if reason is not None:
            raise ConfigError(shown, value, f"not a registry node name ({reason})")


async def run_registry_command(args: argparse.Namespace) -> int:
    handler = _HANDLERS[command_key(args)]
    check_node_arguments(args)
    async with Operations(registry_url(args), timeout=args.timeout) as ops:
        await handler(_Call(ops, args, sys.stdout, getattr(args, "json", False)))
    return 0
