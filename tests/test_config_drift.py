"""Config drift: with ``overwrite=False`` a code config that differs from the registry's is
one WARNING naming the fields, both values and which one is in effect."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic.registry import MemoryStore

pytestmark = pytest.mark.anyio


async def _noop(ctx: ShardingContext) -> None:
    pass


async def _start_and_stop(url: str, **config: Any) -> Scheduler:
    scheduler = Scheduler(settings=Settings(registry_url=url))
    scheduler.add_job(_noop, "sync", **config)
    async with scheduler:
        pass
    return scheduler


def _drift(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "differs from the registry's" in r.getMessage()]


@pytest.fixture
def url() -> str:
    MemoryStore.reset("drift")
    return "memory://drift/ns"


async def test_a_differing_code_config_is_one_warning_and_the_registry_wins(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _start_and_stop(url, cron="0 0 1 * * ?", sharding_total_count=2)
    caplog.set_level(logging.INFO, logger="aioelastic")
    second = Scheduler(settings=Settings(registry_url=url))
    second.add_job(_noop, "sync", cron="0 0 2 * * ?", sharding_total_count=3, job_parameter="p")
    async with second:
        assert second.jobs["sync"].cron == "0 0 1 * * ?"  # the registry's
    [warning] = _drift(caplog)
    assert warning.levelno == logging.WARNING and warning.name == "aioelastic.coordination"
    message = warning.getMessage()
    assert message.startswith(
        "sync: the code's config differs from the registry's in cron, job_parameter, "
        "sharding_total_count; the registry's wins (overwrite=False): "
    )
    assert "cron: code '0 0 2 * * ?', registry '0 0 1 * * ?' (in effect)" in message
    assert "sharding_total_count: code 3, registry 2 (in effect)" in message
    assert warning.__dict__["job"] == "sync"
    assert warning.__dict__["differing_fields"]["cron"] == {
        "code": "0 0 2 * * ?",
        "registry": "0 0 1 * * ?",
    }


async def test_no_warning_when_equal_or_overwritten(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _start_and_stop(url, cron="0 0 1 * * ?")
    caplog.set_level(logging.INFO, logger="aioelastic")
    await _start_and_stop(url, cron="0 0 1 * * ?")
    await _start_and_stop(url, cron="0 0 3 * * ?", overwrite=True)
    await _start_and_stop(url, cron="0 0 3 * * ?")  # the overwrite is what the registry has
    assert _drift(caplog) == []
