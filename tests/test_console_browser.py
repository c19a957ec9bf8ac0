"""The console in a real browser (Debian's Chromium driven by Playwright, no browser download)
against a live 2-instance cluster (separate processes) on a real ZooKeeper and PostgreSQL.

One browser, one cluster and one console for the module; the tests run in file order (the
last ones shut an instance down and stop the servers). Screenshots go to the test's temporary
directory; with ``AIOELASTIC_UPDATE_SCREENSHOTS=1`` the overview and job page are also copied
to ``docs/console-overview.png`` and ``docs/console-job.png``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit

import anyio
import anyio.from_thread
import pytest

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, sync_playwright

from aioelastic import Operations
from aioelastic._urls import parse_registry_url, parse_tracing_url
from aioelastic.console import Console, ConsoleSettings
from aioelastic.console._server import open_console
from aioelastic.tracing import TraceSearch, open_trace_store
from tests.harness.cluster import Cluster
from tests.harness.helpers import eventually
from tests.harness.postgres import PostgresServer
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = [pytest.mark.zookeeper, pytest.mark.postgres, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JOB = "cluster_job"
XSS = "<script>window.__xss = 1</script>"
OPERATOR = {"username": "op", "password": "op-secret"}
VIEWER = {"username": "view", "password": "view-secret"}
DOCS = Path(__file__).resolve().parents[1] / "docs"
#: Live updates must show within 1 s (issue 14); the browser waits up to this, generous for a
#: loaded CI machine, and the test reports the time it saw.
LIVE_WAIT_MS = 5000


@dataclass
class Served:
    url: str
    ops: Operations
    search: TraceSearch


@asynccontextmanager
async def serve(registry: str, tracing: str) -> AsyncIterator[Served]:
    import uvicorn

    settings = ConsoleSettings(
        operators={OPERATOR["username"]: OPERATOR["password"]},
        viewers={VIEWER["username"]: VIEWER["password"]},
        registry_timeout=2,
        trace_timeout=2,
    )
    console = Console(settings)
    async with AsyncExitStack() as stack:
        await open_console(stack, console, parse_registry_url(registry), parse_tracing_url(tracing))
        ops = await stack.enter_async_context(Operations(registry, timeout=10))
        store = await stack.enter_async_context(open_trace_store(tracing, create_schema=False))
        config = uvicorn.Config(
            console.app,
            host="127.0.0.1",
            port=0,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            await eventually(lambda: server.started, timeout=30, what="uvicorn started")
            port = server.servers[0].sockets[0].getsockname()[1]
            yield Served(f"http://127.0.0.1:{port}", ops, store.search)
            console.close_streams()
            server.should_exit = True


@pytest.fixture(scope="module")
def zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer(tmp_path_factory.mktemp("zk-console"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def trace_db(postgres_server: PostgresServer) -> Iterator[str]:
    postgres_server.ensure_running()
    url = postgres_server.create_database()
    yield url
    postgres_server.ensure_running()
    postgres_server.drop_database(urlsplit(url).path.lstrip("/"))


@pytest.fixture(scope="module")
def cluster(
    zk: ZooKeeperServer, trace_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    url = zk.url(f"c{uuid.uuid4().hex[:8]}", session_timeout=3, connect_timeout=5)
    options = {
        "cron": "0 0 * * * ?",  # hourly: the runs a test sees come from its triggers
        "sharding_total_count": 4,
        "duration": 0.05,
        "description": XSS,
    }
    c = Cluster(url, tmp_path_factory.mktemp("cluster"), job_options=options, tracing_url=trace_db)
    try:
        c.wait_ready(c.start("console-a"), c.start("console-b"))
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def served(cluster: Cluster, trace_db: str) -> Iterator[Served]:
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        with portal.wrap_async_context_manager(serve(cluster.registry_url, trace_db)) as s:
            s.portal = portal  # type: ignore[attr-defined]
            yield s


def call(served: Served, fn: Any, *args: Any) -> Any:
    """Run ``await fn(*args)`` on the console's event loop thread."""
    return served.portal.call(fn, *args)  # type: ignore[attr-defined]


def wait_until(
    served: Served, probe: Any, what: str, timeout: float = 15, until: Any = bool
) -> Any:
    async def run() -> Any:
        return await eventually(probe, timeout=timeout, step=0.05, what=what, until=until)

    return call(served, run)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} missing: run scripts/ensure-services")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield launched
        launched.close()


def new_page(browser: Browser, credentials: dict[str, str]) -> Page:
    context = browser.new_context(
        http_credentials=cast(Any, credentials), viewport={"width": 1360, "height": 900}
    )
    context.set_default_timeout(20000)
    return context.new_page()


def shot(page: Page, tmp_path: Path, name: str, docs: str | None = None) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("AIOELASTIC_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS / docs)


def job_url(served: Served) -> str:
    return f"{served.url}/jobs/{quote(JOB)}"


def item_state(page: Page, item: int) -> str:
    return page.inner_text(f'tr[data-item="{item}"] .status')


def live_change(page: Page, selector: str, text: str) -> float:
    """Seconds until ``selector`` shows ``text`` without a reload (a marker survives)."""
    page.evaluate("window.__marker = 'same page'")
    start = time.monotonic()
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s);"
        " return e && e.innerText.trim() === t; }",
        arg=[selector, text],
        timeout=LIVE_WAIT_MS,
    )
    assert page.evaluate("window.__marker") == "same page"  # no reload
    return time.monotonic() - start


def test_overview_and_job_page_update_live(
    browser: Browser, served: Served, cluster: Cluster, tmp_path: Path
) -> None:
    for n in range(1, 4):  # some history for the columns, charts and screenshots
        call(served, served.ops.trigger, JOB)
        wait_until(served, partial(finished, cluster, 4 * n), "triggered runs finished")
    wait_until(
        served,
        lambda: served.search.fires(job_name=JOB),
        "the fires in the trace",
        until=lambda page: page.total >= 6 and all(f.outcome == "succeeded" for f in page.items),
    )
    page = new_page(browser, OPERATOR)
    page.goto(served.url + "/")
    row = f'tr[data-job="{JOB}"]'
    page.wait_for_selector(f"{row} .o-succeeded")  # the last run, from the trace
    assert page.inner_text(f"{row} .status") == "OK"
    assert page.inner_text(f"{row} td:nth-child(6)") == "2"  # live instances
    assert page.inner_text(f"{row} td:nth-child(8)") == "100%"
    assert XSS in page.inner_text(f"{row} td:nth-child(1)")  # as text
    assert page.evaluate("window.__xss") is None
    shot(page, tmp_path, "overview", "console-overview.png")
    # a registry change made elsewhere shows up without a reload
    call(served, served.ops.disable_server, JOB)
    seen = [live_change(page, f"{row} .status", "DISABLED")]
    call(served, served.ops.enable_server, JOB)
    seen.append(live_change(page, f"{row} .status", "OK"))

    page.goto(job_url(served))
    owners = {page.inner_text(f'tr[data-item="{i}"] td:nth-child(2)') for i in range(4)}
    assert owners == {"console-a", "console-b"}
    assert page.locator("details.cause").count() == 0
    call(served, served.ops.disable_item, JOB, 2)
    seen.append(live_change(page, 'tr[data-item="2"] .status', "DISABLED"))
    call(served, served.ops.enable_item, JOB, 2)
    seen.append(live_change(page, 'tr[data-item="2"] .status', "PENDING"))
    print("live updates seen after", ", ".join(f"{s:.2f}s" for s in seen))
    assert sorted(seen)[len(seen) // 2] < 1.0, seen  # issue 14: within 1 s (the median)
    shot(page, tmp_path, "job", "console-job.png")
    page.goto(served.url + "/history?job=" + JOB)
    assert page.locator('svg[aria-label="duration per run"] circle').count() >= 3
    shot(page, tmp_path, "history")
    page.context.close()


def finished(cluster: Cluster, count: int) -> bool:
    """At least ``count`` item runs started, and every one has ended."""
    runs = cluster.history()
    return len(runs) >= count and all(r.end is not None for r in runs)


def test_operator_clicks_change_registry_and_page(
    browser: Browser, served: Served, cluster: Cluster, tmp_path: Path
) -> None:
    page = new_page(browser, OPERATOR)
    page.goto(job_url(served))
    # item 0: disable, then enable
    page.click('tr[data-item="0"] button[data-action="disable-item"]')
    page.wait_for_selector(".flash.ok")
    assert "item 0 disabled" in page.inner_text(".flash")
    assert call(served, served.ops.sharding, JOB)[0].status.value == "DISABLED"
    assert item_state(page, 0) == "DISABLED"
    page.click('tr[data-item="0"] button[data-action="enable-item"]')
    page.wait_for_selector(".flash.ok")
    assert call(served, served.ops.sharding, JOB)[0].status.value != "DISABLED"
    assert item_state(page, 0) != "DISABLED"
    # trigger: both instances run every item
    before = len(cluster.history())
    page.click('button[data-action="trigger"]')
    page.wait_for_selector(".flash.ok")
    assert "triggered on 2 instance(s)" in page.inner_text(".flash")
    wait_until(served, lambda: len(cluster.history()) >= before + 4, "the triggered runs")
    # disable the job: a confirmation first
    page.click('button[data-action="disable"]')
    page.wait_for_selector("#confirm")
    shot(page, tmp_path, "confirm")
    assert {s.status.value for s in call(served, served.ops.servers, JOB)} == {"ENABLED"}
    page.click("#confirm")
    page.wait_for_selector(".flash.ok")
    assert {s.status.value for s in call(served, served.ops.servers, JOB)} == {"DISABLED"}
    assert page.inner_text("#job-status") == "DISABLED"
    page.click('button[data-action="enable"]')
    page.wait_for_selector(".flash.ok")
    assert {s.status.value for s in call(served, served.ops.servers, JOB)} == {"ENABLED"}
    live_change(page, "#job-status", "OK")
    # shut console-b down (confirmed): its node goes, the page follows
    page.click('tr[data-instance="console-b"] button[data-action="shutdown"]')
    page.click("#confirm")
    page.wait_for_selector(".flash.ok")
    wait_until(
        served,
        lambda: served.ops.instances(JOB),
        "console-b gone from the registry",
        until=lambda found: [i.instance_id for i in found] == ["console-a"],
    )
    page.wait_for_selector('tr[data-instance="console-b"]', state="detached", timeout=LIVE_WAIT_MS)
    page.goto(served.url + "/audit")
    text = page.inner_text("table.audit")
    for action in ("disable-item", "enable-item", "trigger", "disable", "enable", "shutdown"):
        assert f"\t{action}\t" in text, action
    assert "op (operator)" in text
    shot(page, tmp_path, "audit")
    page.context.close()


def test_viewer_cannot_act_and_forged_posts_are_refused(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    viewer = new_page(browser, VIEWER)
    viewer.goto(job_url(served))
    assert viewer.locator("button[data-action]").count() == 0
    assert "Your role cannot act" in viewer.inner_text(".actions")
    token = viewer.input_value('input[name="csrf"]')
    refused = viewer.request.post(
        job_url(served) + "/action", form={"action": "disable-item", "item": "1", "csrf": token}
    )
    assert refused.status == 403
    operator = new_page(browser, OPERATOR)
    operator.goto(job_url(served))
    forged = operator.request.post(
        job_url(served) + "/action", form={"action": "disable-item", "item": "1"}
    )
    assert forged.status == 403 and "CSRF" in forged.text()
    # another site's form, posted with the browser's ambient credentials
    operator.set_content(
        f'<form id="f" method="post" action="{job_url(served)}/action">'
        '<input name="action" value="disable-item"><input name="item" value="1"></form>'
    )
    with operator.expect_navigation():
        operator.evaluate("document.getElementById('f').submit()")
    assert "CSRF token missing" in operator.content()
    assert call(served, served.ops.sharding, JOB)[1].status.value != "DISABLED"
    for page in (viewer, operator):
        page.context.close()


def test_outages_show_banners(
    browser: Browser,
    served: Served,
    zk: ZooKeeperServer,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    page = new_page(browser, OPERATOR)
    postgres_server.stop()
    try:
        response = page.goto(served.url + "/history?job=" + JOB)
        assert response is not None and response.status == 200
        assert "Trace database unreachable" in page.inner_text(".banner")
    finally:
        postgres_server.start()
    page.goto(served.url + "/")
    page.evaluate("window.__marker = 'same page'")
    zk.stop()
    page.wait_for_selector("#live-banners >> text=Registry unreachable")  # live, no reload
    assert page.evaluate("window.__marker") == "same page"
    response = page.goto(served.url + "/")
    assert response is not None and response.status == 200
    page.wait_for_selector("text=Registry unreachable")
    assert page.locator(f'tr[data-job="{JOB}"]').count() == 1  # the last state seen
    shot(page, tmp_path, "outage")
    response = page.goto(job_url(served))
    assert response is not None and response.status == 503
    assert "Registry unreachable" in page.inner_text(".banner")
    page.context.close()
