"""One budget per site for many crawl processes, kept in Redis
(``JUSTPROXIES_SHARED_STATE``).

A site counts requests per site, not per Scrapy process. Without this, each
of N processes learns the site's limit on its own and probes it on its own:
N times the probing, N times the slow start, and shares that drift apart.
With it:

* **The site's budget lives in Redis**: the total concurrency the site
  admits (with the admitted rate and answer time it was derived from), one
  record per site, kept ``JUSTPROXIES_STATE_MAX_AGE`` so the next crawl
  starts from it.
* **Evidence is pooled**: every process adds its answers, 429s and clean
  answer times to per-second buckets keyed by Redis ``TIME`` (never a
  process clock), once a second per active site.
* **One process decides**: the live process with the smallest id (no
  election: everybody sees the same leases) judges the pooled evidence with
  :func:`next_budget` and writes the record with a compare-and-set. A climb
  in the pooled 429 share cuts the total to what the site admitted (Little's
  law: pooled clean answers per second times their answer time), a clean,
  used site is probed one step up now and then, as the per-process
  controller does.
* **One opening**: a site's first heartbeat goes out as its slot is made,
  before its first request, and seeds the budget at one process's start
  level, split among the processes. Until the first climb each process
  grows its part per clean answer and halves it at its first 429 (one slow
  start shared: the heartbeat is too slow to steer one), and the total
  follows the sum of the parts.
* **Each process gets its share** of the total among the processes live on
  that site (:func:`shares`: equal split, a process that needs less gives
  the rest to the others). A process holds a lease that expires after a few
  heartbeats: one that stops or is killed drops out and the others' shares
  grow at their next heartbeat.

Redis is off the hot path: no round trip per request, one Lua script call
per active site per process per second (plus a write when the budget
changes), run on a thread of its own so the reactor never waits.

Redis down mid-crawl: one warning, every process keeps its last share (and
its own controller keeps learning), the heartbeat retries every second and
rejoins when Redis is back; a Redis restarted empty is re-seeded from the
processes' shares. Nothing here ever drops a request.

The policy (:func:`shares`, :func:`pooled`, :func:`next_budget`) is pure and
stdlib-only; :class:`RedisStore` is thin I/O; :class:`SharedBudgets` is the
Scrapy glue the throttle calls through three hooks (``effective``,
``record``, and its own heartbeat).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import astuple, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .config import JustProxiesConfigError, SharedStateConfig
from .throttle import IDLE_SECONDS

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred
    from twisted.python.threadpool import ThreadPool

    from .slots import SlotGuard

logger = logging.getLogger(__name__)

__all__ = [
    "Budget",
    "Counts",
    "RedisStore",
    "Report",
    "SharedBudgets",
    "SharedPolicy",
    "Snapshot",
    "next_budget",
    "parse_site",
    "part_of_rate",
    "pooled",
    "share_of",
    "shares",
]


# -- the policy (pure) --------------------------------------------------------


@dataclass(frozen=True)
class SharedPolicy:
    """How the site's budget is judged; times in seconds."""

    beat_seconds: float = 1.0
    """How often each process reports per active site."""
    lease_beats: int = 3
    """A process missing this many heartbeats has left the site."""
    window_seconds: int = 3
    """The pooled evidence a climb is judged on (whole Redis seconds)."""
    settle_seconds: float = 1.0
    """Answers in the first second after a change say nothing about it."""
    regrow_seconds: float = 2.0
    """Clean and used this long after a cut: grow back towards the level
    that drew the 429s, at half pace."""
    probe_interval: float = 10.0
    """Clean and used this long at one level: probe one step up."""
    min_samples: int = 10
    """Fewer pooled answers than this say nothing."""
    min_rate_limited: int = 3
    tolerated_share: float = 0.02
    keep_seconds: int = 30
    """Buckets older than this are dropped."""
    rotate_seconds: float = 5.0
    """The remainder of an uneven split moves on to the next process this
    often, so processes with the same work finish together."""
    pace_margin: float = 0.02
    """Once the site's rate is measured (at a pooled climb), the processes
    together send this share below it, each its part (its share of the
    total): a token bucket sent less than its rate refuses nothing."""
    rate_step: float = 0.02
    """Paced at a rate measured while paced, clean and held back by the pace
    for ``rate_probe_seconds``: the rate is probed this much up (a climb
    measures it again)."""
    rate_probe_seconds: float = 5.0
    first_rate_step: float = 0.04
    """The same for a rate measured unpaced (at the first climb, where the
    ramp's seconds may count): this much up every ``regrow_seconds``, up to
    the next climb, which measures it paced."""
    pace_headroom: float = 1.25
    """Paced, a process's concurrency is its share times this, plus one:
    the pace, not the concurrency, holds the sends back."""

    @property
    def lease_seconds(self) -> float:
        return self.beat_seconds * self.lease_beats


def _join_ints(record: Any) -> str:
    """A record of whole numbers as Redis keeps it: ``1,2,3,4``."""
    return ",".join(str(value) for value in astuple(record))


def _split_ints(text: str, count: int) -> tuple[int, ...]:
    """The numbers of :func:`_join_ints`; exactly ``count`` of them."""
    parts = tuple(int(part) for part in text.split(","))
    if len(parts) != count:
        raise ValueError(f"expected {count} numbers, got {text!r}")
    return parts


@dataclass(frozen=True)
class Counts:
    """Answers of one second (or a sum of seconds)."""

    answers: int = 0
    rate_limited: int = 0
    ok: int = 0
    ok_ms: int = 0
    """Summed answer time of the clean answers, milliseconds."""
    span_ms: int = 0
    """Summed time the heartbeats' counts cover, milliseconds: a second
    holding fewer (or more) beats than there are processes is scaled to one
    beat each (:func:`saturated_rate`)."""

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.answers + other.answers,
            self.rate_limited + other.rate_limited,
            self.ok + other.ok,
            self.ok_ms + other.ok_ms,
            self.span_ms + other.span_ms,
        )

    def encode(self) -> str:
        return _join_ints(self)

    @classmethod
    def decode(cls, text: str) -> Counts:
        # (four numbers: a process of the version before the span)
        return cls(*_split_ints(text, 5 if text.count(",") == 4 else 4))


@dataclass(frozen=True)
class Report:
    """What one process says about one site at each heartbeat."""

    limit: int
    """Its own controller's limit."""
    share: int
    """The share it applies now (0: none yet)."""
    demand: int
    """Requests it has for the site: queued in the slot or in flight."""
    total: int = 0
    """The site's budget it last knew (0: none), to re-seed an empty Redis."""
    rate_mhz: int = 0
    """The site's rate it last knew, thousandths of a request per second
    (0: none), to re-seed an empty Redis paced."""

    def encode(self) -> str:
        return _join_ints(self)

    @classmethod
    def decode(cls, text: str) -> Report:
        numbers = text.count(",") + 1
        # (four numbers: a process of the version before the rate)
        return cls(*_split_ints(text, 5 if numbers == 5 else 4))


@dataclass(frozen=True)
class Budget:
    """One site's budget, as kept in Redis."""

    total: int
    """Requests in flight the site admits from all processes together."""
    changed_at: float
    """Redis time of the last change, seconds."""
    rate: float | None = None
    """Pooled clean answers per second when the 429s last climbed."""
    answer_time: float | None = None
    last_good: int | None = None
    """The clean total a probe was made from (a climb goes back to it)."""
    overload: int | None = None
    """The total that drew 429s; regrown towards after a cut."""
    measured_paced: bool = False
    """The rate was measured at a climb while the processes were paced (then
    it is the site's rate; measured unpaced, at the first climb, it may
    count seconds of the ramp, and it is probed up in bigger steps)."""
    probes: int = 0
    """Rate probes since the last climb: each step of a rate measured
    unpaced doubles, up to four times the first (a rate measured low is
    found again in a few steps)."""
    version: int = 0
    """Bumped by every write (compare-and-set)."""

    def encode(self) -> dict[str, str]:
        return {
            "total": str(self.total),
            "changed_at": repr(self.changed_at),
            "rate": "" if self.rate is None else repr(round(self.rate, 3)),
            "answer_time": ""
            if self.answer_time is None
            else repr(round(self.answer_time, 4)),
            "last_good": "" if self.last_good is None else str(self.last_good),
            "overload": "" if self.overload is None else str(self.overload),
            "measured_paced": "1" if self.measured_paced else "",
            "probes": str(self.probes),
        }

    @classmethod
    def decode(cls, fields: Mapping[str, str]) -> Budget | None:
        """None for a missing or unreadable record (it is re-learned)."""
        try:
            return cls(
                total=max(1, int(fields["total"])),
                changed_at=float(fields["changed_at"]),
                rate=_optional(float, fields.get("rate")),
                answer_time=_optional(float, fields.get("answer_time")),
                last_good=_optional(int, fields.get("last_good")),
                overload=_optional(int, fields.get("overload")),
                measured_paced=bool(fields.get("measured_paced")),
                probes=int(fields.get("probes") or 0),
                version=int(fields.get("version", "0")),
            )
        except (KeyError, ValueError):
            return None


def part_of_rate(budget: Budget, share: int, policy: SharedPolicy) -> float | None:
    """This process's paced sends per second: its share of the total, of the
    site's measured rate less the margin; None before the rate is measured
    (at the first pooled climb)."""
    if budget.rate is None:
        return None
    part = min(1.0, share / max(1, budget.total))
    return max(budget.rate * (1 - policy.pace_margin) * part, 0.1)


def _optional(kind: Callable[[str], Any], text: str | None) -> Any:
    return kind(text) if text else None


def shares(total: int, demands: Mapping[str, int], turn: int = 0) -> dict[str, int]:
    """Split ``total`` among processes: equal parts, but no process gets
    more than its demand (at least 1) and what it leaves goes to the others.

    Deterministic: every process computes the same split from the same
    reports. The remainder of an uneven split goes to the processes in id
    order starting at ``turn`` (modulo their number): the caller rotates it
    so no process is always the one with the extra request.
    """
    wants = {process: max(1, demand) for process, demand in demands.items()}
    given = dict.fromkeys(wants, 0)
    left = max(0, total)
    ordered = sorted(wants)
    if ordered:
        start = turn % len(ordered)
        ordered = ordered[start:] + ordered[:start]
    open_ = ordered
    while left > 0 and open_:
        part, extra = divmod(left, len(open_))
        still_open = []
        handed = 0
        for index, process in enumerate(open_):
            offer = part + (1 if index < extra else 0)
            take = min(offer, wants[process] - given[process])
            given[process] += take
            handed += take
            if given[process] < wants[process]:
                still_open.append(process)
        left -= handed
        if handed == 0:
            break
        open_ = still_open
    return given


def share_of(total: int, demands: Mapping[str, int], me: str, turn: int = 0) -> int:
    """This process's share of ``total`` (at least 1, so it can start)."""
    return max(1, shares(total, demands, turn).get(me, 0))


def pooled(buckets: Mapping[int, Counts], start: float, end: int) -> tuple[Counts, int]:
    """The sum of the whole seconds from ``start`` (rounded up) to ``end``
    (excluded), and how many seconds that spans from the first one with
    answers (a window reaching before anybody answered is not diluted)."""
    first = math.ceil(start)
    seconds = [s for s in buckets if first <= s < end]
    total = sum((buckets[s] for s in seconds), Counts())
    answered = [s for s in seconds if buckets[s].answers]
    span = end - min(answered) if answered else 0
    return total, span


def _climbing(counts: Counts, policy: SharedPolicy) -> bool:
    return (
        counts.answers >= policy.min_samples
        and counts.rate_limited >= policy.min_rate_limited
        and counts.rate_limited > policy.tolerated_share * counts.answers
    )


def _clean(counts: Counts, policy: SharedPolicy) -> bool:
    return counts.rate_limited <= policy.tolerated_share * counts.answers


def next_budget(  # noqa: PLR0911 - one return per rule
    current: Budget | None,
    buckets: Mapping[int, Counts],
    reports: Iterable[Report],
    now: float,
    policy: SharedPolicy,
) -> Budget | None:
    """The site's next budget from the pooled evidence, or None to keep it.

    ``buckets`` are the pooled answers by Redis second, ``reports`` those of
    the live processes, ``now`` Redis time.
    """
    reports = list(reports)
    end = math.floor(now)  # the current second is still filling
    since = now - policy.window_seconds - 1
    first = current is None or opening(current)
    if current is not None:
        if first:
            # The opening's start changed nothing that was sent: every
            # answer since counts, those of its own second too.
            begun = float(math.floor(current.changed_at))
        else:
            begun = current.changed_at + policy.settle_seconds
        since = max(since, begun)
    recent, span = pooled(buckets, since, end)
    if _climbing(recent, policy):
        if first and not _refused_after_first(buckets, since, end):
            # The opening's first second alone: the site's rate is measured
            # on a second after it (saturated_rate). Each process has halved
            # its level at its own first 429 meanwhile: if the seconds after
            # are clean, they say the site admits at least that, not what
            # it admits (cut to them, 42/s on a 50 req/s site, and ten
            # seconds of probing). The processes grow again once the leader
            # has judged them, and their next climb is measured.
            return None
        drew = current
        if current is not None and first:
            # The processes' levels (the most each reached since its last
            # heartbeat) drew the 429s, not the total last written.
            drew = replace(current, total=_levels(current, reports))
        return _cut(
            drew,
            recent,
            saturated_rate(buckets, since, end, len(reports), best=first),
            span,
            reports,
            now,
            policy,
        )
    if current is None:
        return _seed(recent, span, reports, now, policy)
    if first:
        # Never climbed yet: the opening, one slow start shared. Each
        # process grows its own level by one per clean answer between the
        # heartbeats (together as fast as one process's slow start: the
        # heartbeat is too slow to steer it) and halves it at its first
        # 429; it reports the most it reached, and the total follows their
        # sum. The opening's start time stays: a climb is judged on every
        # second since.
        total = _levels(current, reports)
        return replace(current, total=total) if total > current.total else None
    if sum(r.demand for r in reports) < current.total:
        return None  # not used: says nothing about more
    clean, span = pooled(buckets, begun, end)
    # The last few seconds tell whether it is clean now: 429s long past
    # (Redis back, a burst of them as the processes rejoined) held every
    # probe off for the rest of the crawl, the window since the change
    # never clean again.
    lately, _ = pooled(buckets, max(begun, end - policy.window_seconds), end)
    if clean.answers < policy.min_samples or not _clean(lately, policy):
        return None
    return _grown(current, clean, span, now, policy, quiet=not lately.rate_limited)


def _levels(current: Budget, reports: list[Report]) -> int:
    """The opening's total: the sum of the processes' levels."""
    return max(current.total, sum(r.limit for r in reports))


def _grown(
    current: Budget,
    clean: Counts,
    span: int,
    now: float,
    policy: SharedPolicy,
    *,
    quiet: bool = True,
) -> Budget | None:
    """Clean and used since the last change: grown or probed, or None.
    ``quiet``: not one 429 in the last few seconds."""
    waited = now - current.changed_at
    total, rate = current.total, current.rate
    probes = current.probes
    if rate is not None:
        # Paced: the pace holds the sends back, and the total (the room in
        # flight) follows the rate. Grown back towards the level that drew
        # the 429s as well, each step of the total moved the last change on
        # and held the rate's probes off until it was done: measured, a
        # rate cut to 45/s on a 50 req/s site stayed there for 20 s.
        if quiet:
            rate = _probed_rate(current, rate, clean, span, waited, policy)
        probes += rate != current.rate
        if current.answer_time is not None:
            total = max(total, math.floor(rate * current.answer_time))
    elif (
        current.overload is not None
        and current.total + 1 < current.overload
        and waited >= policy.regrow_seconds
    ):
        total += max(1, (current.overload - current.total) // 2)
    if (total, rate) != (current.total, current.rate):
        return replace(current, total=total, rate=rate, probes=probes, changed_at=now)
    if waited >= policy.probe_interval and rate is None:
        # (Paced, the total is room in flight: a probe of it says nothing,
        # and moved the last change on, holding the rate's probes off.)
        return replace(
            current, total=current.total + 1, changed_at=now, last_good=current.total
        )
    return None


def opening(budget: Budget) -> bool:
    """The site's budget has never climbed: no rate measured, no level that
    drew 429s (the shared slow start)."""
    return budget.rate is None and budget.overload is None


def _probed_rate(  # noqa: PLR0917 - the evidence, spelled out
    current: Budget,
    rate: float,
    clean: Counts,
    span: int,
    waited: float,
    policy: SharedPolicy,
) -> float:
    """Paced at the rate measured: held back by the pace (the pooled answers
    since the last change came at about that rate) and clean, probe it a
    step up. Measured while paced, it is the site's rate: one small step now
    and then. Measured at the first climb (unpaced: the ramp's seconds may
    count), bigger steps soon, up to the next climb, which measures it."""
    wait, step = policy.rate_probe_seconds, policy.rate_step
    if not current.measured_paced:
        wait, step = policy.regrow_seconds, policy.first_rate_step
    paced = rate * (1 - policy.pace_margin)
    held = span >= 2 and clean.answers / span >= 0.9 * paced
    if waited >= wait and held:
        # Two whole seconds at the pace, and not one 429 lately (the
        # caller's ``quiet``): a token bucket's burst hides an overshoot for
        # a while, and then refuses a request now and then, within the tolerated share
        # (measured: probes went on past the site's rate, a third above it
        # after the first climb, 12% at the end of a crawl).
        # Each clean step doubles: a rate measured low (the lower of two
        # measures, 8% low in one run) is found again in a few steps, not
        # one small step every few seconds. Up to four times the first for
        # a rate measured paced (2% steps), twice for one measured at the
        # first climb (4%: its first step from a good measure drew 429s).
        most = 2 if current.measured_paced else 1
        return rate * (1 + step * (1 << min(current.probes, most)))
    return rate


def saturated_rate(
    buckets: Mapping[int, Counts],
    start: float,
    end: int,
    processes: int = 0,
    *,
    best: bool = False,
) -> float | None:
    """What the site admits per second: the mean of the clean answers over
    the whole seconds from ``start`` to ``end`` in which it also refused
    some (there it admitted all it would). None when it refused in none.

    The mean over the whole window would count seconds in which the
    processes were still ramping up, and cut too deep: measured with three
    processes, a window of 16 then 50 admitted gave 33/s, a cut to 5 in
    flight, and ten seconds at half the rate growing back."""
    first = math.ceil(start)
    full = [buckets[s] for s in buckets if first <= s < end and buckets[s].rate_limited]
    if not full:
        return None
    if best:
        # The opening's climb: its seconds hold the ramp, and the halved
        # levels after the first 429s, as much as the site's rate: the
        # mean of them was 40/s on a 50 req/s site, and ten seconds of
        # probing up. The site admitted at least its best second, but the
        # first one (an answer time with no answers in it, and the site's
        # burst).
        answered = _answered_seconds(buckets, start, end)
        later = answered[1:] or answered
        return max(_per_second(buckets[s], processes) for s in later)
    ok = sum(c.ok for c in full)
    covered = sum(c.span_ms for c in full) / 1000
    if processes and covered:
        # The clean answers of the time the beats cover, per process: a
        # beat that landed a second late (a slow reply, a busy process)
        # leaves its second a process short and the next one a process
        # long (measured: a site rate of 45 on a 50 req/s site, and the
        # processes paced 10% below it for the rest of the crawl).
        return ok / covered * processes
    return ok / len(full)


def _answered_seconds(
    buckets: Mapping[int, Counts], start: float, end: int
) -> list[int]:
    """The whole seconds from ``start`` to ``end`` with clean answers, in
    order."""
    first = math.ceil(start)
    return sorted(s for s in buckets if first <= s < end and buckets[s].ok)


def _refused_after_first(buckets: Mapping[int, Counts], start: float, end: int) -> bool:
    """Some 429s in a second after the first one with answers."""
    answered = _answered_seconds(buckets, start, end)
    return any(buckets[s].rate_limited for s in answered[1:])


def _per_second(counts: Counts, processes: int) -> float:
    """The clean answers of one second, scaled to one beat per process (the
    time the beats cover)."""
    if processes and counts.span_ms:
        return counts.ok / (counts.span_ms / 1000) * processes
    return float(counts.ok)


def _seed(
    recent: Counts,
    span: int,
    reports: list[Report],
    now: float,
    policy: SharedPolicy,
) -> Budget | None:
    """A cold site's first budget (not climbing), or None to wait."""
    if not reports:
        return None
    known = max(r.total for r in reports)
    if known:
        # Redis came back empty while the processes still know the
        # budget (the first to rejoin cannot tell how many will follow):
        # start again from it, settled, and paced if it was.
        rate = max(r.rate_mhz for r in reports) / 1000 or None
        return Budget(
            total=known,
            changed_at=now,
            rate=rate,
            overload=known + 1,
            measured_paced=rate is not None,
        )
    # A cold site: start where one process's own controller is (not at
    # the sum of all of theirs, which would overshoot N times), or at
    # what the site admits already if more (Little's law on the pooled
    # clean answers: never above what it took), and grow from there as one
    # (the opening: each process grows its part per clean answer). The
    # first heartbeat comes before the first request (the site is joined
    # when its slot is made), so the processes' first volleys together are
    # one process's.
    seed = max(r.limit for r in reports)
    if recent.answers >= policy.min_samples and recent.ok and span:
        admitted = recent.ok / span * (recent.ok_ms / recent.ok / 1000)
        seed = max(seed, math.floor(admitted))
    return Budget(total=max(1, seed), changed_at=now)


def _cut(  # noqa: PLR0917 - the evidence, spelled out
    current: Budget | None,
    recent: Counts,
    saturated: float | None,
    span: int,
    reports: list[Report],
    now: float,
    policy: SharedPolicy,
) -> Budget:
    """The 429s climbed: go to what the site admitted, in one step."""
    rate = saturated if saturated is not None else (recent.ok / span if span else None)
    if current is not None and current.rate is not None and recent.answers:
        # Paced: the processes sent at the pace, and the site admitted the
        # climb's share of clean answers of it. A ratio, so no second short
        # of a beat (or long of one) moves it: never more than that (the
        # processes send a little below their pace: measured, the ratio
        # alone was 6% above the site's rate). The lower of the two may be
        # a little low: the probes after it grow (_probed_rate).
        admitted = current.rate * (1 - policy.pace_margin) * recent.ok / recent.answers
        rate = admitted if rate is None else min(rate, admitted)
    answer_time = recent.ok_ms / recent.ok / 1000 if recent.ok else None
    drew = current.total if current is not None else sum(r.limit for r in reports) or 1
    if rate is not None and answer_time is not None:
        estimate = math.floor(rate * answer_time)
    else:
        estimate = drew * recent.ok // max(1, recent.answers)
    target = min(drew - 1, estimate)
    if (
        current is not None
        and current.last_good is not None
        and current.last_good < current.total
    ):
        # The 429s followed a probe from a clean total: go back there.
        target = max(target, current.last_good)
    return Budget(
        total=max(1, target),
        changed_at=now,
        rate=rate,
        answer_time=answer_time,
        last_good=None,
        overload=drew,
        measured_paced=current is not None and current.rate is not None,
        version=current.version if current is not None else 0,
    )


# -- Redis (thin I/O) ---------------------------------------------------------

# One hash per site holds everything, so a heartbeat is one read and one
# write: the budget's fields (``total``, ``version``, ...), a field per live
# process (``p:<process>`` = ``<lease end, Redis ms>,<report>``) and a field
# per second of pooled answers (``s:<Redis second>`` = ``<counts>``).
# Redis counts every command a script runs (INFO commandstats): a beat is
# EVALSHA, TIME, HGETALL and one HSET; one process in five seconds also
# prunes (one HDEL) and refreshes the expiry (one EXPIRE), and a new hash
# gets its expiry once.
#
# KEYS: the site's hash. ARGV: process, lease ms, report, counts, keep
# seconds, expire seconds (no budget yet), expire seconds (with a budget).
# Returns Redis time (ms) and the hash's fields as HGETALL gives them, with
# this beat's own writes appended (later fields win).
_BEAT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now_ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local bucket = 's:' .. sec
local oldest = sec - tonumber(ARGV[5])
local function numbers(text)
  local t = {}
  for n in string.gmatch(text, '%d+') do t[#t + 1] = tonumber(n) end
  return t
end
local counts = numbers(ARGV[4])
local stale = {}
local budget = false
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  local kind = string.sub(f, 1, 2)
  if f == bucket then
    local old = numbers(v)
    for j = 1, #counts do counts[j] = counts[j] + (old[j] or 0) end
  elseif kind == 's:' then
    if (tonumber(string.sub(f, 3)) or 0) < oldest then stale[#stale + 1] = f end
  elseif kind == 'p:' then
    local ends = tonumber(string.match(v, '^(%d+),') or '0')
    if ends <= now_ms then stale[#stale + 1] = f end
  elseif f == 'total' then
    budget = true
  end
end
local set = {'p:' .. ARGV[1], (now_ms + tonumber(ARGV[2])) .. ',' .. ARGV[3]}
-- Every beat, with answers or not: the time it covers counts too.
set[3] = bucket
set[4] = table.concat(counts, ',')
redis.call('HSET', KEYS[1], unpack(set))
local ttl = budget and ARGV[7] or ARGV[6]
if #all == 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
elseif sec % 5 == 0 and #stale > 0 then
  -- One process in five seconds prunes (whoever beats first then) and
  -- keeps the hash from expiring while the site is crawled.
  redis.call('HDEL', KEYS[1], unpack(stale))
  redis.call('EXPIRE', KEYS[1], ttl)
end
for i = 1, #set do all[#all + 1] = set[i] end
return {tostring(now_ms), all}
"""

# KEYS: the site's hash. ARGV: expected version, expire seconds, field,
# value... (the budget's own fields only: the leases and buckets stay).
_WRITE = """
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
local kv = {}
for i = 3, #ARGV do kv[#kv + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'version', v + 1, unpack(kv))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return v + 1
"""

_PROCESS = "p:"
_SECOND = "s:"


@dataclass(frozen=True)
class Snapshot:
    """What one heartbeat read back for one site."""

    now: float
    """Redis time, seconds."""
    reports: dict[str, Report]
    """The live processes (leases not expired), this one included."""
    buckets: dict[int, Counts]
    budget: Budget | None


def parse_site(fields: Mapping[str, str], now_ms: int) -> Snapshot:
    """A site's hash as :data:`_BEAT` returns it: the live processes' reports
    (leases not yet ended), the pooled seconds, the budget. Unreadable
    entries are skipped (a process of another version, a damaged field)."""
    reports: dict[str, Report] = {}
    buckets: dict[int, Counts] = {}
    budget: dict[str, str] = {}
    for name, value in fields.items():
        try:
            if name.startswith(_PROCESS):
                ends, _, report = value.partition(",")
                if int(ends) > now_ms:
                    reports[name[len(_PROCESS) :]] = Report.decode(report)
            elif name.startswith(_SECOND):
                buckets[int(name[len(_SECOND) :])] = Counts.decode(value)
            else:
                budget[name] = value
        except ValueError:
            continue
    return Snapshot(
        now=now_ms / 1000,
        reports=reports,
        buckets=buckets,
        budget=Budget.decode(budget) if budget else None,
    )


class RedisStore:
    """The Redis side: one client, two scripts, one hash per site. Every
    method blocks (call it from a thread) and raises ``redis.RedisError`` /
    ``OSError``."""

    def __init__(self, config: SharedStateConfig, policy: SharedPolicy) -> None:
        try:
            import redis  # noqa: PLC0415 - the optional extra
            from redis.backoff import NoBackoff  # noqa: PLC0415
            from redis.retry import Retry  # noqa: PLC0415
        except ImportError:
            raise JustProxiesConfigError(
                "JUSTPROXIES_SHARED_STATE needs redis-py: pip install "
                "'scrapy-justproxies[redis]' (or unset JUSTPROXIES_SHARED_STATE)."
            ) from None
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.config = config
        self.policy = policy
        # No retries inside redis-py: the heartbeat is the retry, and a beat
        # must never hold the thread for long.
        self.client = redis.Redis(
            host=config.host,
            port=config.port,
            db=config.db,
            username=config.username,
            password=config.password.reveal() or None,
            ssl=config.tls,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            client_name="scrapy-justproxies",
        )
        self._beat = self.client.register_script(_BEAT)
        self._write = self.client.register_script(_WRITE)

    def __repr__(self) -> str:
        return f"RedisStore({self.config.url})"

    def key(self, site: str) -> str:
        """The site's hash (its name is its own hash tag: Redis Cluster)."""
        return f"{self.config.prefix}:{{{site}}}"

    def ping(self) -> None:
        self.client.ping()

    def beat(
        self,
        site: str,
        process: str,
        report: Report,
        counts: Counts,
        budget_ttl: float,
    ) -> Snapshot:
        lease_ms = int(self.policy.lease_seconds * 1000)
        now_ms, flat = self._beat(
            keys=[self.key(site)],
            args=[
                process,
                lease_ms,
                report.encode(),
                counts.encode(),
                self.policy.keep_seconds,
                max(60, int(self.policy.keep_seconds * 2)),
                max(60, int(budget_ttl)),
            ],
        )
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return parse_site(fields, int(now_ms))

    def write(self, site: str, budget: Budget, expected: int, ttl: float) -> int:
        """The new version, or -1 if another process wrote first."""
        flat = [item for pair in budget.encode().items() for item in pair]
        return int(
            self._write(
                keys=[self.key(site)],
                args=[expected, max(60, int(ttl)), *flat],
            )
        )

    def budget(self, site: str) -> Budget | None:
        """The site's budget alone (after a lost compare-and-set)."""
        fields = self.client.hgetall(self.key(site))
        return parse_site({str(k): str(v) for k, v in fields.items()}, 0).budget

    def leave(self, site: str, process: str) -> None:
        self.client.hdel(self.key(site), _PROCESS + process)

    def close(self) -> None:
        self.client.close()


# -- the Scrapy glue ------------------------------------------------------------


@dataclass
class _Site:
    """This process's view of one site's shared budget."""

    counts: Counts = Counts()
    """Answers since the last heartbeat."""
    share: int | None = None
    total: int | None = None
    pace: float | None = None
    """This process's part of the site's paced rate, sends per second."""
    rate: float | None = None
    """The site's rate, as the budget says."""
    answer_time: float | None = None
    processes: int = 0
    idle_beats: int = 0
    leased: bool = False
    beating: bool = False
    since: float | None = None
    """When the last heartbeat's counts were taken (monotonic)."""
    log_share: int | None = None
    joining: bool = False
    """Its first heartbeat is out: the slot sends one request at a time
    until the share is known (a few milliseconds)."""
    level: int | None = None
    """While the site's budget is in its opening: this process's own limit,
    grown by one per clean answer from its share (None: not opening)."""
    peak: int = 0
    """The highest ``level`` since the last heartbeat (reported)."""
    halted: int = 0
    """Heartbeats since a 429 in the opening halved ``level`` (0: not
    halted): it grows again once the leader has judged that second and
    found no climb (a climb ends the opening)."""
    halved_at: float = 0.0
    """When ``level`` was last halved (monotonic)."""
    version: int = -1
    """The budget's version last applied."""


@dataclass
class _BeatResult:
    site: str
    share: int | None = None
    total: int | None = None
    pace: float | None = None
    rate: float | None = None
    answer_time: float | None = None
    processes: int = 0
    wrote: Budget | None = None
    old_total: int | None = None
    error: str | None = None
    left: bool = False
    offset: float | None = None
    """Redis's clock minus this process's wall clock at the reply."""
    opening: bool = False
    """The budget has never climbed (:func:`opening`)."""
    version: int = -1


@dataclass(repr=False)
class SharedBudgets:
    """Scrapy glue: made by the throttle when ``JUSTPROXIES_SHARED_STATE`` is
    set. The throttle asks :meth:`effective` for each slot's limit and tells
    :meth:`record` each answer; the heartbeat runs on a thread of its own."""

    crawler: Crawler
    config: SharedStateConfig
    store: RedisStore
    guard: SlotGuard
    local_limit: Callable[[str], int]
    """The slot's own controller's limit (the throttle's)."""
    budget_ttl: float
    policy: SharedPolicy = field(default_factory=SharedPolicy)
    take_over: Callable[[str, int, float | None, float | None], None] = (
        lambda key, limit, rate, answer_time: None
    )
    """Called when Redis goes away, per site with a share: the slot's own
    controller restarts from that share, paced at this process's part of the
    site's rate if it was paced (the throttle's)."""
    process: str = field(
        default_factory=lambda: (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        )
    )
    sites: dict[str, _Site] = field(default_factory=dict)
    reachable: bool = True
    _pool: ThreadPool | None = None
    _loop: Any = None
    """The next heartbeat's delayed call."""
    _offset: float | None = None
    """Redis's clock minus this process's wall clock, seconds."""
    _closing: bool = False
    _rejoined_at: float | None = None
    """When Redis was last reachable again after an outage (monotonic)."""
    maximum: int = 1_000_000
    """The highest limit a slot may grow to in the opening (the
    controller's maximum)."""

    @classmethod
    def from_crawler(
        cls,
        crawler: Crawler,
        config: SharedStateConfig,
        guard: SlotGuard,
        local_limit: Callable[[str], int],
        *,
        tolerated_share: float,
        budget_ttl: float,
        take_over: Callable[[str, int, float | None, float | None], None] | None = None,
        maximum: int | None = None,
    ) -> SharedBudgets:
        from scrapy import signals  # noqa: PLC0415

        policy = SharedPolicy(tolerated_share=tolerated_share)
        store = RedisStore(config, policy)
        shared = cls(
            crawler, config, store, guard, local_limit, budget_ttl, policy=policy
        )
        if take_over is not None:
            shared.take_over = take_over
        if maximum is not None:
            shared.maximum = maximum
        try:
            store.ping()
        except store.errors as exc:
            reason = shared._scrub(exc)
            if config.required:
                raise JustProxiesConfigError(
                    f"JUSTPROXIES_SHARED_STATE: cannot reach Redis at {config.url} "
                    f"({reason}). Start it, fix the URL, or set "
                    "JUSTPROXIES_SHARED_STATE_REQUIRED = False to crawl with this "
                    "process's own budgets until it can be reached."
                ) from None
            shared.reachable = False
            shared._inc("justproxies/shared/unreachable")
            logger.warning(
                "JustProxies: cannot reach the shared state at %s (%s); crawling "
                "with this process's own budgets and retrying every %.0f s "
                "(JUSTPROXIES_SHARED_STATE_REQUIRED = False).",
                config.url, reason, policy.beat_seconds,
            )  # fmt: skip
        crawler.signals.connect(shared._start, signals.engine_started)
        crawler.signals.connect(shared._stop, signals.spider_closed)
        logger.info(
            "JustProxies: budgets shared through %s as process %s",
            config.url, shared.process,
        )  # fmt: skip
        return shared

    def __repr__(self) -> str:
        return f"SharedBudgets({self.config.url}, process={self.process!r})"

    # -- hooks for the throttle --------------------------------------------------

    def effective(self, key: str, local: int) -> int:
        """The limit a slot gets: its share of the site's budget once there is
        one, else its own controller's. While Redis is away, the last share
        caps the slot and the process's own controller may take it lower:
        nobody else is judging the site meanwhile."""
        site = self.sites.get(key)
        if site is None:
            site = self._join(key, local)
        if site is None or site.share is None:
            return 1 if site is not None and site.joining else local
        if not self.reachable:
            return min(site.level or site.share, local)
        if site.level is not None:
            return site.level  # the opening: this process's part of it
        if site.pace is not None:
            # Paced: the pace holds the sends back; the share of in-flight
            # requests only has to leave it room when answers slow down.
            headroom = math.ceil(site.share * self.policy.pace_headroom) + 1
            return max(site.share, headroom)
        return site.share

    def pace(self, key: str) -> float | None:
        """Seconds between this process's sends to the site while the shared
        budget governs it and the site's rate is known, else None."""
        site = self.sites.get(key)
        if not self.governs(key) or site is None or not site.pace:
            return None
        return 1.0 / site.pace

    def governs(self, key: str) -> bool:
        """The slot's limit is its share of the site's budget (Redis is
        reachable and the site has one): its own controller's pace is off."""
        site = self.sites.get(key)
        return self.reachable and site is not None and site.share is not None

    def record(self, key: str, rate_limited: bool, ok: bool, seconds: float) -> None:
        """One answer (not an ignored failure) on slot ``key``."""
        site = self.sites.get(key)
        if site is None:
            site = self.sites[key] = _Site(since=time.monotonic())
        site.counts = site.counts + Counts(
            answers=1,
            rate_limited=int(rate_limited),
            ok=int(ok),
            ok_ms=round(seconds * 1000) if ok else 0,
        )
        if site.level is not None and self.reachable:
            self._open(key, site, rate_limited=rate_limited, ok=ok, seconds=seconds)

    def _open(
        self, key: str, site: _Site, *, rate_limited: bool, ok: bool, seconds: float
    ) -> None:
        """The opening (the site's budget never climbed): one slow start
        shared by the processes. Each grows its own level by one per clean
        answer while it has the work for it, as one process's own slow
        start does (the sum doubles every answer time, as one process's
        would), and halves it at its first 429 (slow start doubled it in
        the answer time that 429 took to come back) and stops growing, until
        the leader has judged the pooled seconds: a climb cuts the total to
        what the site admitted, and measures its rate. A 429 to a request
        sent after the halving halves it again: the leader judges whole
        seconds, a second or two after the first 429, and half the level
        that drew it was still above the site's rate in one run out of two
        (measured: 30 429s over three seconds before the cut)."""
        assert site.level is not None
        if rate_limited:
            now = time.monotonic()
            if not site.halted or now - seconds > site.halved_at:
                site.halted, site.halved_at = 1, now
                site.level = max(1, math.ceil(site.level / 2))
                self.guard.set_concurrency(key, site.level)
            return
        if not ok or site.halted or site.level >= self.maximum:
            return
        if self._demand(key) <= site.level:
            return  # no more work than that: more would not be used
        site.level += 1
        site.peak = max(site.peak, site.level)
        self.guard.set_concurrency(key, site.level)

    def _join(self, key: str, local: int) -> _Site | None:
        """A site seen for the first time (its slot is being made): its first
        heartbeat goes out now, before its first request, so the processes
        share one opening rather than each sending its own."""
        if self._pool is None or self._closing or not self.reachable:
            return None
        site = self.sites[key] = _Site(since=time.monotonic(), joining=True)
        report = Report(limit=local, share=0, demand=self._demand(key))
        site.leased = True
        self._dispatch(key, site, self._beat_io, key, report, Counts())
        return site

    # -- the heartbeat -----------------------------------------------------------

    def _start(self) -> None:
        from twisted.internet import reactor  # noqa: PLC0415
        from twisted.python.threadpool import ThreadPool  # noqa: PLC0415

        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="justproxies-shared")
        self._pool.start()
        # (zope interface stubs: mypy reads the first argument as self)
        reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool)  # type: ignore[arg-type]
        self._schedule()

    def _schedule(self) -> None:
        from .slots import call_later  # noqa: PLC0415

        self._loop = call_later(self._next_beat_in(), self._tick)

    def _next_beat_in(self) -> float:
        """Seconds to the next heartbeat: the middle of the next Redis second
        once Redis's clock is known. Every process then reports in the
        middle of a second what it saw in the second before, so each pooled
        bucket holds one second of every process: not two of one and none
        of another, which made a second look half as busy as it was
        (measured: a first rate of 23 requests per second on a 50 req/s
        site)."""
        beat = self.policy.beat_seconds
        if self._offset is None or beat != 1.0:
            return beat
        now = time.time() + self._offset
        return math.floor(now - 0.5) + 1.5 - now

    def _tick(self) -> None:
        self._loop = None
        if self._closing:
            return
        try:
            self._beat()
        finally:
            self._schedule()

    def _demand(self, key: str) -> int:
        return self.guard.demand(key)

    def _beat(self) -> None:
        """Once a second: a heartbeat per site with requests or answers, and
        a leave for a site idle for a lease time."""
        for key, site in list(self.sites.items()):
            if site.beating:
                continue  # the last one is still out (Redis slow)
            demand = self._demand(key)
            counts, site.counts = site.counts, Counts()
            now = time.monotonic()
            if site.since is not None:
                covered = round((now - site.since) * 1000)
                counts = replace(counts, span_ms=max(0, covered))
            site.since = now
            site.idle_beats = 0 if demand or counts.answers else site.idle_beats + 1
            if site.halted:
                # Judged by now (the second of the 429 and the one after):
                # a climb would have ended the opening.
                site.halted = 0 if site.halted > 2 else site.halted + 1
            if site.idle_beats > self.policy.lease_beats:
                if site.leased and self.reachable:
                    site.leased = False
                    self._dispatch(key, site, self._leave_io, key)
                elif (
                    not site.leased
                    and site.idle_beats * self.policy.beat_seconds >= IDLE_SECONDS
                ):
                    # Left and idle as long as the throttle evicts after: a
                    # broad crawl must not keep (and visit) every site it saw.
                    # It rejoins at its next answer.
                    del self.sites[key]
                continue
            limit = self.local_limit(key)
            if site.level is not None:
                # The opening: the most this process reached since the
                # last heartbeat (the level that drew any 429s).
                limit, site.peak = max(site.peak, site.level), site.level
            report = Report(
                limit=limit,
                share=site.share or 0,
                demand=demand,
                total=site.total or 0,
                rate_mhz=round((site.rate or 0) * 1000),
            )
            site.leased = True
            self._dispatch(key, site, self._beat_io, key, report, counts)

    def _dispatch(
        self, key: str, site: _Site, io: Callable[..., Any], *args: Any
    ) -> None:
        from twisted.internet import reactor  # noqa: PLC0415
        from twisted.internet.threads import deferToThreadPool  # noqa: PLC0415

        if self._pool is None:
            return
        site.beating = True
        d: Deferred[_BeatResult] = deferToThreadPool(
            reactor,
            self._pool,
            io,
            *args,
        )

        def done(result: _BeatResult) -> None:
            site.beating = False
            self._applied(key, site, result)

        def failed(failure: Any) -> None:  # a bug, not Redis: say so, go on
            site.beating = False
            logger.error(
                "JustProxies: shared state heartbeat failed: %s",
                failure.getTraceback(),
            )

        d.addCallback(done)
        d.addErrback(failed)

    def _beat_io(self, key: str, report: Report, counts: Counts) -> _BeatResult:
        """On the heartbeat thread: report, read back, decide if leader."""
        try:
            snap = self.store.beat(key, self.process, report, counts, self.budget_ttl)
            budget = snap.budget
            result = _BeatResult(
                key, processes=len(snap.reports), offset=snap.now - time.time()
            )
            if snap.reports and min(snap.reports) == self.process:
                new = next_budget(
                    budget, snap.buckets, snap.reports.values(), snap.now, self.policy
                )
                if new is not None:
                    expected = budget.version if budget is not None else 0
                    version = self.store.write(key, new, expected, self.budget_ttl)
                    if version >= 0:
                        result.old_total = budget.total if budget else None
                        budget = result.wrote = replace(new, version=version)
                    elif budget is None:
                        # Another process seeded it in the same instant.
                        budget = self.store.budget(key)
            if budget is not None:
                demands = {p: r.demand for p, r in snap.reports.items()}
                demands.setdefault(self.process, report.demand)
                result.total = budget.total
                # The odd request of an uneven split changes hands every
                # rotate_seconds (Redis time: the same turn for everybody).
                turn = int(snap.now // self.policy.rotate_seconds)
                result.share = share_of(budget.total, demands, self.process, turn)
                result.pace = part_of_rate(budget, result.share, self.policy)
                result.rate = budget.rate
                result.answer_time = budget.answer_time
                result.opening = opening(budget)
                result.version = budget.version
            return result
        except self.store.errors as exc:
            return _BeatResult(key, error=self._scrub(exc))

    def _leave_io(self, key: str) -> _BeatResult:
        try:
            self.store.leave(key, self.process)
        except self.store.errors as exc:
            return _BeatResult(key, error=self._scrub(exc), left=True)
        return _BeatResult(key, left=True)

    def _applied(self, key: str, site: _Site, result: _BeatResult) -> None:
        """Back on the reactor thread."""
        joined, site.joining = site.joining, False
        self._take(key, site, result)
        if joined:  # its slot sent one request at a time meanwhile
            self.guard.set_concurrency(key, self.effective(key, self.local_limit(key)))

    def _take(self, key: str, site: _Site, result: _BeatResult) -> None:
        if result.error is not None:
            self._inc("justproxies/shared/errors")
            if self.reachable:
                self.reachable = False
                self._inc("justproxies/shared/unreachable")
                for name, known in self.sites.items():
                    if known.share is not None:
                        self.take_over(
                            name, known.level or known.share, known.pace,
                            known.answer_time,
                        )  # fmt: skip
                logger.warning(
                    "JustProxies: the shared state at %s is unreachable (%s); each "
                    "process keeps its last share and its own controller, and "
                    "retries every %.0f s.",
                    self.config.url, result.error, self.policy.beat_seconds,
                )  # fmt: skip
            return
        if not self.reachable:
            self.reachable = True
            self._rejoined_at = time.monotonic()
            logger.info(
                "JustProxies: the shared state at %s is reachable again; "
                "rejoining the shared budgets.",
                self.config.url,
            )  # fmt: skip
        self._inc("justproxies/shared/heartbeats")
        if result.offset is not None:
            aligned, self._offset = self._offset is not None, result.offset
            if not aligned and self._loop is not None and self._loop.active():
                # Redis's clock is known now (a site's first heartbeat, on
                # joining): the next beat in the middle of its next second,
                # not a beat time after the start, which put two beats of
                # one process in one second and scaled it low.
                self._loop.cancel()
                self._schedule()
        if result.left or self._closing:
            return
        if result.wrote is not None:
            self._inc("justproxies/shared/budget_changes")
            rate = result.wrote.rate
            logger.info(
                "JustProxies: %s shared budget %s -> %d (%d processes)%s",
                key, result.old_total if result.old_total is not None else "none",
                result.wrote.total, result.processes,
                "" if rate is None else f", site rate {rate:.1f}/s",
            )  # fmt: skip
        site.processes = result.processes
        self._max("justproxies/shared/processes_max/" + key, result.processes)
        if result.share is not None:
            self._take_share(key, site, result, result.share)

    def _take_share(
        self, key: str, site: _Site, result: _BeatResult, share: int
    ) -> None:
        old = self.effective(key, self.local_limit(key))
        pace = result.pace
        if self._rejoining() and site.share is not None and share > site.share:
            # Redis came back empty and the processes rejoin a heartbeat
            # apart: the first back sees only itself and gets the whole
            # budget, the second half of it... (measured: 15-31 429s in the
            # second they rejoined). Until all are back, a lease time, no
            # more than the share this process held through the outage.
            if pace is not None:
                pace *= site.share / share
            share = site.share
        site.share, site.total = share, result.total
        site.pace, site.rate = pace, result.rate
        site.answer_time = result.answer_time
        if not result.opening:
            site.level, site.halted = None, 0
        elif site.level is None:
            site.level = site.peak = share  # the first share: start there
        elif not site.halted and result.version != site.version:
            site.level = max(site.level, share)
            site.peak = max(site.peak, site.level)
        site.version = result.version
        self._set("justproxies/shared/share/" + key, share)
        self._set("justproxies/shared/site_limit/" + key, result.total)
        new = self.effective(key, self.local_limit(key))
        if new != old:
            self.guard.set_concurrency(key, new)

    def _rejoining(self) -> bool:
        """Within a lease time of Redis being reachable again after an
        outage: the processes' reports are not all back yet."""
        return (
            self._rejoined_at is not None
            and time.monotonic() - self._rejoined_at < self.policy.lease_seconds
        )

    # -- close ---------------------------------------------------------------------

    async def _stop(self) -> None:
        """Stop beating and give the leases back, so the others take the
        shares at once rather than after a lease time."""
        from scrapy.utils.defer import maybe_deferred_to_future  # noqa: PLC0415
        from twisted.internet import reactor  # noqa: PLC0415
        from twisted.internet.threads import deferToThreadPool  # noqa: PLC0415

        self._closing = True
        if self._loop is not None and self._loop.active():
            self._loop.cancel()
        self._loop = None
        pool = self._pool
        if pool is None or pool.joined:
            return
        leased = [key for key, site in self.sites.items() if site.leased]

        def leave_all() -> None:
            for key in leased:
                self._leave_io(key)
            self.store.close()

        d: Deferred[None] = deferToThreadPool(reactor, pool, leave_all)
        try:
            await maybe_deferred_to_future(d)
        finally:
            self._stop_pool()

    def _stop_pool(self) -> None:
        if self._pool is not None and not self._pool.joined:
            self._pool.stop()

    # -- helpers ---------------------------------------------------------------------

    def _scrub(self, exc: BaseException) -> str:
        text = f"{exc.__class__.__name__}: {exc}"
        password = self.config.password.reveal()
        return text.replace(password, "***") if password else text

    def _inc(self, key: str) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(key)

    def _set(self, key: str, value: Any) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.set_value(key, value)

    def _max(self, key: str, value: Any) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.max_value(key, value)
