"""The ``aioelastic`` command: run a scheduler, operate jobs through the registry, search the
trace. ``aioelastic --help`` lists the commands and exit codes."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

import anyio

from .. import __version__
from .._errors import (
    AioelasticError,
    ConfigError,
    NotFoundError,
    SessionLostError,
)

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "bounded_float",
    "bounded_int",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1  # the operation failed or was refused
EXIT_USAGE = 2  # bad arguments, bad URL or bad value (argparse's own code too)
EXIT_NOT_FOUND = 3  # unknown job (or server, instance, item)
EXIT_UNREACHABLE = 4  # the registry or the trace database cannot be reached
EXIT_BROKEN_PIPE = 141  # stdout closed early (| head): 128 + SIGPIPE, as a shell reports it

MAX_ITEM = 2**31 - 1  # ElasticJob's items are Java ints
MAX_TIMEOUT = 86400.0

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
  141  the output pipe was closed early (e.g. | head), nothing else printed

Passwords in URLs are never printed; percent-encode / ? # @ : % in them (%2F %3F %23 %40 %3A %25).
Add --json for machine-readable output.
"""


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a decimal integer in ``low..high`` (a one-line usage error else)."""

    def parse(text: str) -> int:
        digits = text[1:] if text[:1] in ("+", "-") else text
        if not (0 < len(digits) <= 20 and digits.isascii() and digits.isdigit()):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range {low}..{high}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def bounded_float(low: float, high: float, *, low_inclusive: bool = True) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``low..high`` (``nan``/``inf`` refused); with
    ``low_inclusive=False`` it must be greater than ``low``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value >= low if low_inclusive else value > low
        if not (math.isfinite(value) and above and value <= high):
            bound = ">=" if low_inclusive else ">"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound} {low:g} and <= {high:g}")
        return value

    parse.__name__ = "number"
    return parse


def _common(*, tracing: bool = True) -> argparse.ArgumentParser:
    """Options accepted both before and after the command (defaults suppressed, so a value given
    in one place is not overwritten by the other's default); ``tracing=False`` for the
    registry commands, which have no use for ``--tracing``."""
    common = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    common.add_argument(
        "--registry",
        metavar="URL",
        default=s,
        help="zookeeper://[user:password@]host:port[,host:port]/namespace "
        "(default: $AIOELASTIC_REGISTRY_URL)",
    )
    if tracing:
        common.add_argument(
            "--tracing",
            metavar="URL",
            default=s,
            help="postgresql://... or sqlite:///file.db (default: $AIOELASTIC_TRACING_URL)",
        )
    common.add_argument("--json", action="store_true", default=s, help="print JSON")
    common.add_argument(
        "--timeout",
        type=bounded_float(0, MAX_TIMEOUT, low_inclusive=False),
        metavar="S",
        default=s,
        help="deadline of each request in seconds, > 0 (default 30)",
    )
    return common


def _time_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since", metavar="TIME", help="ISO 8601 (UTC if naive) or span ago: 30m, 2h, 7d"
    )
    p.add_argument("--until", metavar="TIME", help="exclusive upper bound, same forms")


def _wide(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wide",
        action="store_true",
        help="full task ids, times to the millisecond, every column, lines not cut",
    )


def _page(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50, help="rows per page (default 50, max 1000)")
    p.add_argument("--offset", type=int, default=0, help="rows to skip")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    registry_options = _common(tracing=False)
    parser = argparse.ArgumentParser(
        prog="aioelastic",
        usage="%(prog)s [-h] [--version] [--registry URL] [--tracing URL] [--json] [--timeout S] "
        "COMMAND ...",
        description="Run and operate aioelastic jobs (ElasticJob-Lite's model, in asyncio).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"aioelastic {__version__}")
    # prog: the subcommands' usage starts "aioelastic jobs", not the custom usage above.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="aioelastic")

    def cmd(
        name: str, help: str, options: argparse.ArgumentParser = common
    ) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[options])

    run = cmd("run", "run the Scheduler MODULE:ATTR until SIGINT/SIGTERM (then stop cleanly)")
    run.add_argument("target", metavar="MODULE:ATTR", help="e.g. myapp.jobs:scheduler")
    run.add_argument("--app-dir", default=".", help="put this directory first on sys.path")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line, with the records' fields (job, task_id, item, ...)",
    )
    run.add_argument(
        "--health-port",
        type=bounded_int(0, 65535),
        metavar="PORT",
        help="serve GET /livez and /readyz (200 or 503, JSON) on this port",
    )
    run.add_argument(
        "--health-bind",
        default="127.0.0.1",
        metavar="HOST",
        help="address of the health port (default 127.0.0.1; 0.0.0.0 in a pod)",
    )

    jobs = cmd(
        "jobs",
        "list the jobs of the namespace: status, next fire; with --tracing the last fire, its "
        "outcome and the fires missed in the last 24 h",
    )
    _wide(jobs)

    missed = cmd(
        "missed",
        "the job's fires that were due and started on no instance (from its cron and the trace)",
    )
    missed.add_argument("name", metavar="NAME", help="the job")
    missed.add_argument(
        "--since", metavar="TIME", default="24h", help="ISO 8601 or span ago (default 24h)"
    )
    missed.add_argument("--until", metavar="TIME", help="exclusive upper bound (default: now)")
    missed.add_argument(
        "--tolerance",
        type=bounded_float(0, MAX_TIMEOUT),
        default=30.0,
        metavar="S",
        help="seconds a fire may start late and still count (default 30)",
    )

    job = cmd("job", "show or operate one job", registry_options)
    actions = job.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=help, parents=[registry_options])
        p.add_argument("name", metavar="NAME", help="the job")
        return p

    show = action("show", "the job's status and stored config (with --code: the code's too)")
    show.add_argument(
        "--code",
        metavar="MODULE:ATTR",
        help="the Scheduler `aioelastic run` runs: show its config of the job beside the stored "
        "one and mark the fields that differ",
    )
    show.add_argument("--app-dir", default=".", help="put this directory first on sys.path")
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
        cmd(name, help, registry_options).add_argument("name", metavar="NAME", help="the job")

    item = cmd("item", "disable or enable one sharding item", registry_options)
    item_actions = item.add_subparsers(dest="action", required=True, metavar="ACTION")
    for verb in ("disable", "enable"):
        text = f"{verb} ITEM of job NAME"
        p = item_actions.add_parser(verb, help=text, description=text, parents=[registry_options])
        p.add_argument("name", metavar="NAME", help="the job")
        p.add_argument(
            "item", metavar="ITEM", type=bounded_int(0, MAX_ITEM), help="the sharding item"
        )

    instance = cmd("instance", "operate one instance", registry_options)
    instance_actions = instance.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = "ask INSTANCE_ID to stop running job NAME"
    shutdown = instance_actions.add_parser(
        "shutdown", help=text, description=text, parents=[registry_options]
    )
    shutdown.add_argument("name", metavar="NAME", help="the job")
    shutdown.add_argument("instance_id", metavar="INSTANCE_ID", help="as `instances NAME` lists")

    from ._console import add_console_parser

    add_console_parser(cmd("console", "serve the operator console in the browser (console extra)"))

    trace = cmd("trace", "search the execution trace (PostgreSQL or SQLite)")
    trace_actions = trace.add_subparsers(dest="action", required=True, metavar="ACTION")
    executions = trace_actions.add_parser("executions", help="item runs", parents=[common])
    status = trace_actions.add_parser("status", help="task state changes", parents=[common])
    for p in (executions, status):
        p.add_argument("--job", help="job name")
        p.add_argument("--task-id", help="one task (fire)")
        _time_filters(p)
        _page(p)
        _wide(p)
    fires = trace_actions.add_parser(
        "fires", help="one row per fire: items, source, duration, outcome", parents=[common]
    )
    fires.add_argument("job", metavar="JOB", nargs="?", help="job name (default: every job)")
    _time_filters(fires)
    _page(fires)
    _wide(fires)
    executions.add_argument("--item", type=bounded_int(0, MAX_ITEM), help="sharding item")
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


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside nested task-group wrappers (so it maps to its exit code)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


_TEXT_EXEMPT = frozenset({"app_dir"})  # a file system path may be any bytes
_POSITIONALS = frozenset({"name", "item", "instance_id", "target", "changes"})


def _undecodable(args: argparse.Namespace) -> str | None:
    """The first argument that is not UTF-8 text (bytes like 0xff arrive as surrogates)."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for text in values:
            if isinstance(text, str) and dest not in _TEXT_EXEMPT:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return dest.upper() if dest in _POSITIONALS else f"--{dest.replace('_', '-')}"
    return None


def _run_command(args: argparse.Namespace) -> int:
    from ._commands import run_registry_command
    from ._run import run_scheduler_command
    from ._trace import run_trace_command

    if args.command == "run":
        return run_scheduler_command(args)
    if args.command == "trace":
        return anyio.run(run_trace_command, args, backend="asyncio")
    if args.command == "console":
        from ._console import run_console_command

        return anyio.run(run_console_command, args, backend="asyncio")
    return anyio.run(run_registry_command, args, backend="asyncio")


def _exit_code(exc: BaseException) -> int | None:
    """The exit code of an expected error (printed on one line), None for anything else."""
    from .._errors import TraceUnreachableError

    if isinstance(exc, ConfigError):
        return _fail(EXIT_USAGE, str(exc))
    if isinstance(exc, NotFoundError):  # JobNotFoundError too
        return _fail(EXIT_NOT_FOUND, str(exc))
    if isinstance(exc, SessionLostError | TraceUnreachableError):
        return _fail(EXIT_UNREACHABLE, str(exc))
    if isinstance(exc, AioelasticError):
        return _fail(EXIT_ERROR, str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return None


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    bad = _undecodable(args)
    if bad is not None:
        return _fail(EXIT_USAGE, f"argument {bad}: not valid UTF-8 text")
    if not hasattr(args, "timeout"):
        args.timeout = 30.0
    try:
        return _run_command(args)
    except BrokenPipeError:
        raise
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, BrokenPipeError):
            raise leaf from None
        code = _exit_code(leaf)
        if code is None:
            raise
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aioelastic`` console script; returns the exit code.

    Output into a pipe closed early (``aioelastic jobs | head -1``) ends quietly with 141.
    """
    try:
        try:
            code = _main(argv)
        except SystemExit as exc:  # argparse's --help, --version and usage errors
            if exc.code is not None and not isinstance(exc.code, int):
                raise
            code = exc.code or 0
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's last flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
