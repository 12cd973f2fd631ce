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

import functools
import inspect
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, MutableSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, cast

from scrapy import signals

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.internet.interfaces import IReactorTime

    from .config import Concurrency


RoomListener = Callable[[str], bool]
"""Called as ``listener(slot_key)`` when slot ``slot_key`` may have room for
one more request; returns True if it now has requests to hand out (the
scheduler's queue, :mod:`scrapy_justproxies.queue`)."""

ClaimListener = Callable[[str, "Request", int], None]
"""Called as ``listener(slot_key, request, in_flight)`` when a request leaves
its slot's queue to be downloaded (the byte meter, the trace)."""


class SlotListener(Protocol):
    """What the throttle offers the slots: limits out, samples in."""

    def limit_for(self, key: str) -> int | None:
        """A slot's current limit, if it has one (None: leave it alone)."""

    def sent(self, key: str, request: Request, in_flight: int) -> None:
        """``request`` left slot ``key``'s queue; ``in_flight`` counts it."""

    def answered(self, request: Request, response: Response) -> None:
        """The download of ``request`` produced ``response``."""

    def failed(self, request: Request) -> None:
        """The download of ``request`` ended without a response."""

    def pace_for(self, key: str) -> float | None:
        """Seconds between a new slot's first sends (a warm start's first
        volley spread over one answer time), or None."""


class ClaimingQueue(deque[tuple["Request", Any]]):
    """A slot queue that claims a transfer place when a request leaves it."""

    # One per download slot: no instance dict on a broad crawl's thousands.
    __slots__ = ("on_claim", "transferring")

    def __init__(
        self,
        items: Iterable[tuple[Request, Any]],
        transferring: MutableSet[Any],
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


class _WatchedSet(set[Any]):
    """A request set (``Downloader.active``, a slot's ``active``) that tells
    the guard when a request enters or leaves it."""

    def __init__(
        self,
        items: Iterable[Any],
        on_add: Callable[[Any], None] | None,
        on_remove: Callable[[Any], None] | None,
    ) -> None:
        super().__init__(items)
        self.on_add = on_add
        self.on_remove = on_remove

    def add(self, item: Any) -> None:
        super().add(item)
        if self.on_add is not None:
            self.on_add(item)

    def remove(self, item: Any) -> None:
        super().remove(item)
        if self.on_remove is not None:
            self.on_remove(item)

    def discard(self, item: Any) -> None:
        if item in self:
            self.remove(item)


class _GuardedSlots(dict[str, Any]):
    """``Downloader.slots``: every slot Scrapy makes gets the claiming queue
    and its starting values as it is filed, at no cost per request."""

    def __init__(self, guard: SlotGuard, slots: dict[str, Any]) -> None:
        super().__init__()
        self.guard = guard
        for key, slot in slots.items():
            self[key] = slot

    def __setitem__(self, key: str, slot: Any) -> None:
        self.guard._install(key, slot)
        super().__setitem__(key, slot)


class _Place:
    """Stands in a slot's ``transferring`` set for a 429 that keeps its place."""

    __slots__ = ()


LATE_KEPT: Final = 16
"""How many of a paced slot's last sends its lateness is the mean of."""
LATE_SHARE: Final = 0.25
"""Lateness counted, and taken off a paced slot's delay, at most: this share
of its interval (the event loop's is a few per cent; more is a send that
waited for a request or a transfer place, not for the timer)."""


@dataclass(slots=True)
class Pacing:
    """A slot paced at one send every ``interval`` seconds. Scrapy's download
    delay fires on the event loop a millisecond or two after it is due, and
    each send waits the whole delay from the one before: in the benchmark's
    traces a 50 req/s pace sent 87-96% of it, a 20 req/s one 95-99%. So the
    delay set on the slot is the interval less the mean lateness of its
    last sends, and the sends keep the interval."""

    interval: float
    last: float | None = None
    """When the slot last sent."""
    late: list[float] = field(default_factory=list)
    """Seconds past its delay each of the last sends went out."""

    def delay(self) -> float:
        """The download delay that sends every ``interval``."""
        # (Counted under an interval since changed: only what fits this one.)
        late = [x for x in self.late if x < self.interval * LATE_SHARE]
        if not late:
            return self.interval
        return self.interval - sum(late) / len(late)

    def sent(self, now: float, delay: float) -> None:
        """The slot sent at ``now``, its delay ``delay``."""
        if self.last is not None:
            late = now - self.last - delay
            # Sent when the delay was due, not when a request came in after
            # the slot ran dry (nor early: its first send after a change).
            if 0 <= late < delay * LATE_SHARE:
                self.late.append(late)
                if len(self.late) > LATE_KEPT:
                    del self.late[0]
        self.last = now


class SlotGuard:
    """Per crawler: installs the claiming queue on every download slot, sets
    each new slot's starting concurrency and delay (from
    :class:`~scrapy_justproxies.config.Concurrency`), and passes sends and
    answers to the throttle once it is attached (:meth:`attach_throttle`).
    Get it with :meth:`of`."""

    _by_crawler: ClassVar[weakref.WeakKeyDictionary[Crawler, SlotGuard]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, crawler: Crawler, concurrency: Concurrency | None) -> None:
        self.crawler = crawler
        self.start_concurrency = concurrency.domain_start if concurrency else None
        self.start_delay = concurrency.delay if concurrency else None
        self.throttle: SlotListener | None = None
        self.listeners: list[ClaimListener] = []
        self._unpaced: dict[str, tuple[float, Any]] = {}  # key: (delay, jitter)
        self._pacing: dict[str, Pacing] = {}
        self._overrides: dict[str, Any] = crawler.settings.getdict("DOWNLOAD_SLOTS")
        self._process_queue: Callable[[Any], None] | None = None
        self._paused: dict[str, tuple[float, int]] = {}  # key: (until, limit)
        self._probing: set[str] = set()  # paused slots letting one request out
        self._places: dict[str, int] = {}  # key: places held for 429s
        # Requests the scheduler's queue handed out, until they leave the
        # downloader: each holds one unit of CONCURRENT_REQUESTS meanwhile.
        self._handed_out: dict[Request, str] = {}
        self._units: dict[str, int] = {}
        self._before_slot: dict[str, int] = {}  # handed out, not in the slot yet
        self._not_in_slot: set[Request] = set()
        self.room_listeners: list[RoomListener] = []
        self.backlogs: list[Callable[[str], int]] = []
        self._exit_labels: tuple[str, ...] = ()
        crawler.signals.connect(self._engine_started, signals.engine_started)
        crawler.signals.connect(self._downloaded, signals.response_downloaded)

    @classmethod
    def of(cls, crawler: Crawler, concurrency: Concurrency | None = None) -> SlotGuard:
        """The crawler's guard; the first caller gives the start values."""
        guard = cls._by_crawler.get(crawler)
        if guard is None:
            guard = cls._by_crawler[crawler] = cls(crawler, concurrency)
        return guard

    def attach_throttle(self, throttle: SlotListener) -> None:
        """Let ``throttle`` set slot limits and hear of every send and answer."""
        self.throttle = throttle

    # -- what the downloader and its middleware report ------------------------

    def _downloaded(
        self, response: Response, request: Request, spider: Spider | None = None
    ) -> None:
        """``response_downloaded``: ``Downloader._download`` sends it before
        it frees the request's place and starts the slot's next request, so
        a decision taken here binds that very request. A middleware's
        ``process_response`` comes after it, and under the asyncio reactor an
        event-loop turn or more later (measured at a fixed window's first
        429: 7-20 ms, during which 6-30 other answers freed their places).
        Every request the throttle saw sent is answered here or failed
        (:meth:`failed`): a cached answer was never sent."""
        if self.throttle is not None:
            self.throttle.answered(request, response)

    def failed(self, request: Request) -> None:
        if self.throttle is not None:
            self.throttle.failed(request)

    # -- slots -----------------------------------------------------------------

    def engine(self) -> Any:
        """The crawler's engine, or None before the crawl starts (Scrapy
        2.19 raises instead of returning None)."""
        try:
            return self.crawler.engine
        except RuntimeError:
            return None

    def slot(self, key: str) -> Any:
        engine = self.engine()
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
        if grew:
            if slot.queue:
                self.kick(slot)
            self._roomy(key)

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
        call_later(seconds, self._resume, key, until)
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value("justproxies/slots/paused")

    def probe(self, key: str) -> None:
        """Let one request out of a paused slot (to check that the site is
        still closed); the slot stays paused."""
        slot = self.slot(key)
        if slot is None or key not in self._paused:
            return
        self._probing.add(key)
        slot.concurrency = len(slot.transferring) + 1
        if slot.queue:
            self.kick(slot)
        self._roomy(key)

    def resume(self, key: str) -> None:
        """End a pause early (the site admitted a request meanwhile)."""
        paused = self._paused.pop(key, None)
        self._probing.discard(key)
        if paused is not None:
            self.set_concurrency(key, paused[1])

    def hold_place(self, key: str, seconds: float) -> None:
        """Keep one of slot ``key``'s transfer places (which its concurrency
        counts) taken for ``seconds``, for a 429 answered at once. Nothing
        else is held: not the request, not a crawl-wide unit."""
        slot = self.slot(key)
        if slot is None or seconds <= 0:
            return
        place = _Place()
        slot.transferring.add(place)
        self._places[key] = self._places.get(key, 0) + 1
        call_later(seconds, self._release, key, slot, place)

    def _release(self, key: str, slot: Any, place: _Place) -> None:
        slot.transferring.discard(place)
        held = self._places.pop(key, 1) - 1
        if held > 0:
            self._places[key] = held
        if slot.queue:
            self.kick(slot)
        self._roomy(key)

    def _resume(self, key: str, until: float) -> None:
        paused = self._paused.get(key)
        if paused is None or paused[0] != until:
            return  # a later pause superseded this one
        del self._paused[key]
        self._probing.discard(key)
        self.set_concurrency(key, paused[1])

    def kick(self, slot: Any) -> None:
        """Run the downloader's queue processing for a slot now.

        ``Downloader._process_queue`` takes ``(spider, slot)`` up to 2.13 and
        ``(slot)`` since 2.14.
        """
        engine = self.engine()
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

    def _engine_started(self) -> None:
        engine = self.engine()
        downloader = engine.downloader
        if not isinstance(downloader.slots, _GuardedSlots):
            downloader.slots = _GuardedSlots(self, downloader.slots)
        if not isinstance(downloader.active, _WatchedSet):
            downloader.active = _WatchedSet(downloader.active, None, self._left)

    # -- the scheduler's side: room per slot (scrapy_justproxies.queue) --------

    def spread_over_exits(self, labels: Iterable[str]) -> None:
        """Static exits: a site's requests go to slots ``<label>|<site>``,
        one per exit, chosen by the middleware when each is sent. The
        scheduler's queue files them by site; a site has room when its exit
        slots together have a free place."""
        self._exit_labels = tuple(labels)

    def site_key(self, key: str) -> str:
        """The site of slot ``key``: itself, or for an exit's slot the part
        after ``<label>|``."""
        if self._exit_labels and "|" in key:
            label, site = key.split("|", 1)
            if label in self._exit_labels:
                return site
        return key

    def has_room(self, key: str) -> bool:
        """Whether slot ``key`` can take one more request now without it
        waiting in the downloader, where it would hold a crawl-wide unit of
        ``CONCURRENT_REQUESTS`` (``Downloader.needs_backout`` counts every
        request it holds, queued or not). A slot that paces its sends (a
        download delay) takes the next one only once none is waiting."""
        if self._exit_labels:
            return self._exits_have_room(key)
        return self._slot_has_room(key)

    def _exits_have_room(self, site: str) -> bool:
        engine = self.engine()
        if engine is None:
            return True
        free = 0
        for label in self._exit_labels:
            key = f"{label}|{site}"
            slot = engine.downloader.slots.get(key)
            if slot is None:
                free += self._new_slot_concurrency(key, engine.downloader)
            else:
                held = self._places.get(key, 0)
                free += max(0, slot.concurrency - held - len(slot.active))
        return free > self._before_slot.get(site, 0)

    def _slot_has_room(self, key: str) -> bool:
        engine = self.engine()
        if engine is None:
            return True
        slot = engine.downloader.slots.get(key)
        if slot is None:  # made when its first request reaches the downloader
            cap, delay, queued = (
                self._new_slot_concurrency(key, engine.downloader),
                0,
                0,
            )
        else:
            cap, delay, queued = slot.concurrency, slot.delay, len(slot.queue)
            cap -= self._places.get(key, 0)
        units = self._units.get(key, 0)
        if slot is not None and len(slot.active) > units:
            units = len(slot.active)  # requests not from the queue (robots.txt)
        if units >= cap:
            return False
        return not (delay and (queued or self._before_slot.get(key)))

    def _start_concurrency(self, key: str) -> int | None:
        """The concurrency the plugin gives slot ``key`` when Scrapy makes
        it: the throttle's limit, else the preset's start; None when
        ``DOWNLOAD_SLOTS`` pins it (Scrapy's own value stands)."""
        if "concurrency" in self._overrides.get(key, {}):
            return None
        limit = self.throttle.limit_for(key) if self.throttle is not None else None
        return limit if limit is not None else self.start_concurrency

    def _new_slot_concurrency(self, key: str, downloader: Any) -> int:
        """The concurrency slot ``key`` will have once it is made."""
        start = self._start_concurrency(key)
        if start is not None:
            return start
        pinned = self._overrides.get(key, {}).get("concurrency")
        return int(pinned if pinned is not None else downloader.domain_concurrency)

    def demand(self, key: str) -> int:
        """Requests of slot ``key`` the crawl has now: in the downloader, and
        waiting in the scheduler's queue for room."""
        slot = self.slot(key)
        held = len(slot.active) if slot is not None else 0
        return held + sum(backlog(key) for backlog in self.backlogs)

    def handed_out(self, request: Request, key: str) -> None:
        """The scheduler's queue gave ``request`` (of slot ``key``) to the
        engine; it counts against the slot until it leaves the downloader."""
        self._handed_out[request] = key
        self._units[key] = self._units.get(key, 0) + 1
        self._before_slot[key] = self._before_slot.get(key, 0) + 1
        self._not_in_slot.add(request)

    def _entered_slot(self, request: Any) -> None:
        if request in self._not_in_slot:
            self._not_in_slot.remove(request)
            self._count_down(self._before_slot, self._handed_out[request])

    def _left(self, request: Any) -> None:
        key = self._handed_out.pop(request, None)
        if key is None:
            return
        if request in self._not_in_slot:  # dropped on its way to the slot
            self._not_in_slot.remove(request)
            self._count_down(self._before_slot, key)
        self._count_down(self._units, key)
        self._roomy(key)

    @staticmethod
    def _count_down(counts: dict[str, int], key: str) -> None:
        left = counts.get(key, 1) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)

    def _roomy(self, key: str) -> None:
        """Slot ``key`` may have room: tell the scheduler's queue, and wake
        the engine if it has something to hand out now (else the engine
        would only ask at its next heartbeat, up to 5 s later)."""
        woke = False
        key = self.site_key(key)
        for listener in self.room_listeners:
            woke = listener(key) or woke
        if woke:
            wake_engine(self.engine())

    def _install(self, key: str, slot: Any) -> None:
        if isinstance(slot.queue, ClaimingQueue):
            return
        slot.queue = ClaimingQueue(
            slot.queue, slot.transferring, functools.partial(self._claimed, key)
        )
        slot.active = _WatchedSet(slot.active, self._entered_slot, None)
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value("justproxies/slots/guarded")
        # A new slot for a key Scrapy dropped (idle): what was kept for the
        # old one says nothing about it (the throttle paces it afresh).
        self._pacing.pop(key, None)
        self._unpaced.pop(key, None)
        overrides = self._overrides.get(key, {})
        start = self._start_concurrency(key)
        if start is not None:
            slot.concurrency = start
        if self.start_delay is not None and "delay" not in overrides:
            slot.delay = self.start_delay
        if "delay" not in overrides and self.throttle is not None:
            pace = self.throttle.pace_for(key)
            if pace:
                self._pace(key, slot, pace)

    def pace(self, key: str, interval: float | None) -> None:
        """Send from slot ``key`` exactly every ``interval`` seconds (the
        slot's download delay, without jitter); None: back to its own delay.
        Used to spread a warm start's first volley over one answer time."""
        if interval is None and key not in self._unpaced:
            return
        slot = self.slot(key)
        if slot is not None:
            self._pace(key, slot, interval)
        elif interval is None:
            # Scrapy dropped the idle slot: nothing left to restore.
            del self._unpaced[key]
            self._pacing.pop(key, None)

    def _pace(self, key: str, slot: Any, interval: float | None) -> None:
        # Scrapy 2.14+ calls the random variation "jitter" (a magnitude),
        # older versions "randomize_delay" (a flag).
        name = "jitter" if hasattr(type(slot), "jitter") else "randomize_delay"
        if interval is None:
            self._pacing.pop(key, None)
            unpaced = self._unpaced.pop(key, None)
            if unpaced is not None:
                slot.delay = unpaced[0]
                setattr(slot, name, unpaced[1])
            return
        if key not in self._unpaced:
            self._unpaced[key] = (slot.delay, getattr(slot, name))
        pacing = self._pacing.get(key)
        if pacing is None:
            pacing = self._pacing[key] = Pacing(interval)
        pacing.interval = interval
        slot.delay = pacing.delay()
        setattr(slot, name, 0.0 if name == "jitter" else False)

    def _claimed(self, key: str, request: Request, in_flight: int) -> None:
        pacing = self._pacing.get(key)
        if pacing is not None:
            self._keep_pace(key, pacing)
        if key in self._probing:  # the probe is out: closed again
            self._probing.discard(key)
            slot = self.slot(key)
            if slot is not None and key in self._paused:
                slot.concurrency = 0
        if self.throttle is not None:
            self.throttle.sent(key, request, in_flight)
        for listener in self.listeners:
            listener(key, request, in_flight)
        if self.room_listeners:
            self._roomy(key)  # a paced slot's waiting request just left

    def _keep_pace(self, key: str, pacing: Pacing) -> None:
        slot = self.slot(key)
        if slot is None:
            return
        pacing.sent(time.monotonic(), slot.delay)
        delay = pacing.delay()
        if abs(delay - slot.delay) > 1e-4:
            slot.delay = delay


def wake_engine(engine: Any) -> None:
    """Ask the engine to fetch from the scheduler soon (its ``nextcall``, a
    ``CallLaterOnce``: calling it twice runs once). Private in Scrapy (the
    engine's ``_slot`` on 2.13 to 2.19); without it the engine's heartbeat
    asks every 5 s."""
    engine_slot = getattr(engine, "_slot", None)
    nextcall = getattr(engine_slot, "nextcall", None)
    if nextcall is not None:
        nextcall.schedule()


def call_later(seconds: float, function: Callable[..., Any], *args: Any) -> Any:
    """``reactor.callLater``: the IDelayedCall, typed loosely (zope's
    interfaces confuse mypy)."""
    reactor: Any = reactor_time()
    return reactor.callLater(seconds, function, *args)


def reactor_time() -> IReactorTime:
    # Imported late: importing it installs the default reactor, and Scrapy
    # must install the one the settings ask for first.
    from twisted.internet import reactor  # noqa: PLC0415

    return cast("IReactorTime", reactor)
