"""The claiming queue: the piece that makes slot caps hold on Scrapy 2.14+."""

from __future__ import annotations

from typing import Any

import pytest
from scrapy import Request
from scrapy.utils.test import get_crawler

from scrapy_justproxies import slots as slots_module
from scrapy_justproxies.slots import ClaimingQueue, Pacing, SlotGuard


def test_popleft_claims_a_transfer_place_at_once() -> None:
    transferring: set[Request] = set()
    claims: list[tuple[str, int]] = []
    first, second = Request("http://a.test/1"), Request("http://a.test/2")
    queue = ClaimingQueue(
        [(first, None)], transferring, lambda r, n: claims.append((r.url, n))
    )
    queue.append((second, None))
    assert queue.popleft()[0] is first
    # Counted before any download task runs: this is what holds the cap.
    assert transferring == {first}
    queue.popleft()
    assert transferring == {first, second}
    assert claims == [("http://a.test/1", 1), ("http://a.test/2", 2)]
    # Scrapy's own add (a no-op) and remove keep the bookkeeping right.
    transferring.add(first)
    transferring.remove(first)
    assert transferring == {second}


def test_keeps_what_was_queued_before_it_was_installed() -> None:
    queued = [(Request(f"http://a.test/{i}"), None) for i in range(3)]
    queue = ClaimingQueue(queued, set(), lambda r, n: None)
    assert [item[0].url for item in queue] == [r.url for r, _ in queued]


def test_a_claiming_queue_has_no_instance_dict() -> None:
    """One per download slot: a broad crawl has thousands."""
    queue = ClaimingQueue([], set(), lambda r, n: None)
    assert not hasattr(queue, "__dict__")


class _Slot:
    delay = 0.0
    jitter = 0.5


def test_a_pace_is_forgotten_when_scrapy_dropped_the_slot() -> None:
    """A warm start paces a slot's first volley; if Scrapy drops the idle
    slot before the pace ends, the saved delay must not stay forever."""
    guard = SlotGuard(get_crawler(), None)
    slots = {"a.test": _Slot()}
    guard.slot = slots.get  # type: ignore[method-assign]
    guard.pace("a.test", 0.2)
    assert slots["a.test"].delay == 0.2
    del slots["a.test"]  # Scrapy's slot garbage collection
    guard.pace("a.test", None)
    assert "a.test" not in guard._unpaced


def test_a_paced_slot_keeps_its_interval_when_scrapy_sends_late() -> None:
    """Scrapy's download delay fires a little after it is due, and each send
    waits the whole delay from the one before: at 50 req/s, 1.5 ms late
    each time is 7% below the pace. The delay set is the interval less the
    mean lateness of the last sends."""
    pacing = Pacing(interval=0.02)
    assert pacing.delay() == 0.02  # nothing measured yet
    now, delay = 0.0, pacing.delay()
    for _ in range(20):
        pacing.sent(now, delay)
        delay = pacing.delay()
        now += delay + 0.0015  # the event loop's lateness
    assert pacing.delay() == pytest.approx(0.0185)
    # Kept: sends one every 20 ms again (20 sends in 0.4 s, not 0.43 s).
    assert now == pytest.approx(20 * 0.02, abs=0.002)
    # A slot that ran dry sends when a request comes, well past its delay:
    # not lateness. Nor is a send before the delay (a pace just changed).
    pacing.sent(now + 0.5, delay)
    pacing.sent(now + 0.51, delay)
    assert pacing.delay() == pytest.approx(0.0185)
    # The mean of the last 16: what the sends lose on average. A quarter of
    # the interval late or more is not the timer's (a send that waited for
    # a request or a transfer place): not counted.
    pacing = Pacing(interval=0.02)
    now = 0.0
    pacing.sent(now, 0.02)
    for late in [0.009] * 10 + [0.001, 0.003] * 8:
        now += 0.02 + late
        pacing.sent(now, 0.02)
    assert pacing.late == pytest.approx([0.001, 0.003] * 8)
    assert pacing.delay() == pytest.approx(0.018)
    # Counted under a longer interval: only what fits this one is taken off
    # (a pace raised from 1/s to 50/s is not sped up by the old lateness).
    pacing.late = [0.015] * 15 + [0.002]
    assert pacing.delay() == pytest.approx(0.018)
    pacing.late = [0.015] * 16
    assert pacing.delay() == 0.02


def test_the_guard_sets_the_kept_delay_and_forgets_it_when_unpaced() -> None:
    guard = SlotGuard(get_crawler(), None)
    slots = {"a.test": _Slot()}
    guard.slot = slots.get  # type: ignore[method-assign]
    guard.pace("a.test", 0.02)
    pacing = guard._pacing["a.test"]
    pacing.late = [0.002] * 9
    guard._claimed("a.test", Request("http://a.test/1"), 1)
    assert slots["a.test"].delay == pytest.approx(0.018)
    guard.pace("a.test", 0.05)  # a new pace keeps the lateness measured
    assert slots["a.test"].delay == pytest.approx(0.048)
    guard.pace("a.test", None)
    assert "a.test" not in guard._pacing
    assert slots["a.test"].delay == 0.0  # its own delay back


class _NewSlot(_Slot):
    def __init__(self) -> None:
        self.queue: list[object] = []
        self.transferring: set[object] = set()
        self.active: set[object] = set()
        self.concurrency = 8


def test_a_slot_scrapy_made_anew_is_not_paced_by_the_old_ones_lateness() -> None:
    """Scrapy drops an idle slot and makes a new one when the domain is back;
    the throttle may have forgotten the domain meanwhile (no pace to undo).
    The new slot must not get the old one's delay at its first send."""
    guard = SlotGuard(get_crawler(), None)
    slots: dict[str, Any] = {"a.test": _NewSlot()}
    guard.slot = slots.get  # type: ignore[method-assign]
    guard.pace("a.test", 0.5)
    guard._pacing["a.test"].late = [0.01] * 4
    slots["a.test"] = _NewSlot()  # the old slot dropped, a new one made
    guard._install("a.test", slots["a.test"])
    assert "a.test" not in guard._pacing and "a.test" not in guard._unpaced
    guard._claimed("a.test", Request("http://a.test/1"), 1)
    assert slots["a.test"].delay == 0.0


class _LiveSlot:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.transferring: set[object] = set()
        self.queue: list[object] = []


def test_a_probe_lets_one_request_out_of_a_paused_slot_and_resume_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slot held for a site's Retry-After: the probe opens one place
    above what is in flight, the claim of one request closes it again, and
    ``resume`` (the probe was admitted) restores the limit at once; the
    pause's own timer then finds nothing to do."""
    timers: list[tuple[float, Any, tuple[Any, ...]]] = []
    monkeypatch.setattr(
        slots_module, "call_later", lambda s, f, *a: timers.append((s, f, a))
    )
    guard = SlotGuard(get_crawler(), None)
    slots = {"a.test": _LiveSlot(40)}
    guard.slot = slots.get  # type: ignore[method-assign]
    slot = slots["a.test"]
    slot.transferring.update({object(), object()})  # still in flight
    guard.pause("a.test", 16.0)
    assert slot.concurrency == 0
    guard.probe("a.test")
    assert slot.concurrency == 3  # the two in flight and one more
    guard._claimed("a.test", Request("http://a.test/1"), 3)
    assert slot.concurrency == 0  # closed again; still paused
    guard.set_concurrency("a.test", 30)  # the throttle moved meanwhile
    assert slot.concurrency == 0
    guard.resume("a.test")
    assert slot.concurrency == 30
    [(seconds, resume, args)] = timers
    assert seconds == 16.0
    resume(*args)  # the pause's timer: superseded, nothing changes
    assert slot.concurrency == 30
    guard.probe("a.test")  # not paused: no probe
    assert slot.concurrency == 30
