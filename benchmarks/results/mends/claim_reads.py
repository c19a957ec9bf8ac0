"""Reading a complete fire's records (the claim of a dependents' fire) on a private ZooKeeper:
one ``get`` per item (before) against one pipelined ``read_many`` (after), alternated in one
process, 7 rounds each. Run from the repository root:
``.venv/bin/python benchmarks/results/mends/claim_reads.py``."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from aioelastic._config import JobConfig
from aioelastic._dependents import Dependents
from aioelastic._urls import parse_registry_url
from aioelastic.registry import create_registry
from aioelastic.registry._limits import chunk_ops
from aioelastic.registry._protocol import CreateOp
from tests.harness.zookeeper import ZooKeeperServer


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = ZooKeeperServer(Path(tmp))
        server.start()
        try:
            async with AsyncExitStack() as stack:
                registry = create_registry(parse_registry_url(server.url("bench")))
                await registry.start(stack)
                deps = Dependents(registry, "bench", JobConfig(name="up"), ["down"], "i")
                for n in (100, 1000, 3000):
                    key = f"k{n}"
                    record = json.dumps({"task_id": "t" * 60, "ok": True}).encode()
                    ops = [CreateOp(deps.paths.dependents_done(key, i), record) for i in range(n)]
                    await registry.create(deps.paths.dependents_done(key), make_parents=True)
                    for chunk in chunk_ops(ops):
                        await registry.transaction(chunk)
                    items = [str(i) for i in range(n)]
                    old: list[float] = []
                    new: list[float] = []
                    for _ in range(7):
                        t = time.perf_counter()
                        for name in items:
                            await registry.get(deps.paths.dependents_done(key, int(name)))
                        old.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        assert await deps._read_records(key, items) is not None
                        new.append(time.perf_counter() - t)
                    mo, mn = statistics.median(old), statistics.median(new)
                    print(
                        f"{n:5d} items: get each {mo * 1e3:8.1f} ms "
                        f"[{min(old) * 1e3:.1f}-{max(old) * 1e3:.1f}]  read_many "
                        f"{mn * 1e3:7.1f} ms [{min(new) * 1e3:.1f}-{max(new) * 1e3:.1f}]  "
                        f"ratio {mo / mn:5.1f}x"
                    )
        finally:
            server.close()


anyio.run(main)
