"""Per-domain concurrency control driven by the target's 429 rate.

The provider's guide: "Start at the low end, watch your 429 rate, and increase
by 25% until it starts climbing. The optimal concurrency is just below the
point where the target rate-limits you." This module does that per domain,
for the whole crawl, because sites change their limits while a crawl runs.

It is pure and stdlib-only: no Scrapy, no clock reads, no global state. Time
is a float the caller passes in, so the same samples always give the same
decisions (the simulation tests rely on that). The shape follows Netflix's
concurrency-limits: :class:`Evidence` gathers what the answers say (the
window, the epoch filter, the CUSUM, recent answers, the admitted rate and
the answer time), as ``WindowedLimit`` does, and :class:`DomainController`
decides from it; small pure functions hold the arithmetic.

Samples in, decisions out::

    ctl = DomainController(ControllerSettings(start=8, maximum=50), now=t0)
    ticket = ctl.on_sent(now, inflight)          # when a request goes out
    ctl.record(ticket, Outcome.OK, now)          # when its answer comes back
    decision = ctl.decide(now)                   # None, or a judged window
    if decision is not None and decision.changed:
        slot.concurrency = decision.new_limit
    ctl.learned(wall_time)                       # what to remember (Learned)

Phases (:class:`Phase`, changed only in ``DomainController._enter``):

* ``SLOW_START``: the first volley is small (``slow_start``) and grows by one
  per clean answer, doubling every answer time, so the crawl does not open
  with a burst of 429s at a site that admits far less than the preset's
  start; on a site with no limit it reaches ``maximum`` in a few answer times.
  With ``slow_start_until`` it doubles only up to that multiple of ``start``
  and grows on at the normal pace (``GROW``), as the provider's guide says.
* The 429 share climbs (a one-sided CUSUM: every answer adds 1 if it was a
  429, minus ``tolerated_share``; it fires above ``trigger_excess``): go in
  one step to what the site admitted, by Little's law: clean answers per
  second over the last ``memory_seconds`` times their answer time. With too
  few clean answers to measure that, cut by the share of 429s instead
  (:func:`backoff_target`). Then ``SETTLED``: the limit grows back at half
  pace towards the level that drew the 429s (the *overload level*, learned;
  ``settings.maximum`` is the configured one) and stops one below it.
* Settled long enough (``probe_interval``, ``probe_samples``): ``PROBE`` one
  step up; it must stay clean ``probe_seconds``. ``probes_to_grow`` clean
  probes mean the site admits more: ``GROW`` at the normal pace
  (``increase_factor`` per clean, used window).
* ``PACED`` (``rate_pacing``, the default): after the first climb a site
  is taken to limit requests per second until the evidence says otherwise.
  Sends are paced at the rate it admitted, less ``pace_margin`` (a token
  bucket sent less than its rate refuses nothing, whatever the answer
  time or the concurrency); the concurrency is what that rate keeps in
  flight with ``pace_headroom``, so it follows the answer time; the rate
  is probed up in small steps (``pace_step``) near the rate measured, and
  in steps that double up to 25% beyond it (a raised limit); the first 429
  to a probe ends it (but past the near steps on a window limiter, where a
  climb measures). Once a probe's 429 has measured the rate (the opening is
  over), the probes wait less after a cut and their steps grow sooner, so
  a limit raised 2.5-fold is found within about 15 s behind a hop. A climb
  measures the rate
  again (the pace times the climb's share of clean answers). 429s sent
  while the concurrency, not the pace, was binding mean an in-flight cap:
  back to ``SETTLED``, unpaced. A warm start with a learned rate starts
  here, so its first volley is paced too.
* The crawl's first climb on a site (slow start's, as a rule) paces at the
  rate slow start measured, but until a request sent after that climb's
  first 429 is admitted: a token bucket admits most of such a pace, and
  nothing changes; a window limiter whose count slow start spent refuses
  all of it until the window frees, so after three such 429s only a
  trickle of probes goes out, and once one is admitted the site is paced
  at what it admitted over the whole span, closed time included (a
  sliding window of 100 per 2 s: about 50/s, not the 110/s of its burst).
  On a site seen closed so, a paced climb is held the same way when
  nothing sent after its first 429 was admitted by then (a fixed window
  whose count the pace spent before the window's end); a closed site
  (probes refused, or nothing admitted for a second after the first 429:
  a ``Retry-After`` that held
  the slot) is then paced at what it admitted over the whole cycle, from
  the last time it reopened: a fixed window's count over its length, not
  a halving. Once seen closed, its pace is probed up in small steps only,
  and a probe's first 429 is held too (it may be the window running out).
* Evidence counts per epoch: a request sent before a limit change, or
  within ``backoff_settle_seconds`` after a backoff, says nothing about the
  new level.

Rate and concurrency are kept apart: the controller remembers the admitted
*rate* and the answer time the level was derived at. Two climbs at answer
times that differ by ``answer_time_shift`` tell the kind of limit
(:class:`LimitKind`): the same rate means requests per second, the same
level requests in flight. When the answer time moves, a rate-limited site's
level is derived again from its rate at once (``REDERIVE``); an in-flight
cap's stays. An unknown kind is only re-derived upwards (a wrong guess costs
one climb). Behind a hop (429s that come back faster than any clean answer:
their time is the hop's), an in-flight cap counts the site's part of the
answer time only, so the kind is told by that part, and a paced in-flight
cap whose answers get slower has its pace cut at once by it. Paced with
the kind unknown, answers that get much faster are probed towards what an
in-flight cap admits at them (halfway each step, at most 25%).

Known limit: 429s the site sends whatever the load (a share of exits
blocked, say) look like a climbing share once above ``tolerated_share``
and walk the limit down; raise ``tolerated_share`` for such sites.
"""

from __future__ import annotations

import enum
import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TypeVar

__all__ = [
    "ControllerSettings",
    "ControllerSettingsError",
    "Decision",
    "DomainController",
    "Evidence",
    "Learned",
    "LimitKind",
    "Outcome",
    "Phase",
    "Reason",
    "Ticket",
    "admitted_level",
    "backoff_target",
    "clamp",
    "cusum_step",
    "grow",
    "regrow",
]


class Outcome(str, enum.Enum):
    """What an answer says about the site's limit."""

    OK = "ok"
    """The site answered and did not rate-limit (any status but 429)."""
    RATE_LIMITED = "rate_limited"
    """The site answered 429 Too Many Requests."""
    IGNORED = "ignored"
    """Says nothing about the site's limit: a gateway-side failure, a
    timeout, a cancelled request. Never lowers (or raises) the limit."""


class Reason(str, enum.Enum):
    """Why a judged window ended the way it did."""

    INCREASE = "increase"
    """Clean and used: grown (by ``increase_factor``, half that below a
    ceiling estimate; at least +1)."""
    PROBE = "probe"
    """Settled below the ceiling estimate long enough: one step up."""
    BACKOFF = "backoff"
    """The 429 share climbed: cut towards the last good level."""
    HOLD = "hold"
    """No change: waiting to probe, at the ceiling, or 429s above the
    tolerated share but not (yet) climbing."""
    IDLE = "idle"
    """Clean, but the limit was not used, so nothing was learned."""
    REDERIVE = "rederive"
    """The answer time moved on a rate-limited site: the level was derived
    again from the learned rate."""


class ControllerSettingsError(ValueError):
    """A :class:`ControllerSettings` field has an invalid value.

    ``field`` names the dataclass field, so a caller can map it to the
    setting the user wrote.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field


@dataclass(frozen=True)
class ControllerSettings:
    """How one domain's limit moves. Validated on creation."""

    start: int
    """Limit before any evidence (the low end of the pool's range)."""
    maximum: int
    """Highest limit ever set: the configured maximum (the high end of the
    pool's range). Not to be confused with the learned
    :attr:`DomainController.overload_level`."""
    floor: int = 1
    """Lowest limit ever set."""
    increase_factor: float = 1.25
    """Growth per clean, used window (rounded up, at least +1)."""
    decrease_factor: float = 0.5
    """Deepest single backoff: never below ``limit * decrease_factor``."""
    window_seconds: float = 1.0
    """Shortest window judged for an increase or a probe."""
    min_samples: int = 20
    """Fewest non-ignored answers a window needs before it is judged."""
    tolerated_share: float = 0.02
    """429 share that counts as noise, not as the site pushing back."""
    trigger_excess: float = 3.0
    """429s above the tolerated share (CUSUM) that mean it is climbing."""
    min_utilization: float = 0.8
    """Mean in-flight at send, as a share of the limit, that counts as used."""
    probe_interval: float = 5.0
    """Seconds settled below the ceiling estimate before probing above it."""
    probe_samples: int = 100
    """Fewest answers at the settled level before probing, too: at a low
    rate a probe costs a larger share of the answers, so it waits longer."""
    probe_seconds: float = 3.0
    """Shortest time a probe must stay clean to count as a success (a
    token bucket's burst hides a slight overload for a few seconds)."""
    probes_to_grow: int = 2
    """Clean probes in a row after which the estimate is dropped."""
    backoff_settle_seconds: float = 1.0
    """After a backoff, requests sent within this time (or two answer times,
    if shorter) are not evidence: the site is still paying back the overload
    (a token bucket left empty), so 429s there would blame the new, lower
    level for the old one."""

    slow_start: int = 4
    """Limit of the very first volley: it grows by one per clean answer (it
    doubles every answer time, as TCP's slow start) until the 429s climb or
    it reaches ``maximum``. 0 turns slow start off (the first volley is
    ``start`` requests at once)."""
    slow_start_gain: float = 1.0
    """Growth of slow start per clean answer: 1 doubles the limit every
    answer time, 0.5 grows it by half (a smaller overshoot past the knee)."""
    slow_start_until: float = 2.0
    """Where slow start stops doubling, as a multiple of ``start``: 1 stops
    at ``start`` (the preset's low end), 2 (the default) at twice it; from
    there the limit grows at the normal pace (``GROW``: ``increase_factor``
    per clean, used window), as the provider's guide says. 0: slow start
    doubles up to ``maximum``."""
    memory_seconds: float = 1.0
    """How far back the admitted rate is measured when the 429s climb."""
    answer_time_shift: float = 0.25
    """Relative change of the answer time after which the concurrency of a
    rate-limited site is re-derived from its learned rate."""
    rate_pacing: bool = True
    """Pace a site taken to limit requests per second at the rate it
    admitted (:attr:`Phase.PACED`); off, only the concurrency is limited."""
    pace_margin: float = 0.02
    """Paced (:attr:`Phase.PACED`), sends go out this share below the rate
    the site admitted when its 429s last climbed."""
    pace_step: float = 0.01
    """First step of the paced rate's probe upwards near the rate measured
    (``_NEAR``): small, because a token bucket shows an overload only once
    its burst is spent. Beyond that the steps double (``_RAISE_STEP``); once
    the opening is over, near ones grow too (``_OPENED_WAIT``)."""
    slow_start_pace_share: float = 1.0
    """Share of slow start's estimate the first pace starts at. Slow start
    measures the rate while a token bucket spends its burst, which inflates
    it by the burst over the first second: several times the rate of a
    site that admits a few requests per second (a static exit's IP). Below
    1, the first pace starts under the estimate and is probed up in full
    steps until a climb measures the rate."""
    capped_min_inflight: int = 0
    """Paced, a 429 counts as sent with the concurrency binding (evidence of
    an in-flight cap) only with at least this many in flight, besides the
    limit less one. A paced limit of a few (a rate of a few per second) is
    reached by the answer time's jitter alone, whatever binds: a static
    exit's pair, whose per-IP budget is a rate, sets 6."""
    pace_headroom: float = 1.25
    """Paced, the concurrency is this much above what the paced rate keeps
    in flight (Little's law), so the pace, not the concurrency, decides."""
    paced_trim_samples: int = 0
    """Paced, a window with two 429s is judged (the pace trimmed by their
    share) as soon as it has this many answers, not when it is full
    (``window_seconds`` and ``min_samples``); 0: only when full."""
    slow_start_rate: float = 0.0
    """Above 0, slow start is rate-first: its sends are paced, from this
    many per second, and each clean answer raises the pace by
    ``slow_start_rate_gain`` (the concurrency follows the pace); 429s stop
    the growth and cut the pace (``slow_start_rate_strays``). 0: slow start
    grows the concurrency only."""
    slow_start_rate_gain: float = 0.5
    """Rate-first slow start: sends per second added per clean answer (0.5
    doubles the pace about every 1.4 s)."""
    slow_start_rate_strays: int = 10
    """Rate-first slow start: clean answers after a first 429 within which a
    second one cuts the pace; beyond them the first was a stray, and only
    held the growth. A pace past a token bucket's rate, its burst spent,
    draws the next 429 within a few answers; a site that refuses 1% of its
    pages whatever the load draws two this close one time in ten. Cutting
    at every 429 held such a site below the pace of its first stray, probed
    up in small steps (median 560 pages of 20 s against 1,293, mobile
    preset, 20 seeds). 0: the first 429 cuts at once (a static exit's pair:
    each 429 counts against a small per-IP budget)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ControllerSettingsError(
                        f.name, f"must be True or False, got {value!r}"
                    )
            elif f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ControllerSettingsError(
                        f.name, f"must be an integer, got {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ControllerSettingsError(
                    f.name, f"must be a number, got {value!r}"
                )
            elif not math.isfinite(value):
                raise ControllerSettingsError(f.name, f"must be finite, got {value!r}")
        _check(self.floor >= 1, "floor", f"must be at least 1, got {self.floor}")
        _check(
            self.maximum >= self.floor,
            "maximum",
            f"({self.maximum}) must be at least floor ({self.floor})",
        )
        _check(
            self.floor <= self.start <= self.maximum,
            "start",
            f"({self.start}) must be between floor ({self.floor}) "
            f"and maximum ({self.maximum})",
        )
        _check(
            self.slow_start >= 0,
            "slow_start",
            f"must be at least 0, got {self.slow_start}",
        )
        _check(
            self.slow_start_gain > 0,
            "slow_start_gain",
            f"must be above 0, got {self.slow_start_gain}",
        )
        _check(
            self.slow_start_until == 0 or self.slow_start_until >= 1,
            "slow_start_until",
            f"must be 0 (the maximum) or at least 1, got {self.slow_start_until}",
        )
        _check(
            self.memory_seconds > 0,
            "memory_seconds",
            f"must be above 0, got {self.memory_seconds}",
        )
        _check(
            self.answer_time_shift > 0,
            "answer_time_shift",
            f"must be above 0, got {self.answer_time_shift}",
        )
        _check(
            0 <= self.pace_margin < 1,
            "pace_margin",
            f"must be in [0, 1), got {self.pace_margin}",
        )
        _check(
            self.pace_step > 0,
            "pace_step",
            f"must be above 0, got {self.pace_step}",
        )
        _check(
            0 < self.slow_start_pace_share <= 1,
            "slow_start_pace_share",
            f"must be in (0, 1], got {self.slow_start_pace_share}",
        )
        _check(
            self.capped_min_inflight >= 0,
            "capped_min_inflight",
            f"must be at least 0, got {self.capped_min_inflight}",
        )
        _check(
            self.paced_trim_samples >= 0,
            "paced_trim_samples",
            f"must be at least 0, got {self.paced_trim_samples}",
        )
        _check(
            self.slow_start_rate >= 0,
            "slow_start_rate",
            f"must be at least 0, got {self.slow_start_rate}",
        )
        _check(
            self.slow_start_rate_gain > 0,
            "slow_start_rate_gain",
            f"must be above 0, got {self.slow_start_rate_gain}",
        )
        _check(
            self.slow_start_rate_strays >= 0,
            "slow_start_rate_strays",
            f"must be at least 0, got {self.slow_start_rate_strays}",
        )
        _check(
            self.pace_headroom >= 1,
            "pace_headroom",
            f"must be at least 1, got {self.pace_headroom}",
        )
        _check(
            self.increase_factor > 1,
            "increase_factor",
            f"must be above 1, got {self.increase_factor}",
        )
        _check(
            0 < self.decrease_factor < 1,
            "decrease_factor",
            f"must be between 0 and 1 (exclusive), got {self.decrease_factor}",
        )
        _check(
            self.window_seconds > 0,
            "window_seconds",
            f"must be above 0, got {self.window_seconds}",
        )
        _check(
            self.min_samples >= 1,
            "min_samples",
            f"must be at least 1, got {self.min_samples}",
        )
        _check(
            0 <= self.tolerated_share < 1,
            "tolerated_share",
            f"must be in [0, 1), got {self.tolerated_share}",
        )
        _check(
            self.trigger_excess > 0,
            "trigger_excess",
            f"must be above 0, got {self.trigger_excess}",
        )
        _check(
            0 <= self.min_utilization <= 1,
            "min_utilization",
            f"must be in [0, 1], got {self.min_utilization}",
        )
        _check(
            self.probe_interval >= 0,
            "probe_interval",
            f"must be at least 0, got {self.probe_interval}",
        )
        _check(
            self.probe_samples >= 0,
            "probe_samples",
            f"must be at least 0, got {self.probe_samples}",
        )
        _check(
            self.probe_seconds >= 0,
            "probe_seconds",
            f"must be at least 0, got {self.probe_seconds}",
        )
        _check(
            self.backoff_settle_seconds >= 0,
            "backoff_settle_seconds",
            f"must be at least 0, got {self.backoff_settle_seconds}",
        )
        _check(
            self.probes_to_grow >= 1,
            "probes_to_grow",
            f"must be at least 1, got {self.probes_to_grow}",
        )


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ControllerSettingsError(field, message)


@dataclass(frozen=True)
class Ticket:
    """Handed out by :meth:`DomainController.on_sent`; give it back to
    :meth:`DomainController.record` with the request's outcome."""

    epoch: int
    """The limit epoch the request was sent under."""
    sent_at: float
    inflight: int = 0
    """Requests in flight to the domain once this one was sent."""
    seq: int = 0
    """Requests sent to the domain, this one included: 429s to consecutive
    sends say the site refused everything sent."""


class Phase(str, enum.Enum):
    """Where a domain's controller stands; changed only by ``_enter``."""

    SLOW_START = "slow_start"
    """Nothing known yet: the limit grows by one per clean answer (doubling
    every answer time) until the 429s climb."""
    GROW = "grow"
    """No overload level known: clean, used windows raise the limit by
    ``increase_factor``."""
    SETTLED = "settled"
    """An overload level is known: the limit sits one below it (growing back
    at half pace after a cut), and probes one step up now and then."""
    PROBE = "probe"
    """One step above the settled level, to find out whether the site now
    admits more."""
    PACED = "paced"
    """The site is taken to limit requests per second: sends are paced at
    the rate it admitted (less ``pace_margin``), the concurrency follows
    the answer time with headroom, and the rate is probed upwards in small
    steps. Left for ``SETTLED`` when the 429s climb at a pace the site
    admitted before (an in-flight cap)."""


class LimitKind(str, enum.Enum):
    """What the site limits, as far as the evidence tells."""

    UNKNOWN = "unknown"
    RATE = "rate"
    """Requests per second: the concurrency it admits follows the answer time."""
    INFLIGHT = "inflight"
    """Requests in flight: the concurrency it admits stays when the answer
    time moves."""


@dataclass(frozen=True)
class Learned:
    """What a domain's controller learned, compact enough to store.

    :meth:`DomainController.learned` exports it; ``DomainController(settings,
    now, learned=...)`` starts from it (warm start).
    """

    concurrency: int
    """The clean level: requests in flight the site admits."""
    rate: float | None
    """Admitted answers per second when the 429s climbed, if measured."""
    kind: LimitKind
    answer_time: float | None
    """Mean seconds per clean answer when it was learned."""
    at: float
    """When it was learned (the caller's clock: wall time for a state file)."""
    samples: int
    """Answers it is based on."""

    def to_dict(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency,
            "rate": self.rate,
            "kind": self.kind.value,
            "answer_time": self.answer_time,
            "at": self.at,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Learned:
        """The inverse of :meth:`to_dict`; ``ValueError`` on anything else."""
        try:
            concurrency = data["concurrency"]
            rate = data.get("rate")
            answer_time = data.get("answer_time")
            at = data["at"]
            samples = data["samples"]
            kind = LimitKind(data.get("kind", LimitKind.UNKNOWN.value))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a learned limit: {exc}") from None
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise ValueError("concurrency must be an integer")
        if isinstance(samples, bool) or not isinstance(samples, int):
            raise ValueError("samples must be an integer")
        for name, value in (("rate", rate), ("answer_time", answer_time)):
            if value is not None and not _positive(value):
                raise ValueError(f"{name} must be a positive number or null")
        if not _number(at) or not 1 <= concurrency <= _LEARNED_MAX:
            raise ValueError("at or concurrency out of range")
        if not 0 <= samples <= _LEARNED_MAX_SAMPLES:
            raise ValueError("samples out of range")
        if (rate is not None and rate > _LEARNED_MAX) or (  # type: ignore[operator]
            answer_time is not None and answer_time > _LEARNED_MAX_ANSWER  # type: ignore[operator]
        ):
            raise ValueError("rate or answer_time out of range")
        return cls(
            concurrency=concurrency,
            rate=None if rate is None else float(rate),  # type: ignore[arg-type]
            kind=kind,
            answer_time=None if answer_time is None else float(answer_time),  # type: ignore[arg-type]
            at=float(at),  # type: ignore[arg-type]
            samples=samples,
        )


_LEARNED_MAX = 1_000_000
"""Largest concurrency or rate a state file may hold: far above any site's,
and small enough that no arithmetic on it overflows (a hostile file with
10**400 made the controller raise OverflowError)."""
_LEARNED_MAX_SAMPLES = 10**15
_LEARNED_MAX_ANSWER = 3600.0


def _number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _positive(value: object) -> bool:
    return _number(value) and value > 0  # type: ignore[operator]


@dataclass(frozen=True)
class Decision:
    """The verdict on one window (the limit may or may not have changed)."""

    at: float
    old_limit: int
    new_limit: int
    reason: Reason
    samples: int
    """Non-ignored answers the verdict is based on."""
    rate_limited: int
    """429s among them."""
    overload_level: int | None
    """The lowest level known to draw 429s, after this decision."""
    pace_rate: float | None = None
    """Sends per second the site is paced at after this decision (None:
    unpaced), in ``PACED`` or in a rate-first slow start."""

    @property
    def changed(self) -> bool:
        return self.new_limit != self.old_limit

    @property
    def rate_limited_share(self) -> float:
        return self.rate_limited / self.samples if self.samples else 0.0


# -- small pure pieces ------------------------------------------------------


def clamp(value: int, settings: ControllerSettings) -> int:
    """``value`` limited to ``[settings.floor, settings.maximum]``."""
    return max(settings.floor, min(settings.maximum, value))


def grow(limit: int, settings: ControllerSettings, cap: int | None = None) -> int:
    """The next limit at the normal pace: ``ceil(limit * increase_factor)``,
    at least ``limit + 1``, at most ``cap`` (if given) and the maximum.

    Never returns less than ``limit`` (a cap below it does not shrink it).
    """
    target = max(limit + 1, math.ceil(limit * settings.increase_factor - 1e-9))
    if cap is not None:
        target = min(target, cap)
    return max(limit, clamp(target, settings))


def regrow(limit: int, overload_level: int, settings: ControllerSettings) -> int:
    """The next limit below a known overload level: half the normal pace
    (``limit * (1 + (increase_factor - 1) / 2)``, at least +1), stopping one
    below the level. Used after a backoff, whose cut may have been too
    deep (a burst of 429s) or right (the site lowered its limit)."""
    half = 1 + (settings.increase_factor - 1) / 2
    target = max(limit + 1, math.floor(limit * half + 1e-9))
    return max(limit, clamp(min(target, overload_level - 1), settings))


def backoff_target(limit: int, ok_share: float, settings: ControllerSettings) -> int:
    """Where to back off to from ``limit`` when the 429 share climbed and
    nothing better is known (too few clean answers to measure the rate).

    ``ok_share`` (the share of non-429 answers) estimates which part of the
    limit the site admits, so ``round(limit * ok_share)`` is about the last
    good level. The result is at least one below ``limit`` (that level drew
    the 429s), never deeper than ``limit * decrease_factor`` in one step
    (a short window's share is noisy), and within floor and maximum.
    """
    ok_share = min(1.0, max(0.0, ok_share))
    estimate = math.floor(limit * ok_share + 0.5)
    deepest = math.ceil(limit * settings.decrease_factor - 1e-9)
    return clamp(min(limit - 1, max(deepest, estimate)), settings)


def admitted_level(rate: float, answer_time: float) -> float:
    """Little's law: requests in flight that ``rate`` answers per second of
    ``answer_time`` seconds each keep busy."""
    return rate * answer_time


def cusum_step(total: float, rate_limited: bool, tolerated_share: float) -> float:
    """One step of a one-sided CUSUM on the 429 indicator.

    Each answer adds ``1 - tolerated_share`` if it was a 429 and subtracts
    ``tolerated_share`` otherwise; the sum never goes below zero, so a long
    clean stretch does not hide a later climb.
    """
    return max(0.0, total + (1.0 if rate_limited else 0.0) - tolerated_share)


_CLOSED_RUN = 8
"""429s, to all or nearly all (``_CLOSED_SHARE``) of the sends from the
first one on, that make a held site trickle at once
(:meth:`Evidence.refused_everything`): slow start's climb fires on the
first three or four, and the pace goes on sending, an answer time's worth,
until three sent after the climb come back refused (``_HOLD_TRICKLE``).
Eight in a row from a token bucket at slow start's overshoot (twice its
rate or so, half admitted) are rare; from a window whose count is spent,
the rule."""
_CLOSED_SHARE = 0.9
_NEAR = 1.05
"""Paced rates up to this much above the rate measured (by a climb, a
trim, a probe's end or a warm start) are probed in small steps
(``pace_step``; growing once the opening is over); beyond, the steps
double."""
_RATE_SPAN = 2.0
"""Seconds the admitted rate is measured over while paced: over one, a
token bucket's burst, spent just before the climb, inflates it."""
_PACED_429S = 2
"""429s in a paced window that trim the pace by their share."""
_DROPPED = 0.7
"""A paced climb with a smaller share of clean answers says the site's
rate dropped."""
_INFLIGHT_429S = 3
"""429s at a pace well below a rate the site admitted that make it an
in-flight cap."""
_CAPPED_LEVEL = 1.0
"""Requests in flight (the rate admitted times the answer time) below which
429s sent with the limit in flight say nothing of an in-flight cap: no cap
is below one, and a site answering in 3-40 ms sits at 0.06-0.8 where the
limit binds whenever anything is in flight. (0.5 left a 20 req/s bucket
at 25-40 ms answers unpaced at one in flight, 37-49% 429s on most seeds;
1 costs a cap of 2 at 200 ms, whose paced level dips to 0.97, a little:
6.2% against 5.8% on one seed of six.)"""
_MAX_PACE_STEP = 0.1
"""Step of a paced rate's probe with nothing measured (or below a pace that
drew 429s): a token bucket's burst hides an overload for a while, and the
steps go on meanwhile. Towards faster answers' rate (``_probe_top``) the
steps may be larger, up to ``_RAISE_STEP``."""
_RAISE_STEP = 0.25
"""Largest step of a probe beyond ``_NEAR`` times the measured rate, where
the site admits more than it did: the steps double up to 25%, the
provider guide's raise. With 10% (and the probes' waits and near steps of
the opening throughout) a site that raised its limit from 20 to 50 req/s
was found 18 s after the rise (median; up to 31 s) behind a mobile hop in
the simulation, against a target of 15."""
_OPENED_WAIT = 0.6
"""Once a probe has ended at a 429 that measured the rate (the opening is
over, and the rate was measured past a burst), the next probes wait this
share of ``probe_interval`` and ``probe_samples`` after a cut, their near
steps grow and those beyond start larger: a limit raised 2.5-fold is found
within 15 s behind a mobile hop. Not before: probing faster from the start
cost a residential 20 req/s opening 4.8% 429s against 4.1% (simulated, 16
seeds). A warm start begins with the opening's probes too."""
_OPENED_GROWTH = 1.5
"""Once the opening is over, each near probe's step is this many times the
one before (from ``pace_step``)..."""
_OPENED_NEAR_STEP = 0.04
"""... up to this (or ``pace_step``, if larger)."""
_OPENED_RAISE_STEP = 0.04
"""Once the opening is over, the first step beyond the near ones (doubling
from there)."""
_IGNORED_SEEN = 200
"""Answers kept to tell the share that fails before the site."""
_QUIET_SECONDS = 3.0
"""Slow start grows again once no 429 came back for this long (or an
answer time, if longer), whatever the CUSUM still holds: near a token
bucket's rate its 429s are sparse, seconds apart, but a site that refuses
1% of its pages whatever the load would otherwise hold slow start's first
volley of 4 for a whole crawl."""
_BURST_SHARE = 0.85
"""At most this share of the admitted rate measured at a paced climb is
taken for a burst spent just before it."""
_BURST_SECONDS = 2.0
"""A slow-start climb within this many seconds of the first clean answer
measured its rate while a token bucket's burst was being spent
(``slow_start_pace_share`` applies)."""
_MIN_PACE_RATE = 0.1
"""Slowest pace (sends per second): a site that refuses nearly everything
is still asked now and then."""
_SHORTEST_ANSWER = 0.001
"""Seconds an answer is taken to have taken at least: a coarse clock (15 ms
on Windows) or a cache can make it 0, and the rate's level divides by it."""
_RAMP_CLEAN = 8
"""Clean answers, to requests sent after a rate-first slow start's last
cut, after which the cut rate is paced (``PACED``)."""
_RAMP_GAPS = 2.0
"""Gaps of the cut pace after a rate-first slow start's cut before a 429
cuts it again."""
_CLIMBS_KEPT = 6
"""Measured climbs kept to tell the kind of limit."""
_DISTINCT_TIMES = 0.4
"""Answer times that differ this much make two climbs comparable."""
_SAME = 0.15
"""Rates (or levels) this close count as the same."""
_SHIFT_ANSWERS = 8
"""Clean answers whose median beyond ``answer_time_shift`` moves an
in-flight cap's pace (or level) behind a hop."""
_CAP_SHIFT = 1.5
"""A site's part of the answer time that moved by this factor moves an
in-flight cap's pace (or level) behind a hop."""
_REFUSALS_KEPT = 16
"""429 answer times kept to tell the hop (the part of an answer's time that
is not the site's)."""
_PROBE_SPAN = 2.0
"""Fewest seconds between two 429s over which the rate admitted between them
is taken for (at most) the site's rate when a probe draws its first 429."""
_PROBE_ANSWERS = 10
"""Fewest clean answers between two 429s to measure that rate."""
_HOLD_FIRST = 0.25
"""The trickle's first probes go out this share of an answer time apart."""
_HOLD_SHARE = 0.1
"""... and later ones this share of the time held so far."""
_HOLD_TRICKLE = 3
"""Requests sent after the first climb and refused, with none sent after its
first 429 admitted yet, after which only a trickle of probes goes out. A
token bucket paced a little above its rate refuses one in a few, and behind
a slow hop its 429s come back before its admitted answers: three leave it
room. (1 cost the simulated token buckets nothing and the sliding window
0.4 points fewer 429s, but was not measured enough in real crawls;
trickling from the climb on, before any such 429, slowed a token bucket's
first answers after the climb, changed what its next climb measured and
broke five of the seeded simulations.)"""
_HOLD_REFUSED = 2
"""Probes of the trickle refused that mean the site was closed."""
_HOLD_SHUT = 0.25
"""... but only if they and the answer that found the site open again span
this many seconds at least (from the first refused request out): refused
at a pace of hundreds a second (slow start's guess on a site answering in
milliseconds), five requests fit between two tokens of a 20 per second
bucket (50 ms), and the bucket looked closed. Behind a hop the refused
request's own round trip and an answer time already span more, and the
rule is as before."""
_REORDERED = 0.05
"""Seconds within which two requests may reach the site in either order
(the gateway's connections): a request sent this soon after a refused one
and admitted says nothing about whether the site was closed."""
_WINDOW_STEP = 0.02
"""Largest step of a paced rate's probe on a site seen closed (a window
limiter): it shows an overload only at its window's end, several steps
later."""
_HOLD_CLOSED = 1.0
"""Seconds from a climb's first 429 to the first request after it that is
admitted which mean the site was closed, however few probes were refused
(a ``Retry-After`` that held the slot sends none): a token bucket of more
than one request a second admits one sooner."""
# What a site admitted between its 429s (Evidence.admitted_between_429s):
# over at least _WATCH_SPAN seconds of sending, _WATCH_ANSWERS clean answers
# and _WATCH_429S 429s, _WATCH_SHARE of the answers at least, none more than
# _WATCH_GAP after the 429 before (else counted from it); at most _WATCH_KEPT
# sends, for at most _WATCH_SECONDS from the first 429 or from when it was
# armed (a pace the site admits whole never draws the 429s that end it).
_WATCH_SPAN = 0.5
_WATCH_ANSWERS = 8
_WATCH_429S = 3
_WATCH_SHARE = 0.1
_WATCH_GAP = 1.0
_WATCH_KEPT = 256
_WATCH_SECONDS = 4.0

# -- evidence ---------------------------------------------------------------


@dataclass
class _Window:
    """Answers since the last verdict, for the current epoch."""

    start: float
    ok: int = 0
    rate_limited: int = 0
    sends: int = 0
    inflight_sum: int = 0
    peak_inflight: int = 0

    @property
    def samples(self) -> int:
        return self.ok + self.rate_limited


@dataclass
class _Ramp:
    """A rate-first slow start (``slow_start_rate``)."""

    rate: float
    """Sends per second."""
    cut_at: float | None = None
    """When the last 429 cut it (a 429 to a request sent later cuts again)."""
    clean: int = 0
    """Clean answers to requests sent since the last cut."""
    measured: bool = False
    """The last cut kept the share of clean answers (the site's rate, about);
    a halving only bounds it."""
    refused: float = math.inf
    """The lowest pace a 429 cut."""
    lone: int | None = None
    """Clean answers since a 429 that cut nothing yet (None: none pending):
    before the first cut, a second 429 within ``slow_start_rate_strays``
    cuts."""


_T = TypeVar("_T")


def _keep_last(items: list[_T], item: _T, keep: int) -> None:
    """Append ``item``, keeping only the last ``keep`` (a bounded deque's
    append, on a list)."""
    items.append(item)
    if len(items) > keep:
        del items[0]


class Evidence:
    """Everything the answers say, apart from what to do about it.

    * the window (answers since the last verdict) and the epoch filter;
    * the CUSUM on 429s and the climb that fires it;
    * the last ``min_samples`` answers at this level;
    * the admitted rate (clean answers per second over ``memory_seconds``)
      and the answer time (mean of the last few clean answers), across
      epochs: they describe the site, not the current limit.
    """

    ANSWER_TIME_SAMPLES = 32

    def __init__(self, settings: ControllerSettings, now: float) -> None:
        self.settings = settings
        self.epoch = 0
        self.epoch_start = now
        self.epoch_samples = 0
        # Requests sent before this time say nothing about the current level.
        self.evidence_from = now
        self.window = _Window(start=now)
        self.cusum = 0.0
        # Answers since the CUSUM last stood at 0: the climb that fires it.
        self.run_ok = 0
        self.run_limited = 0
        # Of the last answers, which said nothing (failed before the site).
        self.ignored_seen: list[bool] = []
        # The last min_samples answers at this level (True: a 429).
        # Lists, not deques: a deque costs 760 bytes however short, and a
        # broad crawl keeps these for thousands of domains.
        self.recent: list[bool] = []
        self.ok_times: list[float] = []
        self.first_answer: float | None = None
        # When the request of the first clean answer was sent.
        self.first_sent: float | None = None
        self.answer_times: list[float] = []
        self.ok_since_step = 0
        self.total_samples = 0
        # In flight (besides it) when the first 429 since the last climb was
        # sent, and when it was sent.
        self.refused_inflight: int | None = None
        self.refused_sent: float | None = None
        # Sends so far; of the sends from the first 429's on (by ``seq``), the
        # 429s back, and the last of them.
        self.sends_total = 0
        self.refused_first_seq: int | None = None
        self.refused_since = 0
        self.refused_last_seq = 0
        # Clean answers since then to requests sent after it: none by the
        # time the 429s climb, and the site may be closed (_Hold).
        self.admitted_after_refusal = 0
        # Answer times of the last 429s.
        self.refusals: list[float] = []
        # Clean answers ever (any epoch), and (time, clean answers then) at
        # the last 429: a token bucket was empty there, so what it admitted
        # from there to its next 429 is at most its rate.
        self.ok_total = 0
        self.refusal_mark: tuple[float, int] | None = None
        # The last time a held site was found open (a window limiter).
        self.reopened: _Reopened | None = None
        # The answers to requests sent from a 429 on, or (not started yet)
        # from the next 429 on: see admitted_between_429s.
        self.watch: _Watch | None = None

    def sent(self, now: float, inflight: int) -> Ticket:
        self.sends_total += 1
        if now >= self.evidence_from:
            w = self.window
            w.sends += 1
            w.inflight_sum += inflight
            w.peak_inflight = max(w.peak_inflight, inflight)
        return Ticket(
            epoch=self.epoch, sent_at=now, inflight=inflight, seq=self.sends_total
        )

    def answered(
        self, ticket: Ticket, outcome: Outcome, now: float, *, any_epoch: bool
    ) -> None:
        self._seen(ticket, outcome)
        if outcome is Outcome.IGNORED:
            return
        limited = outcome is Outcome.RATE_LIMITED
        if limited and self.refused_inflight is None:
            # The others in flight when this one was refused were admitted.
            self.refused_inflight = max(0, ticket.inflight - 1)
            self.refused_sent = ticket.sent_at
            self.refused_first_seq = ticket.seq
        elif (
            not limited
            and self.refused_sent is not None
            and ticket.sent_at > self.refused_sent + _REORDERED
        ):
            self.admitted_after_refusal += 1
        if limited:
            self._refused(ticket, now)
        if not limited:
            # The site's side of things: counted whatever the epoch.
            if self.first_answer is None:
                self.first_answer = now
                self.first_sent = ticket.sent_at
            self.ok_times.append(now)
            _keep_last(
                self.answer_times,
                max(_SHORTEST_ANSWER, now - ticket.sent_at),
                self.ANSWER_TIME_SAMPLES,
            )
            self.ok_since_step += 1
            self.ok_total += 1
        self._forget(now)
        if not any_epoch and (
            ticket.epoch != self.epoch or ticket.sent_at < self.evidence_from
        ):
            return
        if limited:
            self.window.rate_limited += 1
        else:
            self.window.ok += 1
        tolerated = self.settings.tolerated_share
        self.cusum = cusum_step(self.cusum, limited, tolerated)
        _keep_last(self.recent, limited, self.settings.min_samples)
        self.epoch_samples += 1
        self.total_samples += 1
        if self.cusum == 0:
            self.run_ok = self.run_limited = 0
        elif limited:
            self.run_limited += 1
        else:
            self.run_ok += 1

    def _seen(self, ticket: Ticket, outcome: Outcome) -> None:
        """Every answer, whether it reached the site or not."""
        _keep_last(self.ignored_seen, outcome is Outcome.IGNORED, _IGNORED_SEEN)
        if self.watch is not None:
            self.watch.answered(ticket, outcome)

    def _refused(self, ticket: Ticket, now: float) -> None:
        first = self.refused_first_seq
        if first is not None and ticket.seq >= first:
            self.refused_since += 1
            self.refused_last_seq = max(self.refused_last_seq, ticket.seq)
        _keep_last(self.refusals, max(0.0, now - ticket.sent_at), _REFUSALS_KEPT)
        self.refusal_mark = (now, self.ok_total)

    def watch_from_next_429(self, now: float | None = None) -> None:
        """Keep the answers to the requests sent from the next 429 on (see
        :meth:`admitted_between_429s`); armed at ``now`` (None: until the
        next 429, however late)."""
        self.watch = _Watch(armed_at=now)

    def unwatch(self) -> None:
        self.watch = None

    def admitted_between_429s(self) -> float | None:
        """Clean answers per second of sending between the 429 the watch
        began at (:meth:`watch_from_next_429`) and the last 429 to a later
        request, once every request sent in between has come back (counted
        by the tickets' ``seq``). A token bucket (or a GCRA) was empty at
        each 429, so in between it admitted its rate, whatever its burst
        (the burst is what the rate over slow start's last second
        overstates), less only what it refilled past its burst while too
        little was sent: a lower bound. A 429 more than ``_WATCH_GAP``
        after the one before starts the count again (the site had time to
        refill: a stray 429 before the rest). None until ``_WATCH_SPAN``
        seconds with ``_WATCH_ANSWERS`` clean answers and ``_WATCH_429S``
        429s, at least ``_WATCH_SHARE`` of them 429s (the site refused all
        along)."""
        return None if self.watch is None else self.watch.rate()

    def ignored_share(self) -> float:
        """Share of the last answers that never reached the site."""
        seen = self.ignored_seen
        return sum(seen) / len(seen) if seen else 0.0

    def rate_between_refusals(
        self, mark: tuple[float, int] | None, now: float
    ) -> float | None:
        """Clean answers per second from the 429 ``mark`` (a
        :attr:`refusal_mark`) to ``now``, a 429 too: a token bucket (or a
        GCRA, or a fixed window) was empty at both, so it admitted at most
        its rate in between (less only by what it refilled while full). None
        if the span is shorter than ``_PROBE_SPAN`` or has too few answers."""
        if mark is None:
            return None
        since, ok_then = mark
        span = now - since
        answers = self.ok_total - ok_then
        if span < _PROBE_SPAN or answers < _PROBE_ANSWERS:
            return None
        return answers / span

    def ok_count(self, now: float) -> int:
        """Clean answers over the last ``memory_seconds``."""
        horizon = now - self.settings.memory_seconds
        return sum(1 for t in self.ok_times if t > horizon)

    def _forget(self, now: float) -> None:
        horizon = now - max(self.settings.memory_seconds, _RATE_SPAN)
        times = self.ok_times
        stale = 0
        while stale < len(times) and times[stale] <= horizon:
            stale += 1
        if stale:
            del times[:stale]

    @property
    def climbing(self) -> bool:
        return self.cusum >= self.settings.trigger_excess

    def ok_share_of_climb(self) -> float:
        """The share of clean answers during the climb (or, if the climb was
        short, over the last ``min_samples`` answers)."""
        run = self.run_ok + self.run_limited
        if run >= len(self.recent) and run:
            return self.run_ok / run
        if not self.recent:
            return 1.0
        return 1 - sum(self.recent) / len(self.recent)

    def admitted_rate(self, now: float, seconds: float | None = None) -> float | None:
        """Clean answers per second over the last ``seconds`` (at most
        ``_RATE_SPAN``; default ``memory_seconds``), or since the first clean
        answer if that is more recent; None if too few."""
        self._forget(now)
        memory = self.settings.memory_seconds if seconds is None else seconds
        memory = min(memory, max(self.settings.memory_seconds, _RATE_SPAN))
        times = [t for t in self.ok_times if t > now - memory]
        if self.first_answer is None or len(times) < 5:
            return None
        span = min(memory, now - self.first_answer)
        # At least one answer time: the first answers of a crawl come back
        # as one volley, in much less time than the site took to admit them.
        span = max(span, self.answer_time() or 0.0)
        if span <= 0:
            return None
        return len(times) / span

    def measured(self, now: float) -> bool:
        """A full ``memory_seconds`` of clean answers (at least 5) to go by."""
        return (
            self.first_answer is not None
            and now - self.first_answer >= self.settings.memory_seconds
            and self.ok_count(now) >= 5
        )

    def answer_time_steady(self) -> bool:
        """The last few clean answers took about as long as the last many:
        the answer time is not moving (a measurement now is not a mix)."""
        times = list(self.answer_times)
        if len(times) < self.ANSWER_TIME_SAMPLES:
            return False
        recent = times[-self.ANSWER_TIME_SAMPLES // 4 :]
        mean_recent = sum(recent) / len(recent)
        mean_all = sum(times) / len(times)
        return abs(mean_recent / mean_all - 1) < 0.2 if mean_all > 0 else False

    def answer_time_recent(self) -> float | None:
        """Mean of the last quarter of the clean answers kept."""
        times = list(self.answer_times)[-self.ANSWER_TIME_SAMPLES // 4 :]
        return sum(times) / len(times) if times else None

    def answer_time(self) -> float | None:
        """Mean seconds of the last few clean answers."""
        if not self.answer_times:
            return None
        return sum(self.answer_times) / len(self.answer_times)

    def answer_time_median(self) -> float | None:
        """Median of the last ``_SHIFT_ANSWERS`` clean answers (None: fewer):
        one may be the tail of the distribution, and the first answers at a
        new answer time are its fastest (they overtake the rest)."""
        last = sorted(self.answer_times[-_SHIFT_ANSWERS:])
        if len(last) < _SHIFT_ANSWERS:
            return None
        return (last[(len(last) - 1) // 2] + last[len(last) // 2]) / 2

    def hop(self) -> float:
        """Seconds of an answer's time that are not the site's: the median
        time of the last 429s, when it is shorter than any of the last clean
        answers (a site that refuses at once, behind a hop that takes as
        long for a 429 as for a 200); else 0 (a site whose 429s take as
        long as its answers: their times overlap)."""
        if not self.refusals or not self.answer_times:
            return 0.0
        hop = sorted(self.refusals)[len(self.refusals) // 2]
        return hop if hop < min(self.answer_times) else 0.0

    def site_time(self, answer_time: float) -> float:
        """The site's part of ``answer_time`` (less the hop): what an
        in-flight cap counts."""
        hop = self.hop()
        return answer_time - hop if hop < answer_time else answer_time

    def new_epoch(self, now: float) -> None:
        self.epoch += 1
        self.epoch_start = now
        self.epoch_samples = 0
        self.evidence_from = now
        self.reset_climb()

    def refused_everything(self) -> bool:
        """Nearly every request sent from the first 429 on, up to the last
        refused, was refused too (``_CLOSED_RUN`` of them at least): a
        window limiter whose count is spent, not a token bucket (which
        admits its rate of what comes, and some of those sends). Behind a
        hop a 429 comes back an answer time before a clean answer, so this
        is known before any clean answer to those sends can be. Requests
        that fail before the site take a place in the count and never come
        back as 429s: at a tenth of them failing, this is never true (the
        safe side). Tickets without a ``seq`` (0) say nothing."""
        first = self.refused_first_seq
        if not first or self.refused_since < _CLOSED_RUN:
            return False
        sent = self.refused_last_seq - first + 1
        return self.refused_since >= _CLOSED_SHARE * sent

    def reset_climb(self) -> None:
        self.refused_inflight = self.refused_sent = None
        self.refused_first_seq = None
        self.refused_since = self.refused_last_seq = 0
        self.admitted_after_refusal = 0
        self.cusum = 0.0
        self.run_ok = self.run_limited = 0
        self.recent.clear()

    def new_window(self, now: float) -> None:
        self.window = _Window(start=max(now, self.evidence_from))


# -- the controller ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reopened:
    """A held site found open: when the request that found it was sent,
    the clean answers before it (the next closed cycle counts from here),
    and the seconds since the reopening before (a fixed window's length,
    about)."""

    sent: float
    ok_before: int
    cycle: float


_BACK_OK, _BACK_429, _BACK_IGNORED = 1, 2, 3
"""How a watched request came back (0: not yet)."""


@dataclass(slots=True)
class _Watch:
    """The answers to requests sent from a 429's on (``first``, its ``seq``,
    0 until that 429 comes; ``since``, its send time), by ``seq`` less
    ``first``: send time and how it came back, at most ``_WATCH_KEPT``
    (9 bytes each). ``armed_at``: when it was armed (None: slow start's,
    which waits for its first 429 however long). The answers are scanned
    once each, in ``seq`` order, up to the first not back yet."""

    armed_at: float | None = None
    first: int = 0
    since: float = 0.0
    sent: array[float] | None = None
    back: bytearray | None = None
    # The scan: the next index, the 429 before it (send time), clean
    # answers since that 429, and what is counted between 429s so far.
    scanned: int = 0
    last_429: float = 0.0
    ok_run: int = 0
    counted_ok: int = 0
    span: float = 0.0
    refused: int = 0

    def answered(self, ticket: Ticket, outcome: Outcome) -> None:
        if self.back is None or self.sent is None:
            if outcome is not Outcome.RATE_LIMITED or not ticket.seq:
                return  # (tickets without a send count say nothing)
            self.sent = array("d")
            self.back = bytearray()
            self._count_from(ticket.seq, ticket.sent_at)
        index = ticket.seq - self.first
        if not 0 <= index < _WATCH_KEPT:
            return
        if index >= len(self.back):
            more = index + 1 - len(self.back)
            self.back.extend(bytes(more))
            self.sent.extend([0.0] * more)
        self.sent[index] = ticket.sent_at
        self.back[index] = (
            _BACK_429
            if outcome is Outcome.RATE_LIMITED
            else _BACK_OK
            if outcome is Outcome.OK
            else _BACK_IGNORED
        )

    def _count_from(self, seq: int, sent_at: float) -> None:
        """Count from the 429 to request ``seq``, sent at ``sent_at``."""
        self.first = seq
        self.since = self.last_429 = sent_at
        self.scanned = 1  # the 429 it begins at
        self.ok_run = self.counted_ok = 0
        self.span = 0.0
        self.refused = 1

    def rate(self) -> float | None:
        """See :meth:`Evidence.admitted_between_429s`."""
        back, sent = self.back, self.sent
        if back is None or sent is None:
            return None
        index = self.scanned
        while index < len(back) and back[index]:
            if back[index] == _BACK_429:
                gap = sent[index] - self.last_429
                if gap > _WATCH_GAP:
                    # The site had its burst back since the 429 before (a
                    # stray one): count from this one.
                    self._count_from(self.first + index, sent[index])
                    del back[:index], sent[:index]
                    index = 1
                    continue
                self.span += gap
                self.counted_ok += self.ok_run
                self.refused += 1
                self.ok_run = 0
                self.last_429 = sent[index]
            elif back[index] == _BACK_OK:
                self.ok_run += 1
            index += 1
        self.scanned = index
        if (
            self.refused < _WATCH_429S
            or self.span < _WATCH_SPAN
            or self.counted_ok < _WATCH_ANSWERS
            or self.refused < _WATCH_SHARE * (self.counted_ok + self.refused)
        ):
            return None
        return self.counted_ok / self.span


@dataclass(slots=True)
class _Probe:
    """PACED, probing up: the pace the probes rose from (clean since the last
    cut, which left a token bucket empty), when they began, whether their
    first 429 ends them (if not, a climb measures), whether one did, and
    the 429 before it (see
    ``DomainController._end_probe``). One attribute of the controller, not
    five: past 30 attributes an instance's dict stops sharing its keys and
    every domain costs 1.3 kB more (measured: 2.8 kB a domain)."""

    base: float | None = None
    since: float | None = None
    bounded: bool = False
    hit: bool = False
    mark: tuple[float, int] | None = None


@dataclass(slots=True)
class _Hold:
    """After the crawl's first climb on a site (slow start's, as a rule),
    until a request sent after the climb's first 429 is admitted (see
    ``DomainController._end_hold``). A token bucket admits its rate of what
    comes after its first 429, so this ends within an answer time and
    changes nothing. A window limiter whose count slow start spent admits
    nothing until the window frees, and every request sent meanwhile is a
    429: once ``_HOLD_TRICKLE`` of those sent after the climb are refused,
    only a trickle of probes goes out (``DomainController._hold_gap``).
    On a site seen closed before, also after a paced climb with nothing
    sent after its first 429 admitted by then (a fixed window spent before
    its end), and after a probe's first 429."""

    since: float
    """When the climb was judged: requests sent from then on are probes."""
    after: float
    """When the climb's first 429 was sent."""
    refused: int = 0
    """Probes refused."""
    opened: float | None = None
    """When the first request admitted after ``after`` was sent."""
    pace: float | None = None
    """A paced climb's: the pace before its cut (a closed site is paced at
    no more than it); None after slow start's climb (its pace is a guess)."""
    trickle: bool = False
    """Trickle at once, for ``_HOLD_CLOSED`` from the climb: the site
    refused (nearly) everything sent since the climb's first 429
    (:meth:`Evidence.refused_everything`)."""


class DomainController:
    """The limit for one domain (or any other budget key).

    Call :meth:`on_sent` when a request goes out, :meth:`record` when its
    outcome is known and :meth:`decide` as often as convenient (after each
    answer is fine); apply ``decision.new_limit`` when ``decision.changed``.
    Everything is a function of the calls and the times passed in.
    """

    # Thousands of domains in a broad crawl: no instance dict.
    __slots__ = (
        "_capped_429s",
        "_capped_seen",
        "_clean_pace",
        "_climbs",
        "_derived_at",
        "_derived_pace",
        "_derived_site",
        "_evidence",
        "_hold",
        "_kind",
        "_last_good",
        "_learned_at",
        "_limit",
        "_near_step",
        "_overload_level",
        "_pace",
        "_pace_429s",
        "_pace_ceiling",
        "_pace_rate",
        "_pace_samples",
        "_pace_step",
        "_pace_until",
        "_paced_measure",
        "_paced_since",
        "_phase",
        "_probe_successes",
        "_probe_top",
        "_probed",
        "_probing",
        "_ramp",
        "_rate",
        "_settings",
    )

    def __init__(
        self,
        settings: ControllerSettings,
        now: float,
        learned: Learned | None = None,
    ) -> None:
        self._settings = settings
        self._evidence = Evidence(settings, now)
        self._phase = Phase.GROW
        self._limit = settings.start
        self._overload_level: int | None = None
        self._probe_successes = 0
        # The clean level this epoch was raised from (see _on_climb).
        self._last_good: int | None = None
        # What the site admits: a rate, and the answer time the limit was
        # derived at (a rate-limited site's concurrency follows it).
        self._rate: float | None = None
        self._kind = LimitKind.UNKNOWN
        self._derived_at: float | None = None
        # The site's part of it (less the hop), None if not measured, and
        # the pace while the answer time stood there.
        self._derived_site: float | None = None
        self._derived_pace: float | None = None
        self._learned_at: float | None = None
        self._pace: float | None = None
        self._pace_until = now
        # PACED: the rate sends are paced at, the next probe step up, when
        # the pace was last cut (probes wait probe_interval after it, less
        # once the opening is over), and
        # 429s sent with the concurrency binding (counted, and not yet).
        self._pace_rate: float | None = None
        self._pace_step = settings.pace_step
        self._near_step = settings.pace_step
        # A probe has ended at a 429 that measured the rate: the opening is
        # over (_OPENED_WAIT). Never reset: a site that drops its limit later
        # is measured after its burst, and a warm start or a revived domain
        # begins with the opening's probes.
        self._probed = False
        self._paced_since = now
        self._capped_seen = 0
        self._capped_429s = 0
        # The last paced rate a whole clean window confirmed.
        self._clean_pace: float | None = None
        # The rate measured at the last climb while paced (or learned).
        self._paced_measure: float | None = None
        # Paced answers and 429s since the pace last changed: a pace a
        # little above the site's rate draws one 429 a window, too few for a
        # window to tell, but not for several.
        self._pace_samples = 0
        self._pace_429s = 0
        # (admitted rate, answer time) of the last measured climbs.
        self._climbs: list[tuple[float, float]] = []
        self._ramp: _Ramp | None = None
        # PACED after a rate-first slow start that measured nothing: the
        # lowest pace known to draw 429s (the probes stop below it).
        self._pace_ceiling: float | None = None
        # PACED, answers much faster than where the rate was measured, until
        # the pace next changes: the pace an in-flight cap admits now (the
        # probes step halfway towards it; a rate limit admits no more).
        self._probe_top: float | None = None
        # PACED, probing up: the pace the probes rose from (clean since the
        # last cut, which left a token bucket empty), when they began, and
        # the 429 before the first one to a probe (see _end_probe).
        self._probing = _Probe()
        # After slow start's climb, until the site admits again (_Hold).
        self._hold: _Hold | None = None
        if learned is not None:
            self._start_warm(learned, now)
        elif settings.slow_start and settings.slow_start < settings.start:
            self._limit = max(settings.floor, settings.slow_start)
            self._phase = Phase.SLOW_START
            self._evidence.watch_from_next_429()
            if settings.slow_start_rate > 0:
                self._ramp = _Ramp(rate=settings.slow_start_rate)

    def _start_warm(self, learned: Learned, now: float) -> None:
        """Start from what an earlier crawl (or this one, before an
        eviction) learned."""
        self._limit = clamp(learned.concurrency, self._settings)
        self._rate = learned.rate
        self._kind = learned.kind
        self._derived_at = learned.answer_time
        self._learned_at = now
        if (
            learned.rate is not None
            and learned.kind is not LimitKind.INFLIGHT
            and self._settings.rate_pacing
        ):
            # Paced from the first send at the rate learned: no volley,
            # and the concurrency is what that rate keeps in flight.
            self._enter_paced(now, learned.rate * (1 - self._settings.pace_margin))
            self._paced_measure = learned.rate
            # A rate learned before is probed later: a few seconds more
            # at a rate known to be clean cost less than an overshoot.
            self._paced_since = now + self._settings.probe_interval
            self._limit = self._paced_limit(learned.answer_time)
            return
        if learned.rate is not None or learned.kind is not LimitKind.UNKNOWN:
            self._overload_level = self._limit + 1
            self._phase = Phase.SETTLED
        # The first volley of a warm start goes out spread over one answer
        # time, not at once: a token bucket's burst is smaller than the
        # level, and the level fits only once the first answers come back.
        ramp_rate = learned.rate
        if ramp_rate is None and learned.answer_time:
            ramp_rate = learned.concurrency / learned.answer_time
        if ramp_rate and learned.answer_time:
            self._pace = 1.0 / ramp_rate
            self._pace_until = now + learned.answer_time

    @property
    def settings(self) -> ControllerSettings:
        return self._settings

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def kind(self) -> LimitKind:
        return self._kind

    @property
    def rate(self) -> float | None:
        """Admitted answers per second when the 429s last climbed."""
        return self._rate

    @property
    def untouched(self) -> bool:
        """Nothing learned that a fresh controller would not start with: no
        limit, rate or kind found, not paced, not warm-started (the limit
        may have grown from the start, as a fresh one's would)."""
        return (
            self._phase in (Phase.SLOW_START, Phase.GROW)
            and self._overload_level is None
            and self._rate is None
            and self._kind is LimitKind.UNKNOWN
            and self._pace_rate is None
            and self._learned_at is None
        )

    @property
    def epoch(self) -> int:
        """Bumped on every limit change (but the steps of slow start)."""
        return self._evidence.epoch

    @property
    def overload_level(self) -> int | None:
        """The lowest level known (learned) to draw 429s, or None; unlike
        ``settings.maximum``, which is configured."""
        return self._overload_level

    def learned(self, now: float) -> Learned | None:
        """What was learned so far, or None if nothing yet (``now`` is
        stamped as its time, so pass the clock the store should keep)."""
        samples = self._evidence.total_samples
        if self._phase is Phase.SLOW_START or samples < self._settings.min_samples:
            return None
        # The clean level: not a probe above it.
        level = self._limit - 1 if self._phase is Phase.PROBE else self._limit
        rate = self._rate
        if self._pace_rate is not None and rate is None:
            # Paced since slow start, no climb measured at a pace yet.
            rate = self._clean_pace
        kind = self._kind
        if self._pace_rate is not None and kind is LimitKind.INFLIGHT:
            # An in-flight cap behind a hop, paced: a warm start paces it at
            # the rate (unpaced, it would start at the paced concurrency,
            # headroom included, which the cap refuses).
            kind = LimitKind.UNKNOWN
        return Learned(
            concurrency=max(self._settings.floor, level),
            rate=rate,
            kind=kind,
            answer_time=self._derived_at or self._evidence.answer_time(),
            at=now,
            samples=samples,
        )

    @property
    def pace_rate(self) -> float | None:
        """Sends per second while ``PACED``, else None."""
        return self._pace_rate

    def pace(self, now: float) -> float | None:
        """Seconds to leave between two sends, or None (no pacing): always
        while ``PACED``; otherwise only over the first answer time of a warm
        start, so its first volley does not go out at once."""
        if self._pace_rate is not None:
            paced = 1.0 / self._send_rate()
            hold = self._hold
            return paced if hold is None else max(self._held_gap(hold, now), paced)
        if self._ramp is not None:
            return 1.0 / self._ramp.rate
        if self._pace is not None and now < self._pace_until:
            return self._pace
        return None

    def on_sent(self, now: float, inflight: int) -> Ticket:
        """A request is going out; ``inflight`` counts it too."""
        return self._evidence.sent(now, inflight)

    def record(self, ticket: Ticket, outcome: Outcome, now: float) -> None:
        """The outcome of the request ``ticket`` was issued for; its answer
        time is ``now - ticket.sent_at``.

        Requests sent under an earlier limit or while the site settled after
        a backoff, and ignored outcomes, are not evidence about the current
        limit (in slow start every answer is: the limit only grew).
        """
        if (
            outcome is Outcome.RATE_LIMITED
            and self._probing.since is not None
            and self._probing.bounded
            and self._kind is not LimitKind.INFLIGHT
            and ticket.sent_at >= self._probing.since
            and not self._probing.hit
            and ticket.inflight
            < max(self._limit - 1, self._settings.capped_min_inflight)
        ):
            # The first 429 to a request sent while probing: the mark is the
            # 429 before it (this one moves it).
            self._probing.hit = True
            self._probing.mark = self._evidence.refusal_mark
        hold = self._hold
        if hold is not None and outcome is not Outcome.IGNORED:
            if outcome is Outcome.RATE_LIMITED:
                if ticket.sent_at >= hold.since:
                    hold.refused += 1
            elif ticket.sent_at >= hold.after and hold.opened is None:
                hold.opened = ticket.sent_at
        self._evidence.answered(
            ticket, outcome, now, any_epoch=self._phase is Phase.SLOW_START
        )
        if (
            hold is not None
            and outcome is Outcome.RATE_LIMITED
            and self._evidence.refused_everything()
        ):
            # Still coming back from the sends before the climb: the site
            # refused them all, so the pace would be refused whole too.
            hold.trickle = True
        if self._ramp is not None:
            self._ramp_answer(self._ramp, ticket, outcome, now)
        if (
            outcome is Outcome.RATE_LIMITED
            and self._phase is Phase.PACED
            and ticket.inflight
            >= max(self._limit - 1, self._settings.capped_min_inflight)
            and ticket.epoch == self._evidence.epoch
            and ticket.sent_at >= self._evidence.evidence_from
        ):
            # Refused with the concurrency, not the pace, binding: paced
            # below a token bucket's rate, the concurrency never matters.
            self._capped_429s += 1

    def decide(self, now: float) -> Decision | None:  # noqa: PLR0911, PLR0912
        """Judge the evidence so far: None if it is not enough yet.

        A climbing 429 share is acted on at once, and so are the steps of
        slow start and an answer-time shift on a rate-limited site; anything
        else waits for a full window (``window_seconds`` and ``min_samples``
        answers).
        """
        s = self._settings
        ev = self._evidence
        if self._ramp is not None:
            return self._ramp_step(self._ramp, now)
        if self._hold is not None:
            return self._end_hold(self._hold, now)
        if ev.watch is not None and self._phase is Phase.PACED:
            checked = self._check_pace(now)
            if checked is not None:
                return checked
        at_once = self._cap_shift(now)
        if at_once is None and self._probing.hit and self._phase is Phase.PACED:
            at_once = self._end_probe(now)
        if at_once is not None:
            return at_once
        if ev.climbing:
            if self._phase is Phase.PACED:
                return self._on_paced_climb(now)
            return self._on_climb(now)
        if self._phase is Phase.SLOW_START and self._limit < self._slow_start_top():
            return self._slow_start_step(now)
        # (At slow start's top, below the maximum: judged by windows, as
        # GROW is; a climb there is still slow start's, on a ramp.)
        w = ev.window
        if (
            self._phase is Phase.PACED
            and s.paced_trim_samples
            and w.rate_limited >= _PACED_429S
            and w.samples >= s.paced_trim_samples
        ):
            # A few 429s at a pace: judged now, not when the window is full
            # (at a few answers per second, a full window takes seconds).
            return self._paced_window(now)
        if now - w.start < s.window_seconds or w.samples < s.min_samples:
            return None
        if self._phase is Phase.PACED:
            return self._paced_window(now)
        rederived = self._rederive(now)
        if rederived is not None:
            return rederived
        if w.rate_limited > s.tolerated_share * w.samples:
            # More 429s than tolerated, but not (yet) climbing: stay put.
            return self._apply(now, self._limit, Reason.HOLD)
        if w.inflight_sum < s.min_utilization * self._limit * w.sends or not w.sends:
            return self._apply(now, self._limit, Reason.IDLE)
        return self._clean_window(now)

    # -- the decisions ---------------------------------------------------------

    def _slow_start_step(self, now: float) -> Decision | None:
        ev = self._evidence
        used = ev.window.peak_inflight >= self._settings.min_utilization * self._limit
        step = math.floor(ev.ok_since_step * self._settings.slow_start_gain)
        if ev.cusum > 0 and not self._quiet(now):
            # A 429 (not yet outweighed by clean answers) stops the growth:
            # with a slow hop, more are on their way, and growing on until
            # they climb doubles the overshoot. Not for ever: a stray 429
            # outweighed only after 49 clean answers held a slow site's
            # first volley for seconds, and one more for the whole crawl.
            ev.ok_since_step = 0
            return None
        if step < 1 or not used:
            return None
        target = min(clamp(self._limit + step, self._settings), self._slow_start_top())
        ev.ok_since_step = 0
        if target == self._settings.maximum:
            self._enter(Phase.GROW)
        # Not a last good level either: slow start is meant to overshoot.
        self._last_good = None
        return self._apply(
            now, target, Reason.INCREASE, new_epoch=False, keep_last_good=True
        )

    def _quiet(self, now: float) -> bool:
        """No 429 came back for ``_QUIET_SECONDS`` (or an answer time, if
        longer)."""
        ev = self._evidence
        mark = ev.refusal_mark
        if mark is None:
            return True
        return now - mark[0] >= max(ev.answer_time() or 0.0, _QUIET_SECONDS)

    def _slow_start_top(self) -> int:
        """The highest limit slow start doubles to (``slow_start_until``)."""
        s = self._settings
        if not s.slow_start_until:
            return s.maximum
        return clamp(math.ceil(s.start * s.slow_start_until - 1e-9), s)

    def _ramp_answer(
        self, ramp: _Ramp, ticket: Ticket, outcome: Outcome, now: float
    ) -> None:
        """Rate-first slow start: a 429 to a request sent after the last cut
        cuts the pace at once (the requests sent before the cut went out too
        fast already, and say nothing about the cut pace); before the first
        cut, only a second 429 within ``slow_start_rate_strays`` answers
        does."""
        since = ramp.cut_at
        # Sent two gaps of the cut pace after the cut or later: a token
        # bucket left empty has a token by the first gap only if its rate
        # is above the pace, so the first send after a cut is refused even
        # when the cut pace is a little below the site's rate.
        fresh = since is None or ticket.sent_at >= since + _RAMP_GAPS / ramp.rate
        if not fresh:
            return
        if outcome is Outcome.OK and since is not None:
            ramp.clean += 1
        elif outcome is Outcome.OK and ramp.lone is not None:
            ramp.lone += 1
            if ramp.lone > self._settings.slow_start_rate_strays:
                ramp.lone = None  # a stray: that many clean answers since
        elif (
            outcome is Outcome.RATE_LIMITED
            and since is None
            and ramp.lone is None
            and self._settings.slow_start_rate_strays
        ):
            # The first 429: a pace past the site's rate draws the next one
            # within a few answers, a site that refuses a page now and then
            # (1% whatever the load) does not; the growth waits meanwhile.
            ramp.lone = 0
        elif outcome is Outcome.RATE_LIMITED:
            # The first cut halves (the pace grew past the site's rate while
            # a burst hid it); a later one keeps the share of the answers
            # since the last cut that were clean (a site admits its rate of
            # a pace above it), halving at most.
            share = ramp.clean / (ramp.clean + 1)
            ramp.refused = min(ramp.refused, ramp.rate)
            ramp.measured = share > self._settings.decrease_factor
            cut = max(self._settings.decrease_factor, share)
            ramp.rate = max(ramp.rate * cut, _MIN_PACE_RATE)
            ramp.cut_at = now
            ramp.clean = 0
            ramp.lone = None

    def _ramp_step(self, ramp: _Ramp, now: float) -> Decision | None:
        """Rate-first slow start: until the first cut, each clean answer
        raises the pace by ``slow_start_rate_gain`` (not while a 429 is
        pending or, as in slow start, not yet outweighed nor 3 s old: see
        ``_quiet``) and the concurrency is
        what the pace keeps in flight, with headroom (the pace binds). Cut,
        it is paced (``PACED``) at the cut pace once that answers clean."""
        s = self._settings
        ev = self._evidence
        if ramp.cut_at is not None:
            ev.ok_since_step = 0
            return self._ramp_done(ramp, now) if ramp.clean >= _RAMP_CLEAN else None
        if ramp.lone is not None or (ev.cusum > 0 and not self._quiet(now)):
            # A 429 pending, or a stray's (see _quiet) not outweighed yet.
            ev.ok_since_step = 0
            return None
        if ev.ok_since_step < 1:
            return None
        ramp.rate += s.slow_start_rate_gain * ev.ok_since_step
        ev.ok_since_step = 0
        answer_time = ev.answer_time()
        if answer_time is None:
            return None
        level = admitted_level(ramp.rate, answer_time)
        target = max(clamp(math.ceil(level * s.pace_headroom) + 1, s), self._limit)
        if target == self._limit:
            return None
        if target == s.maximum:
            self._enter(Phase.GROW)  # no limit seen up to the maximum
        self._last_good = None
        return self._apply(
            now, target, Reason.INCREASE, new_epoch=False, keep_last_good=True
        )

    def _ramp_done(self, ramp: _Ramp, now: float) -> Decision:
        """Paced at the ramp's cut pace: measured, if its last cut kept the
        clean share; else probed up in full steps, below the lowest pace a
        429 cut."""
        answer_time = self._evidence.answer_time()
        self._enter_paced(now, ramp.rate)
        self._paced_measure = ramp.rate if ramp.measured else None
        self._pace_ceiling = None if ramp.measured else ramp.refused
        self._evidence.reset_climb()
        return self._apply(now, self._paced_limit(answer_time), Reason.BACKOFF)

    def _clean_window(self, now: float) -> Decision:
        """Where to go after a clean window in which the limit was used."""
        s = self._settings
        ev = self._evidence
        if self._phase is Phase.SLOW_START:
            # Slow start's top (slow_start_until) held clean for a window:
            # the guide's growth from here.
            self._enter(Phase.GROW)
        if self._phase is Phase.PROBE:
            if now - ev.epoch_start < s.probe_seconds:
                return self._apply(now, self._limit, Reason.HOLD)
            self._probe_successes += 1
            if self._overload_level is not None:
                self._overload_level = max(self._overload_level, self._limit + 1)
            if self._probe_successes < s.probes_to_grow:
                return self._probe(now)
            # The site admits more than it did: forget the old level.
            self._enter(Phase.GROW)
        if self._phase is Phase.GROW:
            target = grow(self._limit, s)
            reason = Reason.INCREASE if target != self._limit else Reason.HOLD
            return self._apply(now, target, reason)
        level = self._overload_level
        assert level is not None  # SETTLED
        if self._limit + 1 < level:
            # Back up towards the level that drew 429s at half the pace: the
            # cut may have been too deep, or the site may have dropped.
            return self._apply(now, regrow(self._limit, level, s), Reason.INCREASE)
        settled = now - ev.epoch_start >= s.probe_interval
        if settled and ev.epoch_samples >= s.probe_samples:
            return self._probe(now)
        return self._apply(now, self._limit, Reason.HOLD)

    def _probe(self, now: float) -> Decision:
        target = clamp(self._limit + 1, self._settings)
        if target == self._limit:  # at the maximum: nothing to probe
            self._enter(Phase.SETTLED)
            return self._apply(now, target, Reason.HOLD)
        self._enter(Phase.PROBE)
        return self._apply(now, target, Reason.PROBE)

    def _on_climb(self, now: float) -> Decision:
        """The 429 share climbed: go where the site's admitted flow says, in
        one step (Little's law: admitted answers per second times their
        answer time), or, without enough clean answers to measure it, cut
        by the share of 429s."""
        s = self._settings
        ev = self._evidence
        opening = self.untouched  # the crawl's first climb on this site
        slow_start = self._phase is Phase.SLOW_START
        answer_time = ev.answer_time()
        rate = ev.admitted_rate(now)
        steady = ev.answer_time_steady()
        if not steady:
            # The answer time is moving (answers at the old and the new one
            # arrive together): the latest answers tell the new one, and the
            # burst of answers overstates the rate, so keep the one learned.
            answer_time = ev.answer_time_recent() or answer_time
            if rate is not None and self._rate is not None:
                rate = min(rate, self._rate)
        measured = ev.ok_count(now) >= s.min_samples
        # Answers much faster than where the level was derived: the level
        # that was clean then says nothing now (a rate-limited site).
        faster = (
            self._derived_at is not None
            and answer_time is not None
            and answer_time < self._derived_at * (1 - s.answer_time_shift)
        )
        if rate is not None and answer_time is not None:
            estimate = math.floor(admitted_level(rate, answer_time))
            if (
                self._phase is Phase.SLOW_START
                and ev.refused_inflight is not None
                and ev.refused_inflight > estimate
            ):
                # Slow start: the last second's rate includes the ramp (too
                # low); what was in flight when the first 429 came includes
                # the site's burst (too high). The site's level lies between.
                estimate = (estimate + ev.refused_inflight) // 2
            target = clamp(min(self._limit - 1, estimate), s)
            if (
                measured
                and ev.answer_time_steady()
                and self._phase is not Phase.SLOW_START
            ):
                self._learn_kind(rate, ev.site_time(answer_time))
                self._rate = rate
                self._derive_at(answer_time)
        else:
            target = backoff_target(self._limit, ev.ok_share_of_climb(), s)
        if (
            self._last_good is not None
            and self._last_good < self._limit
            and not (measured and faster)
        ):
            # The 429s began right after a raise or a probe from a level that
            # was clean: go back there. If the 429s go on at that level too,
            # the next climb has no last good level and uses the estimate.
            target = max(target, clamp(self._last_good, s))
        self._last_good = None
        refused_sent = ev.refused_sent
        ev.reset_climb()  # also when already at the floor: judge afresh
        # The estimate is measured over a second that may include the ramp
        # (too low) or a burst (too high): grow back towards one step above
        # it at half pace, and let the next climb, at saturation, settle it.
        # Measured on fewer than min_samples clean answers (the first volley),
        # it is only a guess: grow back up to the level that drew the 429s.
        margin = math.ceil(target * s.increase_factor - 1e-9) + 1
        self._overload_level = (
            max(min(self._limit, margin), target + 1) if measured else self._limit
        )
        if (
            rate is not None
            and answer_time is not None
            and self._kind is not LimitKind.INFLIGHT
            and s.rate_pacing
        ):
            # Take it for a rate limit until the evidence says otherwise:
            # pace at what the site admitted.
            # Slow start overshot: the limit it reached drew 429s, and the
            # paced rate bisects up towards it.
            # The level estimated (Little's law, in slow start halfway to
            # what was in flight at the first 429) over the answer time; the
            # next climb, at saturation, measures the rate.
            guess = max(estimate, 1) / answer_time
            first = ev.first_answer
            if (
                self._phase is Phase.SLOW_START
                and first is not None
                and now - first < _BURST_SECONDS
            ):
                # Measured while a token bucket's burst was being spent:
                # the burst inflates the rate (a later climb has it
                # spread over a longer span).
                guess *= s.slow_start_pace_share
            # Slow start's guess is checked against what the site admits of
            # it (_check_pace).
            self._enter_paced(now, guess, check=slow_start)
            if opening and refused_sent is not None:
                # Slow start's climb: sent at once, a window limiter whose
                # count slow start spent refuses the whole pace; first find
                # out whether the site admits anything (_Hold).
                self._hold = _Hold(since=now, after=refused_sent)
            return self._apply(now, self._paced_limit(answer_time), Reason.BACKOFF)
        self._enter(Phase.SETTLED)
        return self._apply(now, target, Reason.BACKOFF)

    # -- paced: a rate limit ---------------------------------------------------

    def _check_pace(self, now: float) -> Decision | None:
        """A pace from an estimate that may overstate the site's rate is
        checked against what the site admitted between its 429s from the
        next one on (:meth:`Evidence.admitted_between_429s`): slow start's
        (the rate over a burst), a trim's (by the share of 429s in a window
        the burst half hid), a probe's end (the rate between two 429s
        seconds apart). Above it, the pace goes a little below it, measured.
        Not measured within ``_WATCH_SECONDS`` (too few 429s: the pace is not
        above the site's rate), it stands."""
        ev = self._evidence
        watch = ev.watch
        assert watch is not None and self._pace_rate is not None
        if ev.reopened is not None:
            # A window limiter (seen closed): what it admits between 429s is
            # what it admitted a window before, not a rate (_end_hold).
            ev.unwatch()
            return None
        rate = ev.admitted_between_429s()
        if rate is None:
            # From its first 429, or (none yet) from when it was armed.
            began = watch.since if watch.first else watch.armed_at
            if began is not None and now - began > _WATCH_SECONDS:
                ev.unwatch()
            return None
        ev.unwatch()
        pace = rate * (1 - self._settings.pace_margin)
        if pace >= self._pace_rate:
            return None
        self._rate = rate
        self._paced_measure = rate
        self._pace_ceiling = None
        self._capped_reset()
        answer_time = ev.answer_time()
        if answer_time is not None and ev.answer_time_steady():
            # Measured at this answer time (and the pace it was measured
            # at, as a climb's): much faster answers later say an in-flight
            # cap may admit more (_follow_faster_answers).
            self._derive_at(answer_time)
        self._pace_rate = max(pace, _MIN_PACE_RATE)
        self._restart_pace(now)
        ev.reset_climb()
        return self._apply(now, self._paced_limit(answer_time), Reason.BACKOFF)

    def _capped_reset(self) -> None:
        """A rate measured: 429s at a pace below it are an in-flight cap's,
        and those counted before say nothing of it."""
        self._capped_seen = self._capped_429s = 0

    def _pace_count_reset(self) -> None:
        self._pace_samples = self._pace_429s = 0

    def _restart_pace(
        self, now: float, *, step: bool = True, check: bool = False
    ) -> None:
        """The pace changed: probes wait from now, none is under way, none
        steps towards a top any more, the 429s counted at the old pace are
        forgotten, and (``step``) the next probe step is the first again;
        unless ``check``, the answers from a 429 on are no longer watched
        (_check_pace)."""
        self._paced_since = now
        self._probe_top = None
        if not check:
            self._evidence.unwatch()
        self._probe_reset()
        self._pace_count_reset()
        if step:
            self._pace_step = self._near_step = self._settings.pace_step

    def _probe_reset(self) -> None:
        """The pace was cut (or left): no probe under way."""
        self._probing = _Probe()

    def _end_probe(self, now: float) -> Decision | None:
        """A probe drew its first 429: the site's rate lies between the pace
        the probes rose from (clean after a cut that left a token bucket
        empty) and the pace now. Go back at once, not after a few more 429s
        (a token bucket's burst hid the overload while the steps went on,
        so the pace may be well above the rate by now): to the rate the
        site admitted since its 429 before (empty at both, it admitted at
        most its rate in between), never below where the probes began; the
        pace the 429 came at is the new ceiling of the probes."""
        s = self._settings
        ev = self._evidence
        assert self._pace_rate is not None and self._probing.base is not None
        base = self._probing.base
        admitted = ev.rate_between_refusals(self._probing.mark, now)
        if admitted is not None and admitted < self._pace_rate * s.decrease_factor:
            # Less than the deepest backoff: the span held long stretches
            # far below the site's rate (a limit raised since, a crawler
            # short of work), and bounds nothing useful. The 429s that
            # follow are measured as before (a trim, a climb).
            self._probing.hit = False
            self._probing.since = math.inf  # no other 429 ends this probe
            return None
        pace = base
        if admitted is not None:
            self._probed = True
            pace = max(base, min(admitted, self._pace_rate) * (1 - s.pace_margin))
            self._rate = pace / (1 - s.pace_margin)
            self._capped_reset()
        if ev.reopened is not None and ev.refused_sent is not None:
            # A window limiter (seen closed before): this 429 may be its
            # window running out, closed until it ends (_Hold).
            self._hold = _Hold(since=now, after=ev.refused_sent, pace=self._pace_rate)
        self._restart_pace(now)
        ev.reset_climb()
        if self._hold is None:
            ev.watch_from_next_429(now)  # _check_pace
        measure = pace / (1 - s.pace_margin)
        if self._pace_rate <= measure * (1 + _MAX_PACE_STEP) ** 2:
            # The 429 came within two full steps of where the pace is back
            # to: measured, probed again in small steps after the wait.
            self._paced_measure = measure
            self._pace_ceiling = None
        else:
            # Probed back up at once, in full steps below the pace the 429
            # came at and small ones near it (see _paced_window): each
            # overshoot now costs about one 429, and the admitted rate is
            # only a lower bound (less what a token bucket refilled while
            # full).
            self._paced_measure = None
            self._pace_ceiling = self._pace_rate
        self._pace_rate = pace
        answer_time = ev.answer_time()
        if answer_time is not None and (
            ev.answer_time_steady() or self._kind is not LimitKind.INFLIGHT
        ):
            self._derive_at(answer_time)
        return self._apply(now, self._paced_limit(answer_time), Reason.BACKOFF)

    def _held_gap(self, hold: _Hold, now: float) -> float:
        """Seconds between two sends while held: the trickle's gap once
        ``_HOLD_TRICKLE`` sent after the climb were refused, or, told at
        once (``hold.trickle``), its first gap until a probe can have come
        back; 0 otherwise (the pace alone)."""
        if hold.refused >= _HOLD_TRICKLE:
            return self._hold_gap(hold, now)
        if hold.trickle:
            # Later, the trickle goes on only if its probes were refused: a
            # Retry-After that held the slot sent none, and the site it
            # names open is open.
            answer_time = self._evidence.answer_time() or _HOLD_SHARE
            if now - hold.since < max(_HOLD_CLOSED, 2 * answer_time):
                return answer_time * _HOLD_FIRST
        return 0.0

    def _hold_gap(self, hold: _Hold, now: float) -> float:
        """Seconds between two probes of the trickle: ``_HOLD_FIRST`` of an
        answer time at first, then ``_HOLD_SHARE`` of the time since the
        climb, so that a long closed spell (a fixed window's, where no
        ``Retry-After`` holds the slot) costs few 429s."""
        answer_time = self._evidence.answer_time() or _HOLD_SHARE
        return max(answer_time * _HOLD_FIRST, (now - hold.since) * _HOLD_SHARE)

    def _end_hold(self, hold: _Hold, now: float) -> Decision | None:
        """Held (see :class:`_Hold`) until a request sent after the climb's
        first 429 is admitted: None before. Then, if the site was closed
        (the trickle's probes refused, ``_HOLD_REFUSED``, or nothing sent
        after the first 429 admitted for ``_HOLD_CLOSED`` seconds: a
        ``Retry-After`` that held the slot sends no probes), it was not
        rate-limiting: a window limiter whose count was spent, which admits
        again once its window frees. Slow start's pace (the rate measured
        over the burst, twice the site's or more) would be refused whole
        again until a climb halved it; a paced climb's cut would halve a
        pace the window admits most of. The site's rate is what it
        admitted over the whole cycle, closed time included: the clean
        answers to requests sent from the last time it reopened (or the
        crawl's first) to the one that found it open now, per second (a
        lower bound, by the gap between two probes): a fixed window's count
        over its length. Otherwise nothing changes, and the climb's pace
        stands: a token bucket admits its rate of what follows its first
        429, so the request admitted was sent before the climb was judged,
        or soon after the first 429, whatever was refused meanwhile (behind
        a slow hop the 429s come back first)."""
        if hold.opened is None:
            return None
        self._hold = None
        ev = self._evidence
        shut = hold.opened - hold.after
        # From the first refused request out to the answer that found the
        # site open again (about an answer time after the opener went out).
        told = shut + (ev.answer_time() or 0.0)
        closed = hold.opened > hold.since and (  # sent before the climb: open
            (hold.refused >= _HOLD_TRICKLE + _HOLD_REFUSED and told >= _HOLD_SHUT)
            # Told closed by the 429s of the sends before the climb: the
            # trickle that followed sent too few probes to be refused so.
            or (hold.trickle and told >= _HOLD_SHUT)
            or shut >= _HOLD_CLOSED
        )
        mark = ev.reopened
        if mark is not None:
            since, ok_then = mark.sent, mark.ok_before
        elif ev.first_sent is not None:
            since, ok_then = ev.first_sent, 0
        else:
            return None
        if not closed or hold.opened <= since:
            return None
        # The request that found it open starts the next cycle.
        ev.reopened = _Reopened(hold.opened, ev.ok_total - 1, hold.opened - since)
        assert self._pace_rate is not None
        # A lower bound: the first place freed before the probe that found
        # it (as much as the gap between two probes before).
        estimate = (ev.ok_total - 1 - ok_then) / (hold.opened - since)
        before = self._pace_rate if hold.pace is None else hold.pace
        self._rate = estimate
        self._paced_measure = estimate
        self._pace_ceiling = None
        self._enter_paced(now, min(before, estimate))
        ev.reset_climb()
        return self._apply(now, self._paced_limit(ev.answer_time()), Reason.BACKOFF)

    def _enter_paced(
        self, now: float, pace_rate: float, *, check: bool = False
    ) -> None:
        self._restart_pace(now, check=check)
        self._pace_rate = max(pace_rate, _MIN_PACE_RATE)
        self._overload_level = None
        self._enter(Phase.PACED)

    def _send_rate(self) -> float:
        """Sends per second that bring the site the paced rate: more by the
        share that fails before it (the gateway's errors say nothing)."""
        assert self._pace_rate is not None
        return self._pace_rate / (1 - min(self._evidence.ignored_share(), 0.5))

    def _paced_limit(self, answer_time: float | None) -> int:
        """The concurrency of the paced rate: what it keeps in flight at
        ``answer_time`` (Little's law), with ``pace_headroom``, plus one."""
        assert self._pace_rate is not None
        if answer_time is None:
            return self._limit
        level = admitted_level(self._send_rate(), answer_time)
        return clamp(
            math.ceil(level * self._settings.pace_headroom) + 1, self._settings
        )

    def _trim_pace(
        self, now: float, share: float, answer_time: float | None
    ) -> Decision:
        """A few 429s while paced: cut the pace by their ``share``."""
        s = self._settings
        ev = self._evidence
        assert self._pace_rate is not None
        if self._pace_ceiling is not None:
            self._pace_ceiling = min(self._pace_ceiling, self._pace_rate)
        elif self._paced_measure is None:
            # Nothing measured yet: the pace that drew these 429s bounds the
            # probes that follow (full steps below it, then small ones), and
            # the first 429 to them ends them (_end_probe). Unbounded, they
            # went up in full steps again at once, and each cycle ended in
            # another trim (every 3-4 s at 20 req/s behind a hop).
            self._pace_ceiling = self._pace_rate
        if answer_time is not None and ev.answer_time_steady():
            # The pace the site began to refuse at: with another at a
            # different answer time it tells the kind of limit.
            self._learn_kind(self._pace_rate, ev.site_time(answer_time))
            self._derive_at(answer_time)
        if self._paced_measure is not None:
            # The rate the trim says, not the higher one a climb measured
            # over a burst: the near probes end a step above it, and a warm
            # start begins from it.
            trimmed = self._pace_rate * (1 - share)
            self._paced_measure = min(self._paced_measure, trimmed)
            if self._rate is not None:
                self._rate = min(self._rate, trimmed)
        self._pace_rate = self._pace_rate * (1 - share) * (1 - s.pace_margin)
        self._restart_pace(now)
        ev.watch_from_next_429(now)  # _check_pace
        return self._apply(now, self._paced_limit(answer_time), Reason.BACKOFF)

    def _paced_window(self, now: float) -> Decision:
        """A judged window while paced: the concurrency follows the answer
        time; a few 429s trim the pace by their share; clean and bound by
        the pace for long enough, the rate is probed a step up."""
        s = self._settings
        ev = self._evidence
        w = ev.window
        assert self._pace_rate is not None
        rate = ev.admitted_rate(now)
        answer_time = ev.answer_time()
        if self._in_flight_evidence(rate, answer_time) and rate and answer_time:
            return self._leave_pacing(now, rate, answer_time)
        self._pace_samples += w.samples
        self._pace_429s += w.rate_limited
        leaking = (
            self._pace_429s >= _PACED_429S
            and self._pace_429s > s.tolerated_share * self._pace_samples
        )
        if w.rate_limited >= _PACED_429S or leaking:
            # 429s below the climb's trigger, but more than a stray one (in
            # this window, or above the tolerated share over the windows
            # since the pace last changed): a pace a little above the site's
            # rate, which admits the rest.
            if w.rate_limited >= _PACED_429S:
                share = w.rate_limited / w.samples
            else:
                share = self._pace_429s / self._pace_samples
            return self._trim_pace(now, share, answer_time)
        if answer_time is not None:
            self._follow_faster_answers(answer_time)
        reason = Reason.REDERIVE
        clean = w.rate_limited <= s.tolerated_share * w.samples
        # The pace held the sends back (more would have gone out unpaced).
        # Not 90% or more: a busy event loop sends below the pace (12% below
        # under load in the benchmark), and a pace never taken as binding
        # is never probed up, not even when the site admits twice as much.
        bound = w.sends >= s.min_utilization * self._send_rate() * (now - w.start)
        # Nothing measured at a pace yet (the pace is slow start's guess):
        # no wait, and full steps, up to the first climb that measures.
        known = self._paced_measure
        wait = _OPENED_WAIT if self._probed else 1.0
        held = known is None or (
            now - self._paced_since >= s.probe_interval * wait
            and ev.epoch_samples >= s.probe_samples * wait
        )
        if clean and bound:
            self._clean_pace = self._pace_rate
        recent = ev.answer_time_median()
        if (
            self._derived_at is not None
            and recent is not None
            and abs(recent / self._derived_at - 1) < s.answer_time_shift
        ):
            # The pace while the answer time stands where it was derived.
            self._derived_pace = self._pace_rate
        if clean and bound and held:
            if self._probing.since is None:
                # The probes rise from here: clean since the last cut.
                self._probing.base = self._pace_rate
                self._probing.since = now
            # Near the rate measured, small steps (a token bucket shows an
            # overload only once its burst is spent); beyond it, steps that
            # double, so a raised limit is found soon.
            near = known is not None and self._pace_rate < known * _NEAR
            self._probing.bounded = self._probe_bounded(known, near=near)
            self._pace_rate *= 1 + self._probe_step(known, near=near)
            ceiling = self._pace_ceiling
            if known is None and ceiling is not None:
                top = ceiling * (1 - s.pace_margin)
                if self._pace_rate >= top:
                    # Below the lowest pace known to draw 429s: from here
                    # on, probed in small steps, as a measured rate is.
                    before = self._pace_rate / (1 + _MAX_PACE_STEP)
                    self._pace_rate = max(top, before)
                    self._paced_measure = ceiling
                    self._pace_ceiling = None
            self._pace_count_reset()
            self._grow_probe_steps(known, near=near)
            reason = Reason.PROBE
        return self._apply(now, self._paced_limit(answer_time), reason, new_epoch=False)

    def _follow_faster_answers(self, answer_time: float) -> None:
        """Paced with a rate measured, the kind of limit not known to be a
        rate: answers much faster than where it was measured restart the
        probes towards what an in-flight cap admits now (``_probe_top``).
        A rate measured with no answer time to stand for takes the first
        steady one."""
        s = self._settings
        ev = self._evidence
        assert self._pace_rate is not None
        if self._paced_measure is None:
            return
        if self._derived_at is None:
            if ev.answer_time_steady():
                # Measured with no answer time it stands for (while the
                # answer time moved, say): it stands for the first steady
                # one, so that a shift is seen.
                self._derive_at(answer_time)
            return
        if self._kind is LimitKind.RATE or answer_time >= self._derived_at * (
            1 - s.answer_time_shift
        ):
            return
        # A site that limits requests in flight admits more now, by its part
        # of the answer time (a rate limit admits no more). Probe at once,
        # halfway towards that each step, until a climb measures the rate
        # again (on a rate limit it costs that climb). The factor from the
        # median, as _cap_shift's: the mean still holds the slower answers.
        # (A warm start learned an answer time, not its site's part.)
        site = self._derived_site or ev.site_time(self._derived_at)
        median = ev.answer_time_median() or answer_time
        self._probe_top = self._pace_rate * site / ev.site_time(median)
        self._paced_measure = None
        self._derive_at(answer_time)

    def _probe_bounded(self, known: float | None, *, near: bool) -> bool:
        """Whether the first 429 to a probe from here ends it (_end_probe);
        if not, a climb measures its 429s.

        Below a pace known to draw 429s, or above a measured rate, beyond
        the near steps too: a token bucket's burst often outlasts them, and
        a climb's three 429s came back a hop late (simulated, seven
        limiters and three pools: 1.12% of the answers from the 20th second
        when only near steps were ended so, against 0.86%; and a raised
        limit found up to 24 s after the rise against 13). Not beyond them
        on a window limiter (seen closed), whose first 429 is its count
        running out (2.6% against 1.9% on a fixed window behind a mobile
        hop), nor with nothing measured and no bound."""
        if known is None:
            return self._pace_ceiling is not None
        return near or self._evidence.reopened is None

    def _grow_probe_steps(self, known: float | None, *, near: bool) -> None:
        """After a probe: beyond the near steps, the next step doubles (up to
        ``_RAISE_STEP``); near them, once the opening is over, it grows by
        ``_OPENED_GROWTH`` (up to ``_OPENED_NEAR_STEP``)."""
        if known is not None and not near:
            self._pace_step = min(self._raise_step() * 2, _RAISE_STEP)
        elif near and self._probed:
            top = max(_OPENED_NEAR_STEP, self._settings.pace_step)
            self._near_step = min(self._near_step * _OPENED_GROWTH, top)

    def _probe_step(self, known: float | None, *, near: bool) -> float:
        """The paced rate's next probe step up: full steps with nothing
        measured yet (after much faster answers, halfway towards what an
        in-flight cap admits now, up to ``_RAISE_STEP``); near the rate
        measured, small ones; beyond it, steps that grow. On a site seen
        closed (a window limiter), at most
        ``_WINDOW_STEP``: it shows an overload only at its window's end,
        several steps later."""
        if known is None:
            step = _MAX_PACE_STEP
            top = self._probe_top
            if top is not None and self._pace_rate is not None:
                # Halfway towards what an in-flight cap admits now, at
                # least the full step.
                step = min(max(step, (top / self._pace_rate - 1) / 2), _RAISE_STEP)
        else:
            step = self._near_step if near else self._raise_step()
        if self._evidence.reopened is not None:
            step = min(step, _WINDOW_STEP)
        return step

    def _raise_step(self) -> float:
        """The next probe step beyond the near ones (it doubles each probe,
        up to ``_RAISE_STEP``)."""
        if self._probed:
            return max(self._pace_step, _OPENED_RAISE_STEP)
        return self._pace_step

    def _on_paced_climb(self, now: float) -> Decision:
        """The 429s climbed while paced: pace a little below what the site
        admitted (a token bucket's rate, measured); or, with enough 429s
        sent while the concurrency was binding, leave pacing (an in-flight
        cap)."""
        s = self._settings
        ev = self._evidence
        assert self._pace_rate is not None
        pace = self._pace_rate
        answer_time = ev.answer_time()
        # Over the answers sent at this pace only (at most _RATE_SPAN).
        since = self._paced_since + (answer_time or 0.0)
        span = max(s.memory_seconds, min(_RATE_SPAN, now - since))
        rate = ev.admitted_rate(now, span)
        # Sent at the pace, the site admitted its rate and refused the rest:
        # the climb's share of clean answers times the pace is the rate (the
        # admitted rate also counts a burst spent just before).
        ok_share = ev.ok_share_of_climb()
        refused_sent = ev.refused_sent
        admitted_after = ev.admitted_after_refusal
        climb_429s = ev.run_limited
        ev.reset_climb()
        self._pace_ceiling = None
        self._restart_pace(now)
        if refused_sent is not None and not admitted_after and ev.reopened:
            # A site seen closed before (a window limiter), with nothing
            # sent after the climb's first 429 admitted yet: it may be
            # closed again (a fixed window whose count this pace spent
            # before the window's end refuses everything until then). The
            # cut below stands unless the requests sent from now on show it
            # closed; then it is paced at what it admitted over the whole
            # cycle (_end_hold), not at a cut that a window's end made
            # look like a drop. Not on a site never seen closed: behind a
            # slow hop a token bucket's 429s come back before the answers
            # it admitted meanwhile, and holding it cost a warm start on a
            # lowered limit 51 429s against 14 (`warm-lowered`).
            self._hold = _Hold(since=now, after=refused_sent, pace=pace)
        if rate is None or answer_time is None:
            # Too few clean answers to measure: cut by the share of 429s.
            cut = max(s.decrease_factor, ok_share)
            self._pace_rate = max(pace * cut, _MIN_PACE_RATE)
            return self._apply(now, self._paced_limit(answer_time), Reason.BACKOFF)
        # Most of the climb refused: the site's rate dropped (an in-flight
        # cap refuses a few now and then), and what it admits now is the
        # climb's share (the last seconds' rate is mostly the old one).
        dropped = ok_share < _DROPPED
        measured = False
        if dropped:
            # A short climb's share is noisy: at most halve per climb, unless
            # the rate admitted since the pace began says less (a pace that
            # slow start guessed from a token bucket's burst, several times
            # the site's rate: halving would take two more climbs). Never
            # below what the climb's share of clean answers says.
            halved = pace * max(ok_share, s.decrease_factor)
            floor = max(pace * ok_share, rate)
            measured = floor < halved
            rate = min(halved, floor)
        else:
            # Not below what the burst can explain: a short climb's share
            # is noisy.
            rate = min(rate, max(pace * ok_share, rate * _BURST_SHARE))
        if not dropped and self._in_flight_evidence(rate, answer_time):
            return self._leave_pacing(now, rate, answer_time)
        cycle = None if ev.reopened is None else ev.reopened.cycle
        if cycle is not None and admitted_after:
            # A window limiter (seen closed before) that admits again after
            # the climb's first 429: its window ended. The pace spent its
            # count that much early: less by the 429s over the window.
            trimmed = (pace - max(climb_429s, 1) / cycle) * (1 - s.pace_margin)
            # Never deeper than a backoff: on a short cycle (a slow token
            # bucket taken for a window) each 429 weighs so much that the
            # trim went below zero, to the floor.
            trimmed = max(trimmed, pace * s.decrease_factor)
            self._pace_rate = max(trimmed, _MIN_PACE_RATE)
            return self._apply(now, self._paced_limit(answer_time), Reason.BACKOFF)
        self._capped_seen = 0
        if not dropped and ev.answer_time_steady():
            # A saturated measurement: with another at a different answer
            # time it tells the kind of limit (behind a hop, by the site's
            # part of the answer time).
            self._learn_kind(rate, ev.site_time(answer_time))
        self._rate = rate
        # The highest rate the site admitted; after a drop, a guess from a
        # short climb: probed up in full steps until a climb measures it.
        if dropped and not measured:
            self._paced_measure = None
        elif dropped:
            self._paced_measure = rate
        else:
            self._paced_measure = max(self._paced_measure or 0.0, rate)
        if ev.answer_time_steady() or self._kind is not LimitKind.INFLIGHT:
            # (A moving answer time on an in-flight cap: _cap_shift follows
            # it from the pace before this climb, which the move caused.)
            self._derive_at(answer_time)
        self._pace_rate = max(min(rate, pace) * (1 - s.pace_margin), _MIN_PACE_RATE)
        return self._apply(now, self._paced_limit(answer_time), Reason.BACKOFF)

    def _in_flight_evidence(
        self, rate: float | None, answer_time: float | None
    ) -> bool:
        """Count the 429s refused while the concurrency, not the pace, was
        binding (sent with the limit in flight): paced below a token
        bucket's rate, the concurrency never matters, so they say the site
        limits requests in flight. True once there are ``_INFLIGHT_429S``
        since the last climb that measured a rate. Not counted while the
        ``rate`` admitted keeps less than ``_CAPPED_LEVEL`` in flight at
        ``answer_time``: on a site that answers in milliseconds the limit
        is one or two, and binds whenever anything is in flight."""
        if (
            rate is not None
            and answer_time is not None
            and admitted_level(rate, answer_time) < _CAPPED_LEVEL
        ):
            self._capped_429s = 0
        self._capped_seen += self._capped_429s
        self._capped_429s = 0
        return self._capped_seen >= _INFLIGHT_429S

    def _leave_pacing(self, now: float, rate: float, answer_time: float) -> Decision:
        """Not a rate limit after all: an in-flight cap. Limit the
        concurrency to what the site admitted (Little's law), unpaced."""
        self._kind = LimitKind.INFLIGHT
        self._capped_seen = 0
        level = math.floor(admitted_level(rate, answer_time))
        target = clamp(min(self._limit - 1, level), self._settings)
        self._overload_level = target + 1
        self._enter(Phase.SETTLED)
        return self._apply(now, target, Reason.BACKOFF)

    def _rederive(self, now: float) -> Decision | None:
        """A rate-limited site's concurrency follows its answer time: when
        that moved by ``answer_time_shift``, derive the level again from the
        learned rate, at once. Unknown kinds are only re-derived upwards (a
        wrong guess costs one climb, which then tells the kind)."""
        s = self._settings
        ev = self._evidence
        answer_time = ev.answer_time()
        if (
            self._rate is None
            or self._derived_at is None
            or answer_time is None
            or self._kind is LimitKind.INFLIGHT
            or self._phase not in (Phase.SETTLED, Phase.PROBE)
            or len(ev.answer_times) < ev.ANSWER_TIME_SAMPLES
        ):
            return None
        ratio = answer_time / self._derived_at
        if abs(ratio - 1) < s.answer_time_shift:
            return None
        if ratio < 1 and self._kind is LimitKind.UNKNOWN:
            return None
        target = clamp(math.floor(admitted_level(self._rate, answer_time)), s)
        self._derive_at(answer_time)
        if target == self._limit:
            return None
        up = target > self._limit
        # Raised from a clean level: if the guess was wrong (an in-flight
        # cap after all), the climb goes back there.
        self._last_good = self._limit if up else None
        level = target + 1
        if up and self._overload_level is not None:
            level = max(level, self._overload_level)
        self._overload_level = level
        self._enter(Phase.SETTLED)
        return self._apply(now, target, Reason.REDERIVE, keep_last_good=True)

    def _cap_shift(self, now: float) -> Decision | None:
        """A paced in-flight cap (behind a hop) whose answers got slower:
        the same sends now keep more of the site's places busy, so cut the
        pace at once, before the 429s climb, by the site's part of the
        answer time (the site admits its places over that). Unpaced, an
        in-flight cap's concurrency is left to the climbs: no simulated run
        told the kind there."""
        s = self._settings
        ev = self._evidence
        if (
            self._kind is not LimitKind.INFLIGHT
            or self._derived_at is None
            or self._derived_site is None
            or self._phase is not Phase.PACED
        ):
            return None  # before the median: this runs on every answer
        answer_time = ev.answer_time_median()
        if answer_time is None:
            return None
        site_factor = self._derived_site / ev.site_time(answer_time)
        # Slower only, and clearly: behind a hop the site's part is what is
        # left of the answer time, so its noise is larger, and a pace raised
        # on noise draws a burst of 429s (faster answers are found by the
        # probes, see _follow_faster_answers).
        if site_factor > 1 / _CAP_SHIFT:
            return None
        assert self._pace_rate is not None
        pace = self._pace_rate * site_factor
        if self._derived_pace is not None:
            # From the pace before a climb the slower answers caused.
            pace = min(self._pace_rate, self._derived_pace * site_factor)
        self._pace_rate = max(pace, _MIN_PACE_RATE)
        # The rate measured before says nothing now: probe in full steps
        # until a climb measures it again (the cut is from a pace that may
        # have been well below the cap).
        self._paced_measure = None
        if self._rate is not None:
            self._rate *= site_factor
        self._restart_pace(now, step=False)
        self._derive_at(answer_time)
        decision = self._apply(now, self._paced_limit(answer_time), Reason.REDERIVE)
        # The site is still full of what was sent before: 429s to what is
        # sent while it drains would blame the new pace.
        ev.evidence_from = now + min(s.backoff_settle_seconds, 2 * answer_time)
        return decision

    def _learn_kind(self, rate: float, answer_time: float) -> None:
        """Saturated measurements at answer times that differ tell what the
        site counts: the same rate means requests per second, the same level
        (rate times answer time) requests in flight. Each pair of climbs
        whose answer times differ by 40% or more votes (a measurement taken
        while the answer time was moving agrees with neither and abstains);
        the majority decides."""
        _keep_last(self._climbs, (rate, answer_time), _CLIMBS_KEPT)
        votes = {LimitKind.RATE: 0, LimitKind.INFLIGHT: 0}
        climbs = list(self._climbs)
        for i, (rate_a, time_a) in enumerate(climbs):
            for rate_b, time_b in climbs[i + 1 :]:
                if abs(time_b / time_a - 1) < _DISTINCT_TIMES:
                    continue
                same_rate = abs(rate_b / rate_a - 1) < _SAME
                level_a = admitted_level(rate_a, time_a)
                level_b = admitted_level(rate_b, time_b)
                same_level = abs(level_b / level_a - 1) < _SAME
                if same_rate and not same_level:
                    votes[LimitKind.RATE] += 1
                elif same_level and not same_rate:
                    votes[LimitKind.INFLIGHT] += 1
        if votes[LimitKind.RATE] > votes[LimitKind.INFLIGHT]:
            self._kind = LimitKind.RATE
        elif votes[LimitKind.INFLIGHT] > votes[LimitKind.RATE]:
            self._kind = LimitKind.INFLIGHT

    def _derive_at(self, answer_time: float) -> None:
        """The level (or pace) now stands for this answer time."""
        self._derived_at = answer_time
        self._derived_site = self._evidence.site_time(answer_time)
        self._derived_pace = self._pace_rate

    # -- phases and applying -----------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        """The one place the phase changes."""
        self._probe_reset()
        if phase is not Phase.SLOW_START:
            self._ramp = None
        if phase is not Phase.PACED:
            self._pace_rate = None
            self._hold = None
            if phase is not Phase.SLOW_START:
                self._evidence.unwatch()
        if phase is not Phase.PROBE:
            self._probe_successes = 0
        if phase is Phase.GROW:
            self._overload_level = None
        self._phase = phase

    def _apply(
        self,
        now: float,
        target: int,
        reason: Reason,
        *,
        new_epoch: bool = True,
        keep_last_good: bool = False,
    ) -> Decision:
        ev = self._evidence
        w = ev.window
        decision = Decision(
            at=now,
            old_limit=self._limit,
            new_limit=target,
            reason=reason,
            samples=w.samples,
            rate_limited=w.rate_limited,
            overload_level=self._overload_level,
            pace_rate=self._pace_rate
            if self._ramp is None
            else self._ramp.rate,  # rate-first slow start: its pace
        )
        if target != self._limit:
            if not keep_last_good:
                # Raising from a level that just had a clean, used window
                # makes it the last good level; any other change forgets it.
                raised = (
                    reason in (Reason.INCREASE, Reason.PROBE) and target > self._limit
                )
                self._last_good = self._limit if raised else None
            self._limit = target
            if new_epoch:
                ev.new_epoch(now)
        if reason is Reason.BACKOFF:
            # At most two answer times: by then the requests sent at the old
            # level are answered, and a fast site is judged again sooner.
            settle = self._settings.backoff_settle_seconds
            answer_time = ev.answer_time()
            if answer_time is not None:
                settle = min(settle, 2 * answer_time)
            ev.evidence_from = now + settle
        ev.new_window(now)
        return decision
