"""Make a download slot's ``concurrency`` a real cap on every Scrapy version,
and give the plugin one place that owns the slots.

Since Scrapy 2.14 the downloader starts each download as a coroutine task
(``_schedule_coro``) and a request only enters ``slot.transferring`` when that
task first runs. ``Downloader._process_queue`` loops ``while slot.queue and
slot.free_transfer_slots() > 0``, so under the asyncio reactor one pass drains
the whole queue: measured on 2.19.0 with ``CONCURRENT_REQUESTS = 100``,
``CONCURRENT_REQUESTS_PER_DOMAIN = 8`` did not hold, and on a site that
admits 50 requests/s 83% of the answers were 429 (bench/slot_cap.py).
Scrapy 2.13 started downloads synchronously and held the cap.

The fix here is the smallest one that works on every version: the slot's
queue is swapped for a deque whose ``popleft`` marks the request as
transferring at once. ``Downloader._download`` later adds the same request to
the set (a no-op) and removes it when the download ends, so the bookkeeping
stays Scrapy's own. The moment of ``popleft`` is also the moment a request is
really sent, which the throttle needs to know.
"""

from __future__ import annotations

import inspect
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, MutableSet
from typing import TYPE_CHECKING, Any, ClassVar, cast

from scrapy import signals
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.task import deferLater

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from twisted.internet.interfaces import IReactorTime

ClaimListener = Callable[[str, "Request", int], None]
"""Called as ``listener(slot_key, request, in_flight)`` when a request leaves
its slot's queue to be downloaded; ``in_flight`` counts it."""


class ClaimingQueue(deque[tuple["Request", Any]]):
    """A slot queue that claims a transfer place when a request leaves it."""

    def __init__(
        self,
        items: Iterable[tuple[Request, Any]],
        transferring: MutableSet[Request],
        on_claim: Callable[[Request, int], None],
    ) -> None:
        super().__init__(items)
        self.transferring = transferring
        self.on_claim = on_claim

    def popleft(self) -> tuple[Request, Any]:
        item = super().popleft()
        self.transferring.add(item[0])
        self.on_claim(item[0], len(self.transferring))
        return item


class SlotGuard:
    """Per crawler: installs the claiming queue on every download slot, sets
    each new slot's starting concurrency and delay, and tells listeners when
    requests are sent. Get it with :meth:`of`."""

    _by_crawler: ClassVar[weakref.WeakKeyDictionary[Crawler, SlotGuard]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.start_concurrency: int | None = None
        self.start_delay: float | None = None
        self.limit_for: Callable[[str], int | None] = lambda key: None
        """Set by the throttle: a slot's current limit, if it has one."""
        self.pace_for: Callable[[str], float | None] = lambda key: None
        """Set by the throttle: seconds between a new slot's first sends."""
        self._unpaced: dict[str, tuple[float, Any]] = {}  # key: (delay, jitter)
        self.listeners: list[ClaimListener] = []
        self._overrides: dict[str, Any] = crawler.settings.getdict("DOWNLOAD_SLOTS")
        self._process_queue: Callable[[Any], None] | None = None
        self._paused: dict[str, tuple[float, int]] = {}  # key: (until, limit)
        crawler.signals.connect(self._reached, signals.request_reached_downloader)

    @classmethod
    def of(cls, crawler: Crawler) -> SlotGuard:
        guard = cls._by_crawler.get(crawler)
        if guard is None:
            guard = cls._by_crawler[crawler] = cls(crawler)
        return guard

    def slot(self, key: str) -> Any:
        engine: Any = self.crawler.engine
        return engine.downloader.slots.get(key) if engine is not None else None

    def set_concurrency(self, key: str, concurrency: int) -> None:
        """Change a live slot's cap; start queued requests if it grew."""
        if key in self._paused:
            self._paused[key] = (self._paused[key][0], concurrency)
            return
        slot = self.slot(key)
        if slot is None:
            return
        grew = concurrency > slot.concurrency
        slot.concurrency = concurrency
        if grew and slot.queue:
            self.kick(slot)

    def pause(self, key: str, seconds: float) -> None:
        """Send nothing more to a slot for ``seconds`` (``Retry-After``)."""
        slot = self.slot(key)
        if slot is None or seconds <= 0:
            return
        until = time.monotonic() + seconds
        if key in self._paused:
            if until <= self._paused[key][0]:
                return
            self._paused[key] = (until, self._paused[key][1])
        else:
            self._paused[key] = (until, slot.concurrency)
            slot.concurrency = 0
        deferLater(reactor_time(), seconds, self._resume, key, until)
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value("justproxies/slots/paused")

    async def hold(
        self, key: str, request: Request, *, wait: float, place: float
    ) -> None:
        """Keep ``request`` (a 429's retry) in slot ``key`` while it waits
        ``wait`` seconds: as an active request for the whole wait, so Scrapy's
        downloader-aware priority queue does not take a rate-limiting site for
        an idle one, and in one of the slot's transfer places (which its
        concurrency counts) for the first ``place`` seconds."""
        place = max(0.0, min(place, wait))
        slot = self.slot(key)
        if slot is not None:
            slot.active.add(request)
            slot.transferring.add(request)
        try:
            await _sleep(place)
            if slot is not None:
                slot.transferring.discard(request)
                if slot.queue:
                    self.kick(slot)
            await _sleep(wait - place)
        finally:
            if slot is not None:  # also when cancelled while holding the place
                slot.active.discard(request)
                slot.transferring.discard(request)

    def _resume(self, key: str, until: float) -> None:
        paused = self._paused.get(key)
        if paused is None or paused[0] != until:
            return  # a later pause superseded this one
        del self._paused[key]
        self.set_concurrency(key, paused[1])

    def kick(self, slot: Any) -> None:
        """Run the downloader's queue processing for a slot now.

        ``Downloader._process_queue`` takes ``(spider, slot)`` up to 2.13 and
        ``(slot)`` since 2.14.
        """
        engine: Any = self.crawler.engine
        if engine is None:
            return
        downloader = engine.downloader
        if self._process_queue is None:
            method = downloader._process_queue
            takes_spider = "spider" in inspect.signature(method).parameters
            self._process_queue = (
                (lambda s: method(self.crawler.spider, s)) if takes_spider else method
            )
        self._process_queue(slot)

    def _reached(self, request: Request, spider: Spider) -> None:
        key = request.meta.get("download_slot")
        slot = self.slot(key) if isinstance(key, str) else None
        if (
            slot is None
            or not isinstance(key, str)
            or isinstance(slot.queue, ClaimingQueue)
        ):
            return
        slot.queue = ClaimingQueue(
            slot.queue,
            slot.transferring,
            lambda claimed, in_flight: self._claimed(key, claimed, in_flight),
        )
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value("justproxies/slots/guarded")
        overrides = self._overrides.get(key, {})
        limit = None if "concurrency" in overrides else self.limit_for(key)
        if limit is not None:
            slot.concurrency = limit
        elif self.start_concurrency is not None and "concurrency" not in overrides:
            slot.concurrency = self.start_concurrency
        if self.start_delay is not None and "delay" not in overrides:
            slot.delay = self.start_delay
        pace = None if "delay" in overrides else self.pace_for(key)
        if pace:
            self.pace(key, pace)

    def pace(self, key: str, interval: float | None) -> None:
        """Send from slot ``key`` exactly every ``interval`` seconds (the
        slot's download delay, without jitter); None: back to its own delay.
        Used to spread a warm start's first volley over one answer time."""
        if interval is None and key not in self._unpaced:
            return
        slot = self.slot(key)
        if slot is None:
            return
        # Scrapy 2.14+ calls the random variation "jitter" (a magnitude),
        # older versions "randomize_delay" (a flag).
        name = "jitter" if hasattr(type(slot), "jitter") else "randomize_delay"
        if interval is None:
            unpaced = self._unpaced.pop(key, None)
            if unpaced is not None:
                slot.delay = unpaced[0]
                setattr(slot, name, unpaced[1])
            return
        if key not in self._unpaced:
            self._unpaced[key] = (slot.delay, getattr(slot, name))
        slot.delay = interval
        setattr(slot, name, 0.0 if name == "jitter" else False)

    def _claimed(self, key: str, request: Request, in_flight: int) -> None:
        for listener in self.listeners:
            listener(key, request, in_flight)


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await maybe_deferred_to_future(
            deferLater(reactor_time(), seconds, lambda: None)
        )


def reactor_time() -> IReactorTime:
    # Imported late: importing it installs the default reactor, and Scrapy
    # must install the one the settings ask for first.
    from twisted.internet import reactor  # noqa: PLC0415

    return cast("IReactorTime", reactor)
