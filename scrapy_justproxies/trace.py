"""``JUSTPROXIES_TRACE``: what the crawl did, second by second, as JSON Lines.

Records (one JSON object a line, ``type`` says which):

* ``header``: plugin and Scrapy versions, pool, the settings in force (never
  the credentials), the wall-clock start;
* ``domain``: one per active domain per second -- the slot's concurrency
  ``limit`` at the end of the second and the most requests ``in_flight``
  during it, the answers in it by
  class (``ok`` below 400, ``429``, ``error`` other 4xx/5xx, ``gateway``:
  the gateway's own error answers and failed downloads), the bytes
  ``sent``/``received`` through the gateway and the mean ``answer_ms``;
* ``decision``: one per change of a domain's limit by the throttle -- ``old``,
  ``new``, ``reason`` and the ``evidence`` (answers judged, 429s among them,
  the ceiling estimate);
* ``end``: the close reason (missing if the crawl was killed).

Each second's records are written and flushed at once, so a killed crawl
leaves a file that parses up to its last line. A domain writes records only
while it is active (answers in that second, or requests in flight): the
size follows activity, not the number of domains ever seen -- about 200
bytes per active domain per second, 15 MB for an hour over 20 domains.

Enabled by the add-on when ``JUSTPROXIES_TRACE`` or ``JUSTPROXIES_REPORT``
is set; by hand, ``EXTENSIONS = {"scrapy_justproxies.trace.JustProxiesTrace": 0}``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import scrapy
from scrapy import signals
from scrapy.exceptions import NotConfigured
from twisted.internet.task import LoopingCall

from .billing import AnswerCounts, ByteMeter
from .config import (
    Config,
    JustProxiesConfigError,
    ObservabilityConfig,
    in_force,
    report_startup_error,
)
from .report import write_report
from .slots import SlotGuard
from .throttle import JustProxiesThrottle

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler

    from .controller import Decision

logger = logging.getLogger(__name__)

FORMAT: Final = 1
TICK_SECONDS: Final = 1.0


@dataclass
class _Second(AnswerCounts):
    """One domain's counts in the current second."""

    latency_sum: float = 0.0
    latency_count: int = 0
    most_in_flight: int = 0


class JustProxiesTrace:
    """Write the trace (and, at close, the HTML report)."""

    def __init__(
        self,
        crawler: Crawler,
        config: ObservabilityConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.crawler = crawler
        self.config = config
        self.clock = clock
        self.started = clock()
        self.seconds: dict[str, _Second] = {}
        self._temporary = config.trace_path is None
        path = config.trace_path
        if path is None:  # a report without a trace: a temporary one
            handle, path = tempfile.mkstemp(prefix="justproxies-", suffix=".jsonl")
            os.close(handle)
        self.path = Path(path)
        try:
            self.file: IO[str] | None = self.path.open("w", encoding="utf-8")
        except OSError as exc:
            raise JustProxiesConfigError(
                f"JUSTPROXIES_TRACE: cannot write {str(self.path)!r} ({exc.strerror})."
                " Give a path in a writable directory."
            ) from None
        self._loop = LoopingCall(self._tick)
        ByteMeter.of(crawler).listeners.append(self._answered)
        SlotGuard.of(crawler).listeners.append(self._sent)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JustProxiesTrace:
        try:
            config = ObservabilityConfig.from_settings(crawler.settings, os.environ)
            if config.trace_path is None and config.report_path is None:
                raise NotConfigured(
                    "JUSTPROXIES_TRACE and JUSTPROXIES_REPORT are unset"
                )
            extension = cls(crawler, config)
        except JustProxiesConfigError as error:
            report_startup_error(logger, error)
            raise
        crawler.signals.connect(extension._opened, signals.spider_opened)
        crawler.signals.connect(extension._closed, signals.spider_closed)
        return extension

    # -- in ------------------------------------------------------------------

    def _answered(
        self, key: str, kind: str, sent: int, received: int, latency: float | None
    ) -> None:
        second = self.seconds.get(key)
        if second is None:
            second = self.seconds[key] = _Second()
        second.count(kind, sent, received)
        if latency is not None:
            second.latency_sum += latency
            second.latency_count += 1

    def _sent(self, key: str, request: Request, in_flight: int) -> None:
        second = self.seconds.get(key)
        if second is None:
            second = self.seconds[key] = _Second()
        second.most_in_flight = max(second.most_in_flight, in_flight)

    def _decided(self, key: str, decision: Decision, now: float) -> None:
        self._write(
            [
                {
                    "type": "decision",
                    "t": round(now - self.started, 3),
                    "domain": key,
                    "old": decision.old_limit,
                    "new": decision.new_limit,
                    "reason": decision.reason.value,
                    "evidence": {
                        "answers": decision.samples,
                        "429": decision.rate_limited,
                        "share": round(decision.rate_limited_share, 4),
                        "overload_level": decision.overload_level,
                    },
                    # Sends per second the domain is paced at (None: unpaced).
                    "pace": None
                    if decision.pace_rate is None
                    else round(decision.pace_rate, 2),
                }
            ]
        )

    # -- out -----------------------------------------------------------------

    def _opened(self, spider: Spider) -> None:
        for extension in self.crawler.extensions.middlewares:
            if isinstance(extension, JustProxiesThrottle):
                extension.decision_listeners.append(self._decided)
        settings = self.crawler.settings
        config = Config.from_settings(settings, os.environ)
        self._write(
            [
                {
                    "type": "header",
                    "format": FORMAT,
                    "plugin": _plugin_version(),
                    "scrapy": scrapy.__version__,
                    "spider": spider.name,
                    "started": time.time(),
                    "pool": config.pool.name if config.pool else None,
                    "gateway": config.gateway.url if config.gateway else None,
                    "price_per_gb": self.config.price_per_gb,
                    "settings": in_force(settings, os.environ),
                }
            ]
        )
        self._loop.start(TICK_SECONDS, now=False)

    def _tick(self) -> None:
        now = round(self.clock() - self.started, 3)
        seconds, self.seconds = self.seconds, {}
        engine = self.crawler.engine
        slots: dict[str, Any] = engine.downloader.slots if engine is not None else {}
        records = []
        for key in sorted(seconds.keys() | _busy(slots)):
            second = seconds.get(key) or _Second()
            slot = slots.get(key)
            records.append(
                {
                    "type": "domain",
                    "t": now,
                    "domain": key,
                    "limit": slot.concurrency if slot is not None else None,
                    "in_flight": max(
                        second.most_in_flight,
                        len(slot.transferring) if slot is not None else 0,
                    ),
                    **second.record_fields(),
                    "answer_ms": round(
                        1000 * second.latency_sum / second.latency_count, 1
                    )
                    if second.latency_count
                    else None,
                }
            )
        if records:
            self._write(records)

    def _write(self, records: list[dict[str, Any]]) -> None:
        if self.file is None:
            return
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        self.file.write(text)
        self.file.flush()

    def _closed(self, spider: Spider, reason: str) -> None:
        if self._loop.running:
            self._loop.stop()
        self._tick()
        self._write(
            [
                {
                    "type": "end",
                    "t": round(self.clock() - self.started, 3),
                    "reason": reason,
                }
            ]
        )
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.config.trace_path is not None:
            logger.info("JustProxies: trace written to %s", self.path)
        report = self.config.report_path
        if report is not None:
            try:
                write_report(self.path, Path(report))
            except OSError as exc:  # a full disk, a folder gone since start-up
                logger.error(
                    "JustProxies: JUSTPROXIES_REPORT: cannot write %r (%s); the "
                    "trace is kept at %s: render it with python -m "
                    "scrapy_justproxies.report %s -o report.html",
                    report, exc.strerror or exc, self.path, self.path,
                )  # fmt: skip
                return
            logger.info("JustProxies: report written to %s", report)
        if self._temporary:
            self.path.unlink(missing_ok=True)


def _plugin_version() -> str:
    try:
        return metadata.version("scrapy-justproxies")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def _busy(slots: dict[str, Any]) -> set[str]:
    return {key for key, slot in slots.items() if slot.transferring}


__all__ = ["JustProxiesTrace"]
