"""The statistics page in a real headless browser (Debian's Chromium), against a running archive with data.

The archive runs as its own process on embedded PostgreSQL and the embedded broker; the test publishes
generated lifecycles as the other services would, waits until the statistics hold them, then opens
``/stats``. A screenshot must show each chart drawn (enough pixels that are not the background, in each
chart's box); a reader without the role sees an error and no figure.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from PIL import Image

from tests import infra
from tests.browser import chromium_path
from tests.stats_data import envelopes, many
from tsop_events.auth import token_table_json
from tsop_events.news import announce
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic

TOKENS = [("auditor-page", "aud", ["auditor"]), ("technician-page", "tec", ["technician"])]
CHARTS = ("chart-volumes", "chart-sla", "chart-scores", "chart-channels")
START = datetime(2026, 3, 2, tzinfo=UTC)
DAYS = 14


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("stats-page")
    with infra.postgres(tmp) as (pg_host, pg_port), infra.tansu(tmp) as broker:
        port = infra.free_port()
        env = {**os.environ, "TSOP_PG_HOST": pg_host, "TSOP_PG_PORT": str(pg_port),
               "TSOP_KAFKA_BOOTSTRAP": broker.bootstrap, "TSOP_TOPIC_PREFIX": "page.", "TSOP_TOPIC_PARTITIONS": "2",
               "TSOP_HTTP_PORT": str(port), "TSOP_AUTH_TOKENS": token_table_json(TOKENS),
               "TSOP_EPOCH_CHECK_SECONDS": "1", "TSOP_LOG_LEVEL": "WARNING"}
        with open(tmp / "archive.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "tsop_archive.main"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"the archive did not start: {(tmp / 'archive.log').read_text()[-2000:]}")
                time.sleep(0.3)
            lifecycles = many(11, 400, START, timedelta(days=DAYS))
            asyncio.run(publish(broker.bootstrap, [e for lc in lifecycles for e in lc],
                                ServiceSettings(pg_host=pg_host, pg_port=pg_port)))
            deadline = time.monotonic() + 90
            auditor = {"authorization": "Bearer auditor-page"}
            params = {"from": START.isoformat(), "to": (START + timedelta(days=DAYS)).isoformat()}
            while True:
                total = httpx.get(f"{url}/v1/stats/report", params=params, headers=auditor).json()["total"]
                if total["submitted"] == len(lifecycles) and total["rated"] > 0:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"the statistics did not take in the tickets: {total['submitted']}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


async def publish(bootstrap: str, raw: list[tuple[str, str, str, dict[str, object], datetime]],
                  settings: ServiceSettings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, env in envelopes(raw):
            await producer.send(Topic.tickets.qualified("page."), env.data, key=key.encode(), headers=env.headers())
        await producer.flush()
    finally:
        await producer.stop()
    await announce(settings, {Topic.tickets.qualified("page.")})  # as relays do: the archive resumes at once


def drawn(shot: Path, box: Mapping[str, float], scale: float = 1.0) -> float:
    """The share of a box's pixels that are not the page's white."""
    img = Image.open(shot).convert("RGB")
    x0, y0 = int(box["x"] * scale), int(box["y"] * scale)
    region = img.crop((x0, y0, x0 + int(box["width"] * scale), y0 + int(box["height"] * scale)))
    pixels = list(region.getdata())
    return sum(1 for p in pixels if sum(abs(c - 255) for c in p) > 30) / max(1, len(pixels))


def test_the_page_draws_the_charts_for_an_auditor_and_no_figure_for_others(
    archive: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400}, device_scale_factor=1)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            response = page.goto(f"{archive}/stats")
            assert response is not None and response.status == 200
            assert "default-src 'none'" in (response.headers.get("content-security-policy") or "")
            # no token: the shell only, no figure
            assert page.is_hidden("#figures") and page.locator(".tile").count() == 0

            def ask(token: str) -> None:
                page.fill("#token", token)
                page.fill("#from", START.date().isoformat())
                page.fill("#to", (START + timedelta(days=DAYS)).date().isoformat())
                page.click("button[type=submit]")

            ask("technician-page")
            page.wait_for_selector("#status.error")
            assert "403" in page.inner_text("#status")
            assert page.is_hidden("#figures") and page.locator(".tile").count() == 0
            refused = tmp_path / "refused.png"
            page.screenshot(path=str(refused), full_page=True)
            status = page.locator("#status").bounding_box()
            assert status is not None
            below = {"x": 0.0, "y": status["y"] + status["height"] + 4, "width": 1280.0, "height": 900.0}
            assert drawn(refused, below) == 0.0, "something is drawn below the refusal"
            ask("not-a-token")
            page.locator("#status.error", has_text="401").wait_for()
            assert page.is_hidden("#figures")

            ask("auditor-page")
            page.wait_for_selector("body[data-drawn=yes]")
            assert page.is_visible("#figures") and page.locator(".tile").count() >= 10
            assert "400" in page.inner_text("#tiles")  # 400 tickets submitted
            shot = tmp_path / "stats.png"
            page.screenshot(path=str(shot), full_page=True)
            for chart in CHARTS:
                rect = page.locator(f"#{chart}").bounding_box()
                assert rect is not None and rect["width"] > 400, chart
                share = drawn(shot, {"x": rect["x"], "y": rect["y"], "width": rect["width"], "height": rect["height"]})
                assert share > 0.03, f"{chart}: only {share:.3%} of its box is drawn"
            # the token stays in this tab: a URL never carries it
            assert "auditor-page" not in page.url
            assert page.evaluate("sessionStorage.getItem('tsop-stats-token')") == "auditor-page"
            page.click("#forget")
            assert page.is_hidden("#figures")
            assert errors == []
            print(f"screenshots in {tmp_path}")
        finally:
            browser.close()
