"""Requested fires (a dependent job's, a catch-up): a request node in the registry, whose
items each instance claims (``{request}/ran/{item}``, paths from ``JobPaths``, created in the
multi-op of the item's running mark) and runs once; once every item is claimed, the request
is deleted. Shared by ``_dependents`` and
``_catchup``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._context import ShardingContexts
from ._errors import NodeExistsError, NoNodeError, RegistryError
from .registry._protocol import Registry

if TYPE_CHECKING:
    from ._runner import JobRunner

__all__ = [
    "Ran",
    "claimable_items",
    "create_parents",
    "drop",
    "may_free",
    "run_claiming",
    "serve_requests",
]


async def create_parents(registry: Registry, path: str, data: bytes = b"") -> bool:
    """Create ``path`` (and missing parents); False if it existed."""
    try:
        await registry.create(path, data, make_parents=True)
    except NodeExistsError:
        return False
    return True


def may_free(path: str) -> bool:
    """A change that can let a requested run's items run here: a run ended, a reshard
    completed, a server was enabled."""
    parts = path.split("/")
    return (
        path.endswith(("/running", "/instance"))
        or parts[-1] == "necessary"
        or (len(parts) > 2 and parts[-2] == "servers")
    )


async def serve_requests(
    runner: JobRunner, requests: str, serve: Callable[[str], Awaitable[bool]], log: logging.Logger
) -> None:
    """Call ``serve`` with each request under ``requests`` whenever they, or what frees items,
    change (a loop of the job's runner). ``serve`` returns whether it started a run: the
    next request waits for the next pass (its items are ``claiming`` until that run ends)."""
    coord = runner.coordinator
    changes = coord.view.subscribe(lambda path: path.startswith(requests) or may_free(path))
    while True:
        pending = False
        if coord.view.fresh and not coord.config_problem:
            try:
                for key in coord.view.children(requests):
                    pending = True
                    if await serve(key):
                        break
            except RegistryError as exc:
                log.debug("%s: request step failed (%s)", runner.name, exc)
        # A request left while this instance's own run of the items ends may see the marks'
        # deletion before the executor lets the items go: look again soon (view reads only).
        await changes.wait(0.5 if pending else 30.0)


async def drop(registry: Registry, request: str) -> None:
    """Delete a request (every item claimed, or it is not to run)."""
    with contextlib.suppress(NoNodeError):
        await registry.delete(request, recursive=True)


#: A request's claims: ``ran(None)`` their parent, ``ran(item)`` one item's.
Ran = Callable[[int | None], str]


async def claimable_items(runner: JobRunner, request: str, ran: Ran) -> list[int]:
    """This instance's items of ``request`` that are free and not claimed yet, maybe none;
    their run claims them (``run_claiming``). A request whose every item is claimed is
    deleted."""
    coord, executor, registry = runner.coordinator, runner.executor, runner.registry
    claimed = set(coord.view.children(ran(None)))
    if len(claimed) >= coord.config.sharding_total_count:
        await drop(registry, request)
        return []
    items = [
        i
        for i in coord.local_items()
        if str(i) not in claimed
        and i not in runner.claiming
        and not executor.is_running(i)
        and not coord.is_running(i)
    ]
    if not items or not runner.keep_going() or runner.busy_unmonitored():
        return []
    await create_parents(registry, ran(None))
    if runner.busy_unmonitored():  # checked last: no await until the run starts
        return []  # the request stays; looked at again soon (``serve_requests``)
    return items


def run_claiming(runner: JobRunner, ran: Ran, contexts: ShardingContexts) -> None:
    """Run the items of ``contexts``, claiming each in the multi-op of its running mark: an
    item is claimed exactly when it runs (a claim given back after a failed run could race
    the "every item claimed" check and lose the request)."""
    runner.start_contexts(contexts, ran)
