"""Is the gateway still answering? A small pure judge, clock injected.

Behind a forward proxy every download goes to the gateway, so a gateway that
accepts connections and then never answers (or drops them) looks, request
by request, like a slow or broken *site*: Scrapy retries each URL
``RETRY_TIMES`` and moves on, and a long crawl spends hours on nothing.

What tells the two apart is breadth. One slow site times out on its own
while the other sites keep answering. A hung gateway makes requests to
*several different sites* fail in a row with no answer of any kind in
between. A dropped plain-http connection is never a site's doing (the
gateway answers a site's failure with a 502 of its own); inside an https
tunnel the gateway only relays bytes, so a site that closes the connection
(one that drops bots, or has broken TLS) looks the same as a gateway that
drops it: those drops count like timeouts, by breadth. Any answer that comes
back through the gateway (a 200, a site's 404, the gateway's own 502 or 407)
proves it alive and starts the count again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

REFUSED_IN_A_ROW: Final = 10
"""Connections to the gateway refused (or its name not resolved) in a row."""
SILENT_IN_A_ROW: Final = 6
"""Timeouts or dropped connections in a row, with no answer in between ..."""
SILENT_SITES: Final = 3
"""... spread over at least this many different sites."""
DROPPED_IN_A_ROW: Final = 10
"""Dropped plain-http connections in a row, whatever the sites (never a
site's doing)."""


class Failure(str, enum.Enum):
    """What a failed download through the gateway says about the gateway."""

    REFUSED = "refused"
    """No connection to the gateway could be made at all."""
    TIMEOUT = "timeout"
    """The gateway took the request and no answer came in time."""
    DROPPED = "dropped"
    """The gateway closed the connection without an answer."""
    OTHER = "other"
    """Says nothing about the gateway (a bad URL, a cancelled request ...)."""


class Verdict(str, enum.Enum):
    UNREACHABLE = "justproxies_gateway_unreachable"
    UNRESPONSIVE = "justproxies_gateway_unresponsive"


@dataclass
class GatewayHealth:
    """Counts failures in a row since the gateway last answered anything."""

    refused: int = 0
    silent: int = 0
    dropped: int = 0
    tunnel_dropped: int = 0
    """Drops inside https tunnels (counted in ``silent``: maybe the site's)."""
    sites: set[str] = field(default_factory=set)
    since: float | None = None
    """When the current run of failures began (the first one's time)."""

    def answered(self) -> None:
        """Anything at all came back through the gateway."""
        if self.since is not None:
            self.refused = self.silent = self.dropped = self.tunnel_dropped = 0
            self.sites.clear()
            self.since = None

    def failed(
        self, failure: Failure, site: str, now: float, *, tunneled: bool = False
    ) -> Verdict | None:
        """Count one failed download; a verdict once the gateway is judged
        unusable. ``tunneled``: the request went through an https tunnel
        (CONNECT), where a dropped connection may be the site's."""
        if failure is Failure.OTHER:
            return None
        if self.since is None:
            self.since = now
        if failure is Failure.REFUSED:
            self.refused += 1
            if self.refused >= REFUSED_IN_A_ROW:
                return Verdict.UNREACHABLE
            return None
        self.silent += 1
        if len(self.sites) < SILENT_SITES:
            self.sites.add(site)
        if failure is Failure.DROPPED and tunneled:
            self.tunnel_dropped += 1
        elif failure is Failure.DROPPED:
            self.dropped += 1
            if self.dropped >= DROPPED_IN_A_ROW:
                return Verdict.UNRESPONSIVE
        if self.silent >= SILENT_IN_A_ROW and len(self.sites) >= SILENT_SITES:
            return Verdict.UNRESPONSIVE
        return None

    def describe(self, now: float) -> str:
        """What was seen, for the one ERROR line."""
        seen = []
        if self.refused:
            seen.append(f"{self.refused} connections refused")
        timeouts = self.silent - self.dropped - self.tunnel_dropped
        if timeouts:
            seen.append(f"{timeouts} timeouts")
        if self.dropped:
            seen.append(f"{self.dropped} dropped connections")
        if self.tunnel_dropped:
            seen.append(f"{self.tunnel_dropped} connections dropped in https tunnels")
        span = 0.0 if self.since is None else now - self.since
        sites = f" across {len(self.sites)}+ sites" if self.sites else ""
        return f"{', '.join(seen) or 'nothing'}{sites} in {span:.1f} s"
