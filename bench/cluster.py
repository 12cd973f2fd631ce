"""Several crawl processes on one site, with and without a shared budget
(issue 11): ``bench/run.py --cluster`` or ``python bench/cluster.py``.

For each scenario of :func:`scenarios.build_cluster_scenarios` and each
variant (``local``: every process its own budgets; ``shared``: one budget
through Redis), one sandbox and one Debian ``redis-server`` on loopback,
N real crawl processes started together. Measured from the site's
per-second counters: the 429 share over the run (and in the Redis outage),
the combined admitted rate from the 5th second, how far apart the processes
finish, URLs lost, after a ``kill -9`` how soon the others reach 90% of the
rate, and the Redis commands per process per second (``INFO commandstats``).

    .venv/bin/python bench/cluster.py --out /tmp/bench-cluster [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import metrics
from scenarios import (
    SHARED,
    ClusterScenario,
    build_cluster_scenarios,
    variant_spec,
)

from scrapy_justproxies.presets import PRESETS
from scrapy_justproxies.sandbox import SandboxProcess, run_sandbox_process
from scrapy_justproxies.sandbox.crawl import start_crawl
from scrapy_justproxies.sandbox.redis_server import run_redis
from scrapy_justproxies.shared import SharedPolicy

ROOT = Path(__file__).resolve().parent.parent
TARGET_SHARE_429_IN_OUTAGE = 0.05
TARGET_REESTABLISHED_S = 10.0


class ShareWatch:
    """After Redis comes back (empty: no persistence): how soon every live
    process holds its share of the site's budget from Redis again, read from
    Redis itself. A process has its share again once a heartbeat of its read
    the site's budget back (the heartbeat script writes the process's lease,
    ``p:<process>`` = ``<lease end, Redis ms>,<report>``, and returns the
    hash in the same call). Counted: the heartbeat that re-seeded the budget
    (the seeder's, at the budget's ``changed_at``), and any heartbeat after
    a look that found the budget there. A heartbeat between the budget's
    write and that look counts only at its next one, so the figure is at
    most one heartbeat (1 s) late, never early (the processes beat in the
    middle of the same Redis second: the others' first heartbeats after the
    restart may come before the seeder's write, and read no budget). Redis
    time (the machine's clock), from ``restarted_at``: when
    ``redis-server`` was started again."""

    def __init__(self, redis: Any, key: str, restarted_at: float) -> None:
        import redis as redis_py  # noqa: PLC0415 - the plugin's redis extra

        self.client = redis_py.Redis(
            host="127.0.0.1", port=redis.port, password=redis.password,
            decode_responses=True, socket_timeout=1.0,
        )  # fmt: skip
        self.key = key
        self.lease_ms = int(self.policy().lease_seconds * 1000)
        self.restarted_at = restarted_at
        self.seeded_at: float | None = None
        """The budget's ``changed_at`` when first seen after the restart."""
        self.seen_at: float | None = None
        """Redis time just after the first look that found the budget."""
        self.beats: dict[str, float] = {}
        """Each process's first heartbeat (Redis time) that read the budget."""
        self.done_at: float | None = None

    @staticmethod
    def policy() -> SharedPolicy:
        """The crawl processes' (the default): its lease length."""
        return SharedPolicy()

    def poll(self, live: int) -> None:
        """One look, with ``live`` crawl processes still running."""
        if self.done_at is not None:
            return
        fields = {str(k): str(v) for k, v in self.client.hgetall(self.key).items()}
        seconds, micros = self.client.time()  # after: the budget was there
        now = seconds + micros / 1e6
        if "changed_at" in fields and self.seeded_at is None:
            self.seeded_at = float(fields["changed_at"])
            self.seen_at = now
            return  # a heartbeat seen now may have come before the write
        if self.seeded_at is None or self.seen_at is None:
            return
        for name, value in fields.items():
            if not name.startswith("p:") or name in self.beats:
                continue
            beat = (int(value.partition(",")[0]) - self.lease_ms) / 1000
            seeder = abs(beat - self.seeded_at) < 1e-6
            if (seeder or beat > self.seen_at) and beat * 1000 + self.lease_ms > (
                now * 1000
            ):
                self.beats[name] = beat
        # Processes that finished meanwhile left the hash: count those here.
        holding = [self.beats[name] for name in self.beats if name in fields]
        if live and len(holding) >= live:
            self.done_at = max(holding)

    def seconds(self) -> float | None:
        """From the restart until the last live process had its share back;
        None if that never happened."""
        if self.done_at is None:
            return None
        return round(self.done_at - self.restarted_at, 2)

    def each(self) -> list[float]:
        """Each process's first heartbeat that read the budget, from the
        restart."""
        return sorted(round(b - self.restarted_at, 2) for b in self.beats.values())

    def close(self) -> None:
        self.client.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def commandstats(redis: Any) -> dict[str, int]:
    calls: dict[str, int] = {}
    for name, value in redis.info("commandstats").items():
        fields = dict(part.split("=") for part in value.split(","))
        calls[name.removeprefix("cmdstat_")] = int(fields["calls"])
    return calls


def run_one(
    sandbox: SandboxProcess,
    redis: Any,
    scenario: ClusterScenario,
    variant: str,
    workdir: Path,
    python: str,
    trace: bool = False,
) -> dict[str, Any]:
    spec = variant_spec(
        "plugin",
        PRESETS[scenario.pool],
        timeout=scenario.timeout,
        gateway=sandbox.gateway,
        user=sandbox.user,
        password=sandbox.password,
    )
    settings = {**spec.settings, "JUSTPROXIES_STATE_FILE": None}
    host = scenario.site.host
    prefix = f"bench-{time.time_ns()}"
    if variant == SHARED:
        settings["JUSTPROXIES_SHARED_STATE"] = redis.url
        # Each run starts from nothing, like the local variant.
        settings["JUSTPROXIES_SHARED_STATE_PREFIX"] = prefix
    sandbox.client.configure(
        {
            "gateway": {"users": {sandbox.user: sandbox.password}},
            "sites": {host: scenario.site.policy()},
        }
    )
    sandbox.client.reset()
    before = commandstats(redis)
    n = scenario.processes
    crawls = []
    for index in range(n):
        urls = [
            sandbox.site_url(host, f"/item/{index * scenario.urls_per_process + i}")
            for i in range(1, scenario.urls_per_process + 1)
        ]
        crawl_dir = workdir / f"{scenario.name}-{variant}-p{index}"
        crawl_settings = dict(settings)
        if trace:  # per second: each process's limit, in flight, answers
            crawl_dir.mkdir(parents=True, exist_ok=True)
            crawl_settings["JUSTPROXIES_TRACE"] = str(crawl_dir / "trace.jsonl")
        crawls.append(
            start_crawl(
                crawl_dir,
                reactor="asyncio",
                requests=[{"url": u} for u in urls],
                settings=crawl_settings,
                env=spec.env,
                python=python,
                log_level="INFO",
            )
        )
    started = time.monotonic()
    killed_at = outage = None
    killed = False
    watch: ShareWatch | None = None
    finished: dict[int, float] = {}
    while any(c.process.poll() is None for c in crawls):
        elapsed = time.monotonic() - started
        for index, crawl in enumerate(crawls):
            if index not in finished and crawl.process.poll() is not None:
                finished[index] = elapsed
        if scenario.kill_at is not None and not killed and elapsed >= scenario.kill_at:
            os.kill(crawls[0].process.pid, signal.SIGKILL)
            killed, killed_at = True, sandbox.client.stats()["elapsed"]
        if scenario.redis_outage is not None and variant == SHARED:
            start, length = scenario.redis_outage
            if outage is None and elapsed >= start:
                redis.stop()
                outage = [sandbox.client.stats()["elapsed"], None]
            elif outage is not None and outage[1] is None and elapsed >= start + length:
                restarted_at = time.time()  # Redis TIME is this clock too
                redis.start()
                watch = ShareWatch(redis, f"{prefix}:{{{host}}}", restarted_at)
                outage[1] = sandbox.client.stats()["elapsed"]
            if watch is not None:
                watch.poll(sum(c.process.poll() is None for c in crawls))
        if elapsed > scenario.timeout + 90:
            break
        time.sleep(0.1)
    results = [c.wait(60) for c in crawls]
    end = time.monotonic() - started
    walls_by_index = [finished.get(i, end) for i in range(n)]
    after = commandstats(redis) if redis.ping() else before
    stats = sandbox.client.stats()
    site = stats["sites"].get(host, {})
    series = metrics.dense_series(site.get("per_second", []))
    rate = scenario.site.rate or 0.0
    survivors = results[1:] if killed else results
    lost = sum(scenario.urls_per_process - r.statuses.get(200, 0) for r in survivors)
    # When each process exited, from the common start (to 0.1 s).
    walls = walls_by_index[1:] if killed else walls_by_index
    span = metrics.active_span(series)
    record: dict[str, Any] = {
        "variant": variant,
        "statuses": [r.statuses for r in results],
        "reasons": [r.reason for r in results],
        "admitted": site.get("admitted", 0),
        "rate_limited": site.get("rate_limited", 0),
        "share_429": metrics.share_429(
            site.get("admitted", 0), site.get("rate_limited", 0)
        ),
        "lost": lost,
        "wall_seconds": [round(w, 1) for w in walls],
        "finish_spread": round((max(walls) - min(walls)) / max(walls), 3),
        "series": [s.__dict__ for s in series],
    }
    if span is not None:
        first, last = span
        # From the 5th second to the last full second any process ran.
        steady = metrics.window(series, first + 4, last)
        if steady:
            admitted = sum(s.admitted for s in steady) / len(steady)
            record["admitted_per_s_from_5th"] = round(admitted, 2)
            record["admitted_share_from_5th"] = round(admitted / rate, 3)
    if killed_at is not None:
        record["killed_at"] = killed_at
        # The first second from which three seconds average >= 90% of rate.
        later = [s for s in series if s.t >= int(killed_at)]
        for i in range(len(later) - 2):
            if sum(s.admitted for s in later[i : i + 3]) / 3 >= 0.9 * rate:
                record["recovered_after_s"] = later[i].t - int(killed_at)
                break
    if outage is not None and outage[1] is not None:
        during = metrics.window(series, int(outage[0]), int(outage[1]) + 1)
        record["outage"] = outage
        record["share_429_in_outage"] = metrics.share_429_in(during)
        record["unreachable_warnings"] = [
            r.log.count("is unreachable") for r in results
        ]
        record["rejoined"] = ["reachable again" in r.log for r in results]
        if watch is not None:
            record["shares_reestablished_s"] = watch.seconds()
            record["shares_reestablished_each_s"] = watch.each()
            watch.close()
    if variant == SHARED and outage is None:  # a restart resets the counters
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        # Every process's time, the killed one's up to its kill: its
        # heartbeats are in the counters too.
        seconds = sum(walls_by_index) or 1.0
        record["redis_round_trips_per_process_s"] = round(
            delta.get("evalsha", 0) / seconds, 2
        )
        record["redis_commands_per_process_s"] = round(
            sum(v for k, v in delta.items() if k != "info") / seconds, 2
        )
        record["shared_stats"] = [
            {k: v for k, v in r.stats.items() if k.startswith("justproxies/shared")}
            for r in results
        ]
    passwords = (sandbox.password, redis.password)
    record["secret_leaked"] = any(
        p in r.everything_written() for r in results for p in passwords
    )
    return record


def summary(name: str, record: dict[str, Any]) -> str:
    keys = (
        "share_429",
        "admitted_share_from_5th",
        "finish_spread",
        "lost",
        "recovered_after_s",
        "share_429_in_outage",
        "shares_reestablished_s",
        "redis_round_trips_per_process_s",
        "redis_commands_per_process_s",
        "secret_leaked",
    )
    targets = {
        "share_429_in_outage": f" (target <= {TARGET_SHARE_429_IN_OUTAGE:g})",
        "shares_reestablished_s": f" (target <= {TARGET_REESTABLISHED_S:g} s "
        "after Redis is back)",
    }
    shown = ", ".join(
        (f"{k}={record[k]:.3f}" if isinstance(record[k], float) else f"{k}={record[k]}")
        + targets.get(k, "")
        for k in keys
        if k in record
    )
    return (
        f"{name} [{record['variant']}]: {shown}; finished at "
        f"{record['wall_seconds']} s; close reasons {record['reasons']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenarios", help="comma list (default: all)")
    parser.add_argument("--variants", help="comma list: local,shared (default: both)")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="each process writes a JUSTPROXIES_TRACE in its raw/ folder",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    chosen = build_cluster_scenarios(args.quick)
    if args.scenarios:
        names = {n.strip() for n in args.scenarios.split(",")}
        chosen = [s for s in chosen if s.name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    lines = []
    with run_sandbox_process(None) as sandbox, run_redis() as redis:
        for scenario in chosen:
            wanted = (
                {v.strip() for v in args.variants.split(",")} if args.variants else None
            )
            for variant in scenario.variants:
                if wanted is not None and variant not in wanted:
                    continue
                log(f"{scenario.name} [{variant}] ...")
                record = run_one(
                    sandbox,
                    redis,
                    scenario,
                    variant,
                    args.out / "raw",
                    args.python,
                    trace=args.trace,
                )
                results.setdefault(scenario.name, {})[variant] = record
                lines.append(summary(scenario.name, record))
                log("  " + lines[-1])
    (args.out / "cluster.json").write_text(json.dumps(results, indent=1))
    (args.out / "cluster.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
