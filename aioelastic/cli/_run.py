"""``aioelastic run module:attr``: import a ``Scheduler`` (like ``uvicorn app:app``) and run it
until SIGINT/SIGTERM, then shut down cleanly."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

import anyio

from .._errors import ConfigError, TargetImportError
from .._logging import JsonFormatter
from .._scheduler import Scheduler
from ..health import serve_health

__all__ = ["EXIT_FORCED", "load_scheduler", "run_scheduler_command"]

log = logging.getLogger("aioelastic.cli")

#: ``aioelastic run``'s exit status after a second stop signal cancelled running items.
EXIT_FORCED = 130


def load_scheduler(target: str, app_dir: str = ".") -> Scheduler:
    """The ``Scheduler`` named by ``module:attr`` (``attr`` may be dotted; with ``--factory``
    semantics left to the caller). ``app_dir`` goes first on ``sys.path``.

    A module that cannot be found is a ``ConfigError``; any error raised by the module's own
    code while importing it is a ``TargetImportError`` carrying that error."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError("target", target, "expected module:attribute, e.g. myapp.jobs:scheduler")
    sys.path.insert(0, os.path.abspath(app_dir))
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _is_target(exc.name, module_name):
            raise TargetImportError(module_name, exc) from None  # the module imports a missing one
        raise ConfigError("target", target, f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise TargetImportError(module_name, exc) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError("target", target, f"{module_name!r} has no {attr!r}") from None
    if not isinstance(obj, Scheduler):
        raise ConfigError("target", target, f"is a {type(obj).__name__}, not a Scheduler")
    return obj


def _is_target(missing: str | None, module_name: str) -> bool:
    """True if the missing module is the target itself or one of its parent packages."""
    return missing is not None and (module_name + ".").startswith(missing + ".")


def _user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback without the frames of this command and of importlib."""
    tb = exc.__traceback__
    while tb is not None and _ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _ours(filename: str) -> bool:
    return filename in (__file__, importlib.__file__) or filename.startswith("<frozen ")


async def _run(scheduler: Scheduler, health_port: int | None, health_bind: str) -> int:
    """Run until the first SIGINT/SIGTERM (graceful stop); a second one cancels running items
    at once (exit status 130). The handling is ``Scheduler.run``'s own. With ``health_port``
    the probes are served for as long as the scheduler runs (stopping included)."""
    if health_port is None:
        await scheduler.run(handle_signals=True)
    else:
        async with anyio.create_task_group() as tg:
            await tg.start(serve_health, scheduler, health_port, health_bind)
            await scheduler.run(handle_signals=True)
            tg.cancel_scope.cancel()
    return EXIT_FORCED if scheduler.forced_stop else 0


def run_scheduler_command(args: argparse.Namespace) -> int:
    # --registry / --tracing reach a Scheduler built without explicit URLs (it reads the
    # environment at construction, which happens when its module is imported).
    for flag, var in (
        ("registry", "AIOELASTIC_REGISTRY_URL"),
        ("tracing", "AIOELASTIC_TRACING_URL"),
    ):
        value = getattr(args, flag, None)
        if value:
            os.environ[var] = value
    _configure_logging(args.log_level, getattr(args, "log_format", "text"))
    try:
        scheduler = load_scheduler(args.target, args.app_dir)
    except TargetImportError as exc:
        sys.stderr.write(_user_traceback(exc.error))
        raise
    log.info(
        "running %s (instance %s, registry %s)",
        args.target,
        scheduler.instance_id,
        scheduler.registry_url,
    )
    try:
        return anyio.run(
            _run,
            scheduler,
            getattr(args, "health_port", None),
            getattr(args, "health_bind", "127.0.0.1"),
            backend="asyncio",
        )
    except BaseExceptionGroup as group:
        raise _single(group) from None
    except KeyboardInterrupt:  # SIGINT before the scheduler's handlers were in
        return EXIT_FORCED


def _configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested task-group wrappers (so it maps to its exit code)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else group
