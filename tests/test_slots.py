"""The claiming queue: the piece that makes slot caps hold on Scrapy 2.14+."""

from __future__ import annotations

from scrapy import Request

from scrapy_justproxies.slots import ClaimingQueue


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
