"""The per-site queue's list-based memory queues behave as Scrapy's
``FifoMemoryQueue`` and ``LifoMemoryQueue`` (pure, seeded), cost less, and
are what the per-site queue uses for Scrapy's memory queues only."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import pytest
from scrapy import Request
from scrapy.pqueues import ScrapyPriorityQueue
from scrapy.squeues import (
    FifoMemoryQueue,
    LifoMemoryQueue,
    PickleFifoDiskQueue,
)
from scrapy.utils.test import get_crawler

from scrapy_justproxies.queue import ListFifoQueue, ListLifoQueue, lean


@pytest.mark.parametrize(
    ("ours", "scrapys"),
    [(ListFifoQueue, FifoMemoryQueue), (ListLifoQueue, LifoMemoryQueue)],
)
@pytest.mark.parametrize("seed", range(5))
def test_same_order_as_scrapys_queue(ours: Any, scrapys: Any, seed: int) -> None:
    """Random pushes and pops (long runs of each, so the FIFO's head moves
    far and the list is compacted many times): every pop, peek and length
    is the same as Scrapy's."""
    rng = random.Random(seed)
    a, b = ours(), scrapys()
    pushed = 0
    for _ in range(200):
        pushing = rng.random() < 0.55
        for _ in range(rng.randrange(1, 60)):
            if pushing:
                a.push(pushed)
                b.push(pushed)
                pushed += 1
            else:
                assert a.peek() == b.peek()
                assert a.pop() == b.pop()
            assert len(a) == len(b)
    while len(b):
        assert a.pop() == b.pop()
    assert len(a) == 0
    assert a.pop() is None and a.peek() is None


def test_a_popped_request_is_not_kept_alive_by_the_fifo() -> None:
    queue = ListFifoQueue()
    for i in range(3):
        queue.push(Request(f"http://a.test/{i}"))
    queue.pop()
    assert sum(item is not None for item in queue._items) == 2


def test_only_scrapys_memory_queues_are_replaced() -> None:
    assert lean(FifoMemoryQueue) is ListFifoQueue
    assert lean(LifoMemoryQueue) is ListLifoQueue
    assert lean(PickleFifoDiskQueue) is PickleFifoDiskQueue  # JOBDIR: as is


class UsersQueue(FifoMemoryQueue):  # type: ignore[misc,valid-type]
    pass


def test_a_users_own_memory_queue_is_kept() -> None:
    assert lean(UsersQueue) is UsersQueue


def per_site_bytes(queue_cls: Any, start_queue_cls: Any) -> float:
    crawler = get_crawler()
    requests = [
        [Request(f"http://s{i}.test/{j}", meta={"is_start_request": True})
         for j in range(2)]
        for i in range(2_000)
    ]  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        queues = []
        for pair in requests:
            queue = ScrapyPriorityQueue(
                crawler, queue_cls, "", (), start_queue_cls=start_queue_cls
            )
            for request in pair:
                queue.push(request)
            queues.append(queue)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return grown / len(requests)


def test_a_site_with_a_few_requests_waiting_costs_less() -> None:
    """A broad crawl keeps a priority queue per site with requests waiting:
    with Scrapy's default memory queues it costs 1.47 kB (two requests, the
    deque under each queue 760 bytes however short); on lists, under
    half."""
    scrapys = per_site_bytes(LifoMemoryQueue, FifoMemoryQueue)
    ours = per_site_bytes(lean(LifoMemoryQueue), lean(FifoMemoryQueue))
    assert ours < 0.5 * scrapys, (ours, scrapys)
