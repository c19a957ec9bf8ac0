"""The ``aioelastic`` command on a job whose registry nodes another client corrupted: every
display command shows the bad node instead of crashing (issue 11.2)."""

from __future__ import annotations

import pytest

from aioelastic import JobConfig
from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from tests.harness.cli import cli
from tests.harness.cluster import zk_client

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper, pytest.mark.timeout(120)]


async def corrupt_tree(zk_url: str) -> JobPaths:
    ns = parse_registry_url(zk_url).namespace
    bad, good = JobPaths(ns, "bad"), JobPaths(ns, "good")
    async with zk_client(zk_url) as reg:
        await reg.create(good.config, JobConfig(name="good").to_registry(), make_parents=True)
        nodes = {
            bad.config: b"\xff not json",
            bad.instance("ghost"): b"\xff\xfe",
            bad.server("10.0.0.9"): b"\xfe",
            bad.item_instance(0): b"\xff\xfe",
            bad.item_instance(1): b"ghost",
            bad.item_running(1): b"someone",
            bad.leader_election_instance: b"\x00\xff",
        }
        for path, data in nodes.items():
            await reg.create(path, data, make_parents=True)
    return bad


async def test_display_commands_show_bad_nodes(zk_url: str) -> None:
    bad = await corrupt_tree(zk_url)
    reg = ("--registry", zk_url)

    jobs = await cli(*reg, "jobs")
    assert (jobs.code, jobs.err) == (0, "")
    rows = {line.split()[0]: line for line in jobs.out.splitlines()[1:]}
    assert set(rows) == {"bad", "good"}
    assert "INVALID_CONFIG" in rows["bad"] and "not JSON" in rows["bad"]

    show = await cli(*reg, "job", "show", "bad")
    assert (show.code, show.err) == (0, "")
    assert "INVALID_CONFIG" in show.out and "problem" in show.out

    sharding = await cli(*reg, "sharding", "bad")
    assert (sharding.code, sharding.err) == (0, "")
    lines = sharding.out.splitlines()
    assert lines[0].split()[-1] == "PROBLEM"
    assert "\\xff\\xfe" in lines[1] and "not UTF-8" in lines[1]
    assert "RUNNING" in lines[2] and "persistent running mark" in lines[2]

    items = (await cli(*reg, "sharding", "bad", "--json")).json()
    assert [(i["item"], i["instance"]) for i in items] == [(0, "\\xff\\xfe"), (1, "ghost")]

    instances = await cli(*reg, "instances", "bad")
    assert (instances.code, instances.err) == (0, "")
    assert "ghost" in instances.out and "STALE" in instances.out

    servers = await cli(*reg, "servers", "bad")
    assert (servers.code, servers.err) == (0, "")
    assert "10.0.0.9" in servers.out

    dump = await cli(*reg, "dump", "bad")
    assert (dump.code, dump.err) == (0, "")
    assert f"{bad.config} = \\xff not json" in dump.out
    assert f"{bad.leader_election_instance} = \\x00\\xff" in dump.out
