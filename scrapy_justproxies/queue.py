"""``SCHEDULER_PRIORITY_QUEUE``: keep a site's requests in the scheduler
until its download slot has room, so one strict site cannot starve the rest.

Scrapy counts every request the downloader holds against
``CONCURRENT_REQUESTS`` (``Downloader.needs_backout``), including those
waiting in a slot's queue. A site the throttle keeps at 1 or 2 in flight
(or a slot paused by ``Retry-After``) therefore piles up the requests the
scheduler hands it, until they fill the whole crawl's concurrency and every
other site waits. Measured (``bench/mixed.py starvation``): a site at 2
req/s with ``Retry-After: 20`` took an unlimited site from 74 req/s alone to
37 beside it.

This queue hands out a request only when its slot can send it
(:meth:`SlotGuard.has_room`): within a site, Scrapy's own priority queue
(priority first, then FIFO or LIFO as configured); across sites, the highest
priority first and sites of equal priority in turn, as
``DownloaderAwarePriorityQueue`` does for broad crawls. It keeps its per-site
queues on disk under ``JOBDIR`` in the same layout as that class.
"""

from __future__ import annotations

import heapq
import itertools
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy.pqueues import ScrapyPriorityQueue, _path_safe
from scrapy.squeues import FifoMemoryQueue, LifoMemoryQueue

from .config import JustProxiesConfigError
from .slots import SlotGuard

if TYPE_CHECKING:
    from collections.abc import Iterable

    from scrapy import Request
    from scrapy.crawler import Crawler

QUEUE_PATH = "scrapy_justproxies.queue.JustProxiesPriorityQueue"

# A slot waiting for room is looked at again when the guard says it may have
# some; this sweep is only the safety net for a notice that never came.
SWEEP_SECONDS = 1.0


class _ListQueue:
    """A memory queue on a list: what Scrapy's memory queues offer
    (``from_crawler``, ``push``, ``close``, ``len``)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[Any] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Any:
        return cls()

    def push(self, obj: Any) -> None:
        self._items.append(obj)

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._items)


class ListLifoQueue(_ListQueue):
    """Scrapy's ``LifoMemoryQueue`` on a list: a broad crawl keeps one per
    site with a request waiting, and the deque under Scrapy's costs 760
    bytes however short (measured: 1.47 kB per site for a priority queue of
    two requests, 0.64 kB with these)."""

    __slots__ = ()

    def pop(self) -> Any | None:
        return self._items.pop() if self._items else None

    def peek(self) -> Any | None:
        return self._items[-1] if self._items else None


class ListFifoQueue(_ListQueue):
    """Scrapy's ``FifoMemoryQueue`` on a list (see :class:`ListLifoQueue`):
    popped from a moving head, the list compacted when most of it is spent
    (amortized O(1) per request, however long the queue)."""

    __slots__ = ("_head",)

    def __init__(self) -> None:
        super().__init__()
        self._head = 0

    def pop(self) -> Any | None:
        items, head = self._items, self._head
        if head >= len(items):
            return None
        obj = items[head]
        items[head] = None  # the request is not kept alive by the queue
        head += 1
        if head == len(items):
            items.clear()
            head = 0
        elif head >= 16 and 2 * head >= len(items):
            del items[:head]
            head = 0
        self._head = head
        return obj

    def peek(self) -> Any | None:
        return self._items[self._head] if self._head < len(self._items) else None

    def __len__(self) -> int:
        return len(self._items) - self._head


# Scrapy's memory queues and their list-based equals (same order, same API).
_LEAN: dict[Any, type[Any]] = {
    FifoMemoryQueue: ListFifoQueue,
    LifoMemoryQueue: ListLifoQueue,
}


def lean(queue_cls: type[Any]) -> type[Any]:
    """The list-based equal of one of Scrapy's memory queue classes, else
    ``queue_cls`` itself (a disk queue, or a user's own class)."""
    return _LEAN.get(queue_cls, queue_cls)


class JustProxiesPriorityQueue:
    """Per-site priority queues; a site's next request goes out only when its
    download slot has room for it."""

    @classmethod
    def from_crawler(
        cls,
        crawler: Crawler,
        downstream_queue_cls: type[Any],
        key: str,
        startprios: dict[str, Iterable[int]] | None = None,
        *,
        start_queue_cls: type[Any] | None = None,
    ) -> JustProxiesPriorityQueue:
        return cls(
            crawler, downstream_queue_cls, key, startprios,
            start_queue_cls=start_queue_cls,
        )  # fmt: skip

    def __init__(
        self,
        crawler: Crawler,
        downstream_queue_cls: type[Any],
        key: str,
        slot_startprios: dict[str, Iterable[int]] | None = None,
        *,
        start_queue_cls: type[Any] | None = None,
    ) -> None:
        if slot_startprios and not isinstance(slot_startprios, dict):
            raise JustProxiesConfigError(
                "JOBDIR holds a crawl started with another SCHEDULER_PRIORITY_QUEUE "
                "(a per-site one is needed here). Resume it with "
                "SCHEDULER_PRIORITY_QUEUE = 'scrapy.pqueues.ScrapyPriorityQueue', "
                "or start a new JOBDIR."
            )
        assert crawler.engine is not None
        self.crawler = crawler
        self.downloader = crawler.engine.downloader
        self.downstream_queue_cls = lean(downstream_queue_cls)
        self.start_queue_cls = start_queue_cls and lean(start_queue_cls)
        self.key = key
        self.guard = SlotGuard.of(crawler)
        self.pqueues: dict[str, ScrapyPriorityQueue] = {}
        self._ready: list[tuple[int, int, str]] = []  # (priority, turn, slot)
        self._turn_of: dict[str, int] = {}  # slot: its live entry in _ready
        self._turns = itertools.count()
        self._waiting: set[str] = set()  # slots with requests but no room
        self._size = 0
        self._last_sweep = 0.0
        for slot, startprios in (slot_startprios or {}).items():
            queue = self.pqfactory(slot, startprios)
            if len(queue):
                self.pqueues[slot] = queue
                self._size += len(queue)
                self._take_turn(slot)
            else:
                queue.close()
        self.guard.room_listeners.append(self._room)
        self.guard.backlogs.append(self.backlog)

    def pqfactory(
        self, slot: str, startprios: Iterable[int] = ()
    ) -> ScrapyPriorityQueue:
        return ScrapyPriorityQueue(
            self.crawler,
            self.downstream_queue_cls,
            self.key + "/" + _path_safe(slot),
            startprios,
            start_queue_cls=self.start_queue_cls,
        )

    # -- the scheduler's interface ---------------------------------------------

    def push(self, request: Request) -> None:
        slot = self.guard.site_key(self.downloader.get_slot_key(request))
        queue = self.pqueues.get(slot)
        if queue is None:
            queue = self.pqueues[slot] = self.pqfactory(slot)
        before = queue.curprio
        queue.push(request)  # may raise (a request a disk queue cannot store)
        self._size += 1
        if slot in self._waiting:
            return
        if slot not in self._turn_of or (
            before is not None and queue.curprio != before
        ):
            self._take_turn(slot)  # new, or its best priority rose

    def pop(self) -> Request | None:
        request = self._pop_ready()
        if request is None and self._waiting:
            now = time.monotonic()
            if now - self._last_sweep >= SWEEP_SECONDS:
                self._last_sweep = now
                for slot in list(self._waiting):
                    self._room(slot)
                request = self._pop_ready()
        return request

    def peek(self) -> Request | None:
        for _, turn, slot in sorted(self._ready):
            if self._turn_of.get(slot) == turn and self.guard.has_room(slot):
                return self.pqueues[slot].peek()
        return None

    def close(self) -> dict[str, list[int]]:
        with suppress(ValueError):
            self.guard.room_listeners.remove(self._room)
        with suppress(ValueError):
            self.guard.backlogs.remove(self.backlog)
        active = {slot: queue.close() for slot, queue in self.pqueues.items()}
        self.pqueues.clear()
        return active

    def __len__(self) -> int:
        return self._size

    def backlog(self, slot: str) -> int:
        """Requests of ``slot`` waiting here."""
        queue = self.pqueues.get(slot)
        return len(queue) if queue is not None else 0

    def __contains__(self, slot: str) -> bool:
        return slot in self.pqueues

    # -- turns ------------------------------------------------------------------

    def _take_turn(self, slot: str) -> None:
        """(Re)enter ``slot`` behind the slots of its priority."""
        turn = next(self._turns)
        self._turn_of[slot] = turn
        priority = self.pqueues[slot].curprio
        heapq.heappush(
            self._ready, (priority if priority is not None else 0, turn, slot)
        )

    def _pop_ready(self) -> Request | None:
        while self._ready:
            _, turn, slot = heapq.heappop(self._ready)
            if self._turn_of.get(slot) != turn:
                continue  # superseded by a later entry
            del self._turn_of[slot]
            if not self.guard.has_room(slot):
                self._waiting.add(slot)
                if self.crawler.stats is not None:
                    self.crawler.stats.inc_value("justproxies/scheduler/held_back")
                continue
            queue = self.pqueues[slot]
            request = queue.pop()
            if len(queue):
                self._take_turn(slot)
            else:
                self._drop(slot)
            if request is not None:
                self._size -= 1
                self.guard.handed_out(request, slot)
                return request
        return None

    def _drop(self, slot: str) -> None:
        self.pqueues.pop(slot).close()
        if self.key:
            # Reclaim the slot's directory; rmdir leaves it if files remain.
            with suppress(OSError):
                Path(self.key, _path_safe(slot)).rmdir()

    def _room(self, slot: str) -> bool:
        """The guard's notice: ``slot`` may have room again."""
        if slot not in self._waiting or not self.guard.has_room(slot):
            return False
        self._waiting.discard(slot)
        self._take_turn(slot)
        return True
