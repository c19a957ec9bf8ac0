"""The ``aioelastic`` command: run a scheduler, operate jobs through the registry, search the
trace. ``aioelastic --help`` lists the commands and exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

from .._errors import AioelasticError, ConfigError, JobNotFoundError, SessionLostError
from .._operations import NotFoundError

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1  # the operation failed or was refused
EXIT_USAGE = 2  # bad arguments, bad URL or bad value (argparse's own code too)
EXIT_NOT_FOUND = 3  # unknown job (or server, instance, item)
EXIT_UNREACHABLE = 4  # the registry or the trace database cannot be reached

_EPILOG = """\
environment:
  AIOELASTIC_REGISTRY_URL   registry when --registry is not given (zookeeper://host:port/namespace)
  AIOELASTIC_TRACING_URL    trace database when --tracing is not given (postgresql://..., sqlite:///...)
  AIOELASTIC_REGISTRY_USERNAME / AIOELASTIC_REGISTRY_PASSWORD   digest credentials

exit codes:
  0  success
  1  the operation failed or was refused (e.g. removing a job that instances still run)
  2  bad arguments, bad URL or bad value
  3  unknown job (or server, instance, item)
  4  the registry or the trace database cannot be reached

Passwords in URLs are never printed. Add --json for machine-readable output.
"""


def _common() -> argparse.ArgumentParser:
    """Options accepted both before and after the command (defaults suppressed, so a value given
    in one place is not overwritten by the other's default)."""
    common = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    common.add_argument("--registry", metavar="URL", default=s, help="registry URL")
    common.add_argument("--tracing", metavar="URL", default=s, help="trace database URL")
    common.add_argument("--json", action="store_true", default=s, help="print JSON")
    common.add_argument(
        "--timeout", type=float, metavar="S", default=s, help="deadline of each request (30 s)"
    )
    return common


def _time_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since", metavar="TIME", help="ISO 8601 (UTC if naive) or span ago: 30m, 2h, 7d"
    )
    p.add_argument("--until", metavar="TIME", help="exclusive upper bound, same forms")


def _page(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50, help="rows per page (default 50, max 1000)")
    p.add_argument("--offset", type=int, default=0, help="rows to skip")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="aioelastic",
        description="Run and operate aioelastic jobs (ElasticJob-Lite's model, in asyncio).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    run = cmd("run", "run the Scheduler MODULE:ATTR until SIGINT/SIGTERM (then stop cleanly)")
    run.add_argument("target", metavar="MODULE:ATTR", help="e.g. myapp.jobs:scheduler")
    run.add_argument("--app-dir", default=".", help="put this directory first on sys.path")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    cmd("jobs", "list the jobs of the namespace with their status")

    job = cmd("job", "show or operate one job")
    actions = job.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=help, parents=[common])
        p.add_argument("name", metavar="NAME", help="the job")
        return p

    action("show", "the job's status and stored config")
    action("trigger", "run the job's items once now on every live instance")
    for verb in ("disable", "enable"):
        p = action(verb, f"{verb} the job on one server (--host) or on all of them")
        p.add_argument("--host", help="one server (default: every server of the job)")
    remove = action("remove", "delete the job from the registry (refused while instances run it)")
    remove.add_argument(
        "--force", action="store_true", help="ask live instances to stop, then delete"
    )
    update = action("update", "change stored config fields; live instances apply them")
    update.add_argument(
        "changes",
        nargs="+",
        metavar="FIELD=VALUE",
        help="JSON value or bare string, e.g. cron='0/5 * * * * ?'",
    )

    for name, help in (
        ("servers", "the job's servers: status and live instances"),
        ("instances", "the job's live instances"),
        ("sharding", "the job's items: owner, status, failover and misfire flags"),
        ("dump", "the job's registry tree (for bug reports)"),
    ):
        cmd(name, help).add_argument("name", metavar="NAME", help="the job")

    item = cmd("item", "disable or enable one sharding item")
    item_actions = item.add_subparsers(dest="action", required=True, metavar="ACTION")
    for verb in ("disable", "enable"):
        p = item_actions.add_parser(verb, help=f"{verb} ITEM of job NAME", parents=[common])
        p.add_argument("name", metavar="NAME")
        p.add_argument("item", metavar="ITEM", type=int)

    instance = cmd("instance", "operate one instance")
    instance_actions = instance.add_subparsers(dest="action", required=True, metavar="ACTION")
    shutdown = instance_actions.add_parser(
        "shutdown", help="ask INSTANCE_ID to stop running job NAME", parents=[common]
    )
    shutdown.add_argument("name", metavar="NAME")
    shutdown.add_argument("instance_id", metavar="INSTANCE_ID")

    trace = cmd("trace", "search the execution trace (PostgreSQL or SQLite)")
    trace_actions = trace.add_subparsers(dest="action", required=True, metavar="ACTION")
    executions = trace_actions.add_parser("executions", help="item runs", parents=[common])
    status = trace_actions.add_parser("status", help="task state changes", parents=[common])
    for p in (executions, status):
        p.add_argument("--job", help="job name")
        p.add_argument("--task-id", help="one task (fire)")
        _time_filters(p)
        _page(p)
    executions.add_argument("--item", type=int, help="sharding item")
    outcome = executions.add_mutually_exclusive_group()
    outcome.add_argument(
        "--success", dest="success", action="store_const", const=True, help="successful runs only"
    )
    outcome.add_argument(
        "--failure", dest="success", action="store_const", const=False, help="failed runs only"
    )
    outcome.add_argument("--running", action="store_true", help="unfinished runs only")
    status.add_argument("--state", help="e.g. TASK_ERROR")
    stats = trace_actions.add_parser(
        "stats", help="item runs per job (default: the last 24 h)", parents=[common]
    )
    stats.add_argument("--job", help="job name")
    _time_filters(stats)
    purge = trace_actions.add_parser("purge", help="delete old rows", parents=[common])
    purge.add_argument("--older-than-days", type=float, required=True, metavar="N")
    purge.add_argument("--yes", action="store_true", help="delete (without: print the count)")
    return parser


def _fail(code: int, message: str) -> int:
    print(f"aioelastic: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aioelastic`` console script; returns the exit code."""
    from ._commands import run_registry_command
    from ._run import run_scheduler_command
    from ._trace import TraceUnreachableError, run_trace_command

    args = build_parser().parse_args(argv)
    if not hasattr(args, "timeout"):
        args.timeout = 30.0
    try:
        if args.command == "run":
            return run_scheduler_command(args)
        if args.command == "trace":
            return anyio.run(run_trace_command, args, backend="asyncio")
        return anyio.run(run_registry_command, args, backend="asyncio")
    except ConfigError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except (JobNotFoundError, NotFoundError) as exc:
        return _fail(EXIT_NOT_FOUND, str(exc))
    except (SessionLostError, TraceUnreachableError) as exc:
        return _fail(EXIT_UNREACHABLE, str(exc))
    except AioelasticError as exc:
        return _fail(EXIT_ERROR, str(exc))
    except KeyboardInterrupt:
        return 130
