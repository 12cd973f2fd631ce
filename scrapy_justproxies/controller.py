"""Per-domain concurrency control driven by the target's 429 rate.

The provider's guide: "Start at the low end, watch your 429 rate, and increase
by 25% until it starts climbing. The optimal concurrency is just below the
point where the target rate-limits you." This module does that per domain,
for the whole crawl, because sites change their limits while a crawl runs.

It is pure and stdlib-only: no Scrapy, no clock reads, no global state. Time
is a float the caller passes in, so the same samples always give the same
decisions (the simulation tests rely on that). The shape follows Netflix's
concurrency-limits: the limit *algorithm* (:class:`DomainController`, one per
domain) is separate from whatever *applies* the limit (the plugin sets the
download slot's ``concurrency``); small pure functions (:func:`grow`,
:func:`regrow`, :func:`backoff_target`, :func:`cusum_step`,
:func:`split_budget`) hold the
arithmetic, tenacity-style.

Samples in, decisions out::

    ctl = DomainController(ControllerSettings(start=8, ceiling=50), now=t0)
    ticket = ctl.on_sent(now, inflight)          # when a request goes out
    ctl.record(ticket, Outcome.OK, now)          # when its answer comes back
    decision = ctl.decide(now)                   # None, or a judged window
    if decision is not None and decision.changed:
        slot.concurrency = decision.new_limit

The algorithm, in short:

* Evidence is counted per *epoch*: every limit change starts a new one and a
  sample only counts when its request was sent under the current epoch. A
  request sent before a change says nothing about the new limit (and a 429
  from the old, higher limit must not punish the new one).
* 429s are watched with a one-sided CUSUM: every answer adds 1 if it was a
  429, minus ``tolerated_share``; the sum never goes below 0. When it exceeds
  ``trigger_excess`` (that many 429s more than tolerated) the share is
  climbing: back off at once, without waiting for the window to end. A sharp
  rise (a site that drops its limit) fires within a handful of answers, a
  slight one after a few seconds, and a clean level practically never.
* Backoff is multiplicative and aims at the last good level: the share of
  answers that were not 429 estimates which part of the limit the site
  admits, so the new limit is ``round(limit * ok_share)`` (the share taken
  over the climb, or over the last ``min_samples`` answers if the climb was
  shorter), at least one below the level that drew the 429s and at least
  ``limit * decrease_factor``. The level that drew them is remembered as
  the domain's ceiling estimate.
* Increases happen once per window (``window_seconds`` and ``min_samples``
  answers), only when the window's 429 share is at most ``tolerated_share``
  *and* the limit was used (the mean in-flight count at send time reached
  ``min_utilization`` of the limit: an idle or under-filled slot teaches
  nothing). With no ceiling estimate the limit grows by ``increase_factor``
  (rounded up, at least +1). Below an estimate it grows back at half that
  pace and stops one below it: the cut may have been too deep (a burst of
  429s), or right (the site lowered its limit), and half the pace costs
  little either way.
* Just below the estimate it settles. After ``probe_interval`` seconds and
  ``probe_samples`` answers there it probes one step up. A probe must stay
  clean for ``probe_seconds`` (a token bucket's burst hides a slight
  overload for a few seconds); a failed probe backs off again, detected by
  the CUSUM in about a second. ``probes_to_grow`` clean probes in a row mean
  the site raised its limit: the estimate is dropped and growth continues
  at the normal pace.
* Floor and ceiling bound every decision. At the floor a climbing share
  still yields a ``backoff`` decision (unchanged limit), which a caller may
  take as the cue to add a download delay.

Known limit: 429s the site sends whatever the load (a share of exits
blocked, say) look like a climbing share once above ``tolerated_share``
and walk the limit down; raise ``tolerated_share`` for such sites.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, fields
from typing import TypeVar

__all__ = [
    "ControllerSettings",
    "ControllerSettingsError",
    "Decision",
    "DomainController",
    "Outcome",
    "Reason",
    "Ticket",
    "backoff_target",
    "clamp",
    "cusum_step",
    "grow",
    "regrow",
    "split_budget",
]

K = TypeVar("K", bound=Hashable)


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
    ceiling: int
    """Highest limit ever set (the high end of the pool's range)."""
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
    """After a backoff, requests sent within this time are not evidence: the
    site is still paying back the overload (a token bucket left empty), so
    429s there would blame the new, lower level for the old one."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
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
            self.ceiling >= self.floor,
            "ceiling",
            f"({self.ceiling}) must be at least floor ({self.floor})",
        )
        _check(
            self.floor <= self.start <= self.ceiling,
            "start",
            f"({self.start}) must be between floor ({self.floor}) "
            f"and ceiling ({self.ceiling})",
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
    inflight: int
    """Requests in flight to the domain once this one was sent."""


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
    ceiling_estimate: int | None
    """The lowest level known to draw 429s, after this decision."""

    @property
    def changed(self) -> bool:
        return self.new_limit != self.old_limit

    @property
    def rate_limited_share(self) -> float:
        return self.rate_limited / self.samples if self.samples else 0.0


# -- small pure pieces ------------------------------------------------------


def clamp(value: int, settings: ControllerSettings) -> int:
    """``value`` limited to ``[settings.floor, settings.ceiling]``."""
    return max(settings.floor, min(settings.ceiling, value))


def grow(limit: int, settings: ControllerSettings, cap: int | None = None) -> int:
    """The next limit at the normal pace: ``ceil(limit * increase_factor)``,
    at least ``limit + 1``, at most ``cap`` (if given) and the ceiling.

    Never returns less than ``limit`` (a cap below it does not shrink it).
    """
    target = max(limit + 1, math.ceil(limit * settings.increase_factor - 1e-9))
    if cap is not None:
        target = min(target, cap)
    return max(limit, clamp(target, settings))


def regrow(limit: int, ceiling_estimate: int, settings: ControllerSettings) -> int:
    """The next limit below a known ceiling estimate: half the normal pace
    (``limit * (1 + (increase_factor - 1) / 2)``, at least +1), stopping one
    below the estimate. Used after a backoff, whose cut may have been too
    deep (a burst of 429s) or right (the site lowered its limit)."""
    half = 1 + (settings.increase_factor - 1) / 2
    target = max(limit + 1, math.floor(limit * half + 1e-9))
    return max(limit, clamp(min(target, ceiling_estimate - 1), settings))


def backoff_target(limit: int, ok_share: float, settings: ControllerSettings) -> int:
    """Where to back off to from ``limit`` when the 429 share climbed.

    ``ok_share`` (the share of non-429 answers) estimates which part of the
    limit the site admits, so ``round(limit * ok_share)`` is about the last
    good level. The result is at least one below ``limit`` (that level drew
    the 429s), never deeper than ``limit * decrease_factor`` in one step
    (a short window's share is noisy), and within floor and ceiling.
    """
    ok_share = min(1.0, max(0.0, ok_share))
    estimate = math.floor(limit * ok_share + 0.5)
    deepest = math.ceil(limit * settings.decrease_factor - 1e-9)
    return clamp(min(limit - 1, max(deepest, estimate)), settings)


def cusum_step(total: float, rate_limited: bool, tolerated_share: float) -> float:
    """One step of a one-sided CUSUM on the 429 indicator.

    Each answer adds ``1 - tolerated_share`` if it was a 429 and subtracts
    ``tolerated_share`` otherwise; the sum never goes below zero, so a long
    clean stretch does not hide a later climb.
    """
    return max(0.0, total + (1.0 if rate_limited else 0.0) - tolerated_share)


def split_budget(wanted: Mapping[K, int], total: int, minimum: int = 1) -> dict[K, int]:
    """Share ``total`` concurrent requests among keys that each want some.

    If the wants fit, everyone gets what it wants. Otherwise max-min fair
    (water-filling): small wants are met in full and the rest is split
    evenly among the larger ones, leftovers going to keys in the mapping's
    order. Every key gets at least ``min(want, minimum)``, even if that
    puts the sum above ``total`` (a domain must be able to make progress);
    otherwise the sum is at most ``total``. Deterministic for a given input.
    """
    if total < 0 or minimum < 0:
        raise ValueError("total and minimum must not be negative")
    if any(want < 0 for want in wanted.values()):
        raise ValueError("wants must not be negative")
    if sum(wanted.values()) <= total:
        return dict(wanted)
    share = {key: min(want, minimum) for key, want in wanted.items()}
    left = total - sum(share.values())
    hungry = [key for key in wanted if share[key] < wanted[key]]
    while left > 0 and hungry:
        each = left // len(hungry)
        if each == 0:
            for key in hungry[:left]:
                share[key] += 1
            break
        for key in hungry:
            give = min(each, wanted[key] - share[key])
            share[key] += give
            left -= give
        hungry = [key for key in hungry if share[key] < wanted[key]]
    return share


# -- the controller ---------------------------------------------------------


@dataclass
class _Window:
    """Evidence gathered since the last verdict, for the current epoch."""

    start: float
    ok: int = 0
    rate_limited: int = 0
    sends: int = 0
    inflight_sum: int = 0

    @property
    def samples(self) -> int:
        return self.ok + self.rate_limited


class DomainController:
    """The limit for one domain (or any other budget key).

    Call :meth:`on_sent` when a request goes out, :meth:`record` when its
    outcome is known and :meth:`decide` as often as convenient (after each
    answer is fine); apply ``decision.new_limit`` when ``decision.changed``.
    Everything is a function of the calls and the times passed in.
    """

    def __init__(self, settings: ControllerSettings, now: float) -> None:
        self._settings = settings
        self._limit = settings.start
        self._epoch = 0
        self._epoch_start = now
        self._epoch_samples = 0
        # Requests sent before this time say nothing about the current level.
        self._evidence_from = now
        self._window = _Window(start=now)
        self._cusum = 0.0
        # Answers since the CUSUM last stood at 0: the climb that fires it.
        self._run_ok = 0
        self._run_limited = 0
        # The last min_samples answers at this level (True: a 429).
        self._recent: deque[bool] = deque(maxlen=settings.min_samples)
        self._ceiling_estimate: int | None = None
        self._probing = False
        self._probe_successes = 0
        # The clean level this epoch was raised from (see _backoff).
        self._last_good: int | None = None

    @property
    def settings(self) -> ControllerSettings:
        return self._settings

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def epoch(self) -> int:
        """Bumped on every limit change."""
        return self._epoch

    @property
    def ceiling_estimate(self) -> int | None:
        """The lowest level known to draw 429s, or None if none is known."""
        return self._ceiling_estimate

    def on_sent(self, now: float, inflight: int) -> Ticket:
        """A request is going out; ``inflight`` counts it too."""
        if now >= self._evidence_from:
            self._window.sends += 1
            self._window.inflight_sum += inflight
        return Ticket(epoch=self._epoch, sent_at=now, inflight=inflight)

    def record(self, ticket: Ticket, outcome: Outcome, now: float) -> None:
        """The outcome of the request ``ticket`` was issued for.

        Requests sent under an earlier limit or while the site settled after
        a backoff, and ignored outcomes, are not evidence about the current
        limit and change nothing.
        """
        del now  # kept for symmetry and future latency-based signals
        if (
            ticket.epoch != self._epoch
            or ticket.sent_at < self._evidence_from
            or outcome is Outcome.IGNORED
        ):
            return
        limited = outcome is Outcome.RATE_LIMITED
        if limited:
            self._window.rate_limited += 1
        else:
            self._window.ok += 1
        self._cusum = cusum_step(self._cusum, limited, self._settings.tolerated_share)
        self._recent.append(limited)
        self._epoch_samples += 1
        if self._cusum == 0:
            self._run_ok = self._run_limited = 0
        elif limited:
            self._run_limited += 1
        else:
            self._run_ok += 1

    def decide(self, now: float) -> Decision | None:
        """Judge the evidence so far: None if it is not enough yet.

        A climbing 429 share is acted on at once; anything else waits for a
        full window (``window_seconds`` and ``min_samples`` answers).
        """
        s = self._settings
        if self._cusum >= s.trigger_excess:
            return self._backoff(now)
        w = self._window
        if now - w.start < s.window_seconds or w.samples < s.min_samples:
            return None
        if w.rate_limited > s.tolerated_share * w.samples:
            # More 429s than tolerated, but not (yet) climbing: stay put.
            target, reason = self._limit, Reason.HOLD
        elif w.inflight_sum < s.min_utilization * self._limit * w.sends or not w.sends:
            target, reason = self._limit, Reason.IDLE
        else:
            target, reason = self._next_level(now)
        return self._apply(now, target, reason)

    def _next_level(self, now: float) -> tuple[int, Reason]:
        """Where to go after a clean window in which the limit was used."""
        s = self._settings
        if self._probing:
            if now - self._epoch_start < s.probe_seconds:
                return self._limit, Reason.HOLD
            self._probe_successes += 1
            if self._ceiling_estimate is not None:
                self._ceiling_estimate = max(self._ceiling_estimate, self._limit + 1)
            if self._probe_successes < s.probes_to_grow:
                return self._probe_target()
            # The site admits more than it did: forget the old estimate.
            self._ceiling_estimate = None
            self._probing = False
            self._probe_successes = 0
        estimate = self._ceiling_estimate
        if estimate is None:
            target = grow(self._limit, s)
            return target, Reason.INCREASE if target != self._limit else Reason.HOLD
        if self._limit + 1 < estimate:
            # Back up towards the level that drew 429s at half the pace: the
            # cut may have been too deep, or the site may have dropped.
            return regrow(self._limit, estimate, s), Reason.INCREASE
        settled = now - self._epoch_start >= s.probe_interval
        if settled and self._epoch_samples >= s.probe_samples:
            return self._probe_target()
        return self._limit, Reason.HOLD

    def _probe_target(self) -> tuple[int, Reason]:
        target = clamp(self._limit + 1, self._settings)
        if target == self._limit:  # at the ceiling: nothing to probe
            self._probing = False
            self._probe_successes = 0
            return target, Reason.HOLD
        self._probing = True
        return target, Reason.PROBE

    def _backoff(self, now: float) -> Decision:
        # The share during the climb, not since the level began: a site that
        # lowers its limit after a long clean stretch must be followed at once.
        # A short climb (a few 429s in a row) says little about the share, so
        # then the last min_samples answers at this level are used instead.
        run = self._run_ok + self._run_limited
        if run >= len(self._recent):
            ok_share = self._run_ok / run
        else:
            ok_share = 1 - sum(self._recent) / len(self._recent)
        self._cusum = 0.0  # also when already at the floor: judge afresh
        self._run_ok = self._run_limited = 0
        self._recent.clear()
        s = self._settings
        target = backoff_target(self._limit, ok_share, s)
        if self._last_good is not None and self._last_good < self._limit:
            # The 429s began right after a raise or a probe from a level that
            # was clean: go back there. A token bucket answers an overload
            # with a burst of 429s, so the short climb's share would cut far
            # deeper than the overload was. If the 429s go on at that level
            # too, the next backoff has no last good level and uses the share.
            target = max(target, clamp(self._last_good, s))
        self._last_good = None
        self._ceiling_estimate = self._limit
        return self._apply(now, target, Reason.BACKOFF)

    def _apply(self, now: float, target: int, reason: Reason) -> Decision:
        w = self._window
        decision = Decision(
            at=now,
            old_limit=self._limit,
            new_limit=target,
            reason=reason,
            samples=w.samples,
            rate_limited=w.rate_limited,
            ceiling_estimate=self._ceiling_estimate,
        )
        if reason is not Reason.PROBE and (
            target != self._limit or reason is Reason.BACKOFF
        ):
            self._probing = False
            self._probe_successes = 0
        if target != self._limit:
            # Raising from a level that just had a clean, used window makes it
            # the last good level; any other change forgets it.
            raised = reason in (Reason.INCREASE, Reason.PROBE) and target > self._limit
            self._last_good = self._limit if raised else None
            self._limit = target
            self._epoch += 1
            self._epoch_start = now
            self._cusum = 0.0
            self._run_ok = self._run_limited = 0
            self._recent.clear()
            self._epoch_samples = 0
            self._evidence_from = now
        if reason is Reason.BACKOFF:
            self._evidence_from = now + self._settings.backoff_settle_seconds
        self._window = _Window(start=max(now, self._evidence_from))
        return decision
