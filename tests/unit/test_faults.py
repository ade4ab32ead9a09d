"""A background step that fails is isolated, logged once while it lasts, and shown to operators in /readyz
(``degraded.failing``) until it works again; a loop that raises is restarted and reported the same way."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tsop_events import runtime as runtime_module
from tsop_events.faults import FAILING, Faults
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings


def test_a_failing_step_is_logged_once_while_it_lasts_and_never_stops_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.faults")
    faults = Faults("svc", log)
    ran: list[str] = []

    async def broken() -> int:
        raise RuntimeError("database gone")

    async def fine() -> int:
        ran.append("fine")
        return 7

    async def rounds(n: int) -> list[int | None]:
        out: list[int | None] = []
        for _ in range(n):
            out.append(await faults.step("broken", broken))
            out.append(await faults.step("fine", fine))
        return out

    with caplog.at_level(logging.INFO, logger=log.name):
        assert asyncio.run(rounds(3)) == [None, 7] * 3
    assert ran == ["fine"] * 3  # the next step ran in every round
    assert faults.current == {"broken": "RuntimeError: database gone"}
    assert FAILING.labels("svc", "broken")._value.get() == 1
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1  # once, not every round

    async def mended() -> int:
        return 1

    with caplog.at_level(logging.INFO, logger=log.name):
        assert asyncio.run(faults.step("broken", mended)) == 1
    assert faults.current == {} and FAILING.labels("svc", "broken")._value.get() == 0
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_a_background_loop_that_raises_is_restarted_and_shown_in_readyz_until_it_runs_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime_module, "HEALTHY_SECONDS", 0.3)
    rt: Runtime = Runtime(ServiceSettings(service_name="faults"))
    starts: list[int] = []

    async def loop() -> None:
        starts.append(1)
        if len(starts) <= 2:
            raise ValueError("a poisoned row")
        await asyncio.sleep(3600)  # the third start runs on

    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        rt._spawn("expiry", loop)
        await asyncio.sleep(1.2)  # crashed twice, restarted each time a second later
        failing = rt.degraded()
        await asyncio.sleep(2.0)  # the third start has run HEALTHY_SECONDS without raising
        healthy = rt.degraded()
        for t in rt._tasks:
            t.cancel()
        await asyncio.gather(*rt._tasks, return_exceptions=True)
        return failing, healthy

    failing, healthy = asyncio.run(scenario())
    assert failing == {"failing": {"task expiry": "ValueError: a poisoned row"}}
    assert healthy == {} and len(starts) == 3


def test_a_fault_of_shared_work_done_elsewhere_is_forgotten_and_texts_quote_no_input() -> None:
    from pydantic import BaseModel, ValidationError

    class Body(BaseModel):
        score: int

    faults = Faults("svc")
    try:
        Body.model_validate({"score": "Alice Example, 13800138000"})
    except ValidationError as exc:
        faults.failed("inbox k1", exc)
    faults.failed("inbox k2", RuntimeError("x"))
    faults.failed("timer", RuntimeError("y"))
    assert "13800138000" not in faults.current["inbox k1"]  # /readyz is unauthenticated: no personal data
    faults.only("inbox ", {"inbox k2"})  # k1 was done by another instance meanwhile
    assert set(faults.current) == {"inbox k2", "timer"}


def test_a_loop_that_failed_then_ended_is_no_longer_failing_and_a_stop_waits_for_its_clean_up() -> None:
    rt: Runtime = Runtime(ServiceSettings(service_name="faults2"))
    runs: list[int] = []
    cleaned: list[bool] = []

    async def once_broken() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("first try")

    async def crash_looping() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)  # its clean-up takes a moment (a consumer's stop)
            cleaned.append(True)

    async def scenario() -> dict[str, object]:
        rt._spawn("once", once_broken)
        rt._spawn("forever", crash_looping)
        await asyncio.sleep(1.5)  # failed, restarted a second later, then ended
        seen = rt.degraded()
        for t in rt._tasks:
            t.cancel()
        await asyncio.gather(*rt._tasks, return_exceptions=True)
        return seen

    assert asyncio.run(scenario()) == {} and len(runs) == 2
    assert cleaned == [True]  # the stop waited for the loop's clean-up
