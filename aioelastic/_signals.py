"""SIGTERM/SIGINT handling shared by ``Scheduler.run()`` and ``aioelastic run``.

Handlers go in through the running asyncio loop (``loop.add_signal_handler``), so the callback
runs on the loop, never inside arbitrary code the way Python's ``KeyboardInterrupt`` does. On
exit every handler that was there before is put back (asyncio's own ``remove_signal_handler``
would leave Python's default instead of, say, ``asyncio.Runner``'s Ctrl-C handler).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["STOP_SIGNALS", "handling_signals"]

log = logging.getLogger("aioelastic.scheduler")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _unowned(sig: signal.Signals, handler: Any) -> bool:
    """True if nobody but Python or ``asyncio.run``/``anyio.run`` handles ``sig`` today."""
    if handler is signal.SIG_DFL:
        return True
    if sig is signal.SIGINT:
        if handler is signal.default_int_handler:
            return True
        # asyncio.Runner (behind asyncio.run and anyio.run) installs
        # partial(runner._on_sigint, main_task=...): it cancels the main task, then raises
        # KeyboardInterrupt after the loop ends. Taking SIGINT over from it is the point.
        owner = getattr(getattr(handler, "func", None), "__self__", None)
        return isinstance(owner, asyncio.Runner)
    return False  # SIG_IGN (e.g. `cmd &` in a script), a host's handler or one set from C


@contextmanager
def handling_signals(
    on_signal: Callable[[signal.Signals], None], *, force: bool
) -> Iterator[tuple[signal.Signals, ...]]:
    """Call ``on_signal(sig)`` on the loop for SIGINT/SIGTERM while inside; yield the signals
    taken. ``force=False`` takes only signals nobody else handles; ``force=True`` takes both.
    Nothing is installed outside the main thread or without a running asyncio loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another async backend (trio): its host owns signals
        yield ()
        return
    if threading.current_thread() is not threading.main_thread():
        yield ()
        return
    installed: list[tuple[signal.Signals, Any]] = []
    try:
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if not force and not _unowned(sig, previous):
                log.debug("%s has a handler already; leaving it to its owner", sig.name)
                continue
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (RuntimeError, ValueError):  # NotImplementedError included
                continue
            installed.append((sig, previous))
        yield tuple(sig for sig, _ in installed)
    finally:
        for sig, previous in reversed(installed):
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)
