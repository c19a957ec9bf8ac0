"""``aioelastic run module:attr``: import a ``Scheduler`` (like ``uvicorn app:app``) and run it
until SIGINT/SIGTERM, then shut down cleanly."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

import anyio

from .._errors import ConfigError
from .._scheduler import Scheduler

__all__ = ["load_scheduler", "run_scheduler_command"]

log = logging.getLogger("aioelastic.cli")


def load_scheduler(target: str, app_dir: str = ".") -> Scheduler:
    """The ``Scheduler`` named by ``module:attr`` (``attr`` may be dotted; with ``--factory``
    semantics left to the caller). ``app_dir`` goes first on ``sys.path``."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError("target", target, "expected module:attribute, e.g. myapp.jobs:scheduler")
    sys.path.insert(0, os.path.abspath(app_dir))
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("target", target, f"cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError("target", target, f"{module_name!r} has no {attr!r}") from None
    if not isinstance(obj, Scheduler):
        raise ConfigError("target", target, f"is a {type(obj).__name__}, not a Scheduler")
    return obj


async def _run(scheduler: Scheduler) -> int:
    """Run until the first SIGINT/SIGTERM (graceful stop); a second one cancels at once."""
    forced = False
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            nonlocal forced
            stopping = False
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stopping:
                        log.warning("%s: stopping gracefully (again to cancel running items)", name)
                        stopping = True
                        scheduler.stop()
                        continue
                    log.warning("%s again: cancelling running items", name)
                    forced = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(on_signals)
        await scheduler.run()
        tg.cancel_scope.cancel()
    return 130 if forced else 0


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
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    scheduler = load_scheduler(args.target, args.app_dir)
    log.info(
        "running %s (instance %s, registry %s)",
        args.target,
        scheduler.instance_id,
        scheduler.registry_url,
    )
    try:
        return anyio.run(_run, scheduler, backend="asyncio")
    except BaseExceptionGroup as group:
        raise _single(group) from None


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
