"""The product benchmark: the plugin next to the alternatives, per scenario.

One sandbox (gateway + rate-limiting site on loopback) for the whole run; for
every scenario and every variant, the sandbox is reconfigured and reset and a
real Scrapy crawl runs in a fresh subprocess
(:func:`scrapy_justproxies.sandbox.crawl.run_crawl`). Metrics come from the
site's per-second counters, the gateway's counters and the crawl's result.

    .venv/bin/python bench/run.py                  # everything (make bench)
    .venv/bin/python bench/run.py --quick          # fewer URLs, shorter runs
    .venv/bin/python bench/run.py --scenarios steady,drop --variants plugin,fixed-low
    .venv/bin/python bench/run.py --scenarios inflight-cap --variants fixed-8,fixed-12
        # fixed-<C>: throttle off, per-domain concurrency C, on any scenario
    .venv/bin/python bench/run.py --cluster --out /tmp/x   # several processes (cluster.py)

Writes bench/results/latest.md (also printed), latest.json (raw numbers and
per-second series) and one <scenario>.svg chart per scenario; the crawls'
work directories (logs, specs) go to bench/results/raw/. See
docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import charts
import evaluate
import report
import scrapy
import static_exits as static_exits_runner
import twisted
from scenarios import (
    ALL_VARIANTS,
    CAP,
    DEFAULT_MAX_RATE,
    KILL_AFTER,
    KILLED,
    RATE,
    TRACED,
    Scenario,
    build_scenarios,
    extra_variant,
    fixed_concurrency,
    interleave,
    select,
    shift_metrics,
    traced_file,
    variant_spec,
)

import scrapy_justproxies
from scrapy_justproxies.sandbox import SandboxProcess, run_sandbox_process
from scrapy_justproxies.sandbox.crawl import CrawlResult, run_crawl
from scrapy_justproxies.state import load as load_state

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmark.md"
DOCS_START = "<!-- latest-results:start -->"
DOCS_END = "<!-- latest-results:end -->"
# Other processes using more than this many cores during a crawl make it suspect.
BUSY_CORES = 0.25
# Crawler stats worth keeping in latest.json (the rest stays in raw/).
KEPT_STATS = re.compile(
    r"^(downloader/(request_count|response_count|response_status_count/.*|"
    r"exception_count|exception_type_count/.*)|retry/.*|justproxies/.*|"
    r"finish_reason|elapsed_time_seconds|log_count/(ERROR|WARNING|CRITICAL))$"
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- one crawl -------------------------------------------------------------------


def wait_idle(sandbox: SandboxProcess, timeout: float = 15.0) -> None:
    """Wait until the previous crawl's connections and requests are gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = sandbox.client.stats()
        if (
            stats["totals"].get("inflight", 0) == 0
            and stats["gateway"].get("connections_open", 0) == 0
        ):
            return
        time.sleep(0.1)
    log("  warning: the sandbox still had connections open; going on")


def scenario_urls(sandbox: SandboxProcess, scenario: Scenario) -> list[str]:
    per_site = [
        [sandbox.site_url(site.host, f"/item/{i}") for i in range(1, site.urls + 1)]
        for site in scenario.sites
    ]
    return interleave(per_site)


def cpu_snapshot(sandbox_pid: int) -> dict[str, float]:
    """Machine-wide busy CPU seconds, the sandbox's and this process's CPU."""
    tick = os.sysconf("SC_CLK_TCK")
    snapshot = {"wall": time.monotonic(), "busy": 0.0, "sandbox": 0.0}
    own = os.times()
    snapshot["own"] = own.user + own.system
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        # user nice system idle iowait irq softirq steal
        values = [int(v) for v in fields[:8]]
        snapshot["busy"] = (sum(values) - values[3] - values[4]) / tick
        stat = Path(f"/proc/{sandbox_pid}/stat").read_text()
        parts = stat.rsplit(")", 1)[1].split()
        snapshot["sandbox"] = (int(parts[11]) + int(parts[12])) / tick
    except (OSError, ValueError, IndexError):
        pass
    return snapshot


def background_load(
    before: dict[str, float], after: dict[str, float], crawler_cpu: float
) -> dict[str, float]:
    """CPU the sandbox used, and what everything else on the machine used.

    ``background_cores`` is the machine's busy CPU during the crawl minus
    the crawler's, the sandbox's and this harness's, per second of wall
    time: other people's processes competing for the cores.
    """
    wall = max(1e-6, after["wall"] - before["wall"])
    sandbox = after["sandbox"] - before["sandbox"]
    own = after["own"] - before["own"]
    other = after["busy"] - before["busy"] - crawler_cpu - sandbox - own
    return {
        "sandbox_cpu_seconds": round(sandbox, 3),
        "background_cores": round(max(0.0, other) / wall, 3),
    }


def _mask(text: str, secret: str) -> str:
    return text.replace(secret, "********") if secret else text


def run_variant(
    sandbox: SandboxProcess,
    scenario: Scenario,
    variant: str,
    workdir: Path,
    python: str,
    startup_cpu: dict[str, float],
) -> dict[str, Any]:
    """One crawl of one variant, with the sandbox's view of it."""
    state_file = learning_state_file(scenario, workdir)
    spec = variant_spec(
        variant,
        scenario.preset,
        timeout=scenario.timeout,
        gateway=sandbox.gateway,
        user=sandbox.user,
        password=sandbox.password,
        state_file=str(state_file) if state_file else None,
    )
    urls = scenario_urls(sandbox, scenario)
    requests = [
        {"url": u, "meta": spec.meta} if spec.meta else {"url": u} for u in urls
    ]
    wait_idle(sandbox)
    sandbox.client.configure(scenario.sandbox_config(sandbox.user, sandbox.password))
    sandbox.client.reset()
    record: dict[str, Any] = {
        "preset_start": scenario.preset.domain_concurrency_start,
        "startup_cpu_seconds": startup_cpu.get(variant, 0.0),
        "settings": spec.settings,
        "env": {k: _mask(v, sandbox.password) for k, v in spec.env.items()},
        "meta": {k: _mask(str(v), sandbox.password) for k, v in spec.meta.items()},
    }
    cpu_before = cpu_snapshot(sandbox.pid)
    killed = variant == KILLED
    try:
        result = run_crawl(
            workdir,
            reactor="asyncio",
            requests=requests,
            settings=spec.settings,
            env=spec.env,
            python=python,
            # CLOSESPIDER_TIMEOUT bounds the crawl; this bounds a stuck process.
            # (The killed variant: subprocess.run kills it with SIGKILL.)
            timeout=KILL_AFTER * scenario.timeout if killed else scenario.timeout + 90,
            log_level="INFO",
        )
    except subprocess.TimeoutExpired:
        if not killed:
            record["error"] = "the crawl process did not exit in time"
            return record
        result = killed_result(workdir)
    if variant == TRACED and traced_file().exists():
        shutil.move(traced_file(), workdir / "trace.jsonl")
    if state_file is not None:
        record["state_file"] = state_file_summary(state_file)
    stats = sandbox.client.stats()
    cpu_after = cpu_snapshot(sandbox.pid)
    crawl_stats = result.stats
    record.update(
        {
            **background_load(cpu_before, cpu_after, result.cpu_seconds),
            "returncode": result.returncode,
            "reason": result.reason,
            "scrapy_version": result.scrapy_version,
            "wall_seconds": round(result.wall_seconds, 3),
            "cpu_seconds": round(result.cpu_seconds, 3),
            "statuses": {str(k): v for k, v in result.statuses.items()},
            "crawler_requests": int(crawl_stats.get("downloader/request_count", 0)),
            "throttle_active": any(
                key.startswith("justproxies/limit") for key in crawl_stats
            ),
            "stats": {k: v for k, v in crawl_stats.items() if KEPT_STATS.match(k)},
            "gateway": {
                k: v
                for k, v in stats["gateway"].items()
                if k not in ("exit_ips", "sessions", "countries")
            },
            "elapsed": stats["elapsed"],
            "sites": {
                site.host: stats["sites"].get(site.host, {}) for site in scenario.sites
            },
        }
    )
    if not killed and (result.returncode != 0 or result.reason is None):
        tail = (result.output or result.log)[-2000:]
        record["error"] = f"crawl exited with code {result.returncode}"
        record["output_tail"] = _mask(tail, sandbox.password)
    return record


# -- issue 9: learning -------------------------------------------------------------


def learning_state_file(scenario: Scenario, workdir: Path) -> Path | None:
    """The state file a warm-start scenario's crawls share (None: cold)."""
    return workdir.parent / "limits.json" if scenario.state else None


def state_file_summary(path: Path) -> dict[str, Any]:
    """What the state file holds after a crawl (or why it cannot be used)."""
    loaded = load_state(path, now=time.time(), max_age=7 * 86400.0)
    return {
        "exists": path.exists(),
        "warning": loaded.warning,
        "domains": {k: v.to_dict() for k, v in loaded.domains.items()},
    }


def killed_result(workdir: Path) -> Any:
    """A stand-in result for a crawl killed with SIGKILL: no stats, no
    close reason; the site's counters tell what it did."""
    log_path = workdir / "crawl.log"
    return CrawlResult(
        returncode=-9,
        reason="killed",
        stats={},
        outcomes={},
        log=log_path.read_text() if log_path.exists() else "",
        output="",
        scrapy_version="",
        cpu_seconds=0.0,
        wall_seconds=0.0,
    )


def learning_metrics(scenario: Scenario, run: dict[str, Any]) -> dict[str, Any]:
    """Issue 9's extra figures of one run (answer-time shifts)."""
    series = evaluate.combined_series(
        [evaluate.host_series(run, site.host) for site in scenario.sites]
    )
    shifts = shift_metrics(scenario, series)
    return {"shifts": shifts} if shifts else {}


# -- one scenario -----------------------------------------------------------------


def observations(
    scenario: Scenario, runs: dict[str, Any], rows: dict[str, Any]
) -> list[str]:
    """Automatic notes: runs cut by the time bound, non-standard close reasons."""
    notes = []
    for variant, row in rows.items():
        run = runs[variant]
        if row["lost_cut"]:
            notes.append(
                f"`{variant}` was stopped by the time bound (close reason "
                f"`{run.get('reason')}`) with {row['ok']} of {scenario.urls} URLs "
                "done; its rates are over the time it ran."
            )
        elif run.get("reason") not in ("finished", None):
            notes.append(f"`{variant}` closed with reason `{run.get('reason')}`.")
        if run.get("background_cores", 0.0) > BUSY_CORES:
            notes.append(
                f"Other processes on the machine used {run['background_cores']:.1f} "
                f"cores on average during the `{variant}` run: its numbers are "
                "disturbed; re-run on an idle machine."
            )
    return notes


def chart(scenario: Scenario, runs: dict[str, Any], out_dir: Path) -> Path:
    sites = []
    for site in scenario.sites:
        sites.append(
            charts.SiteChart(
                host=site.host,
                series={
                    variant: evaluate.host_series(run, site.host)
                    for variant, run in runs.items()
                    if not run.get("error")
                },
                rate=site.rate_at if scenario.kind in (RATE, CAP) else None,
                ideal=site.ideal_concurrency,
                cap=float(site.inflight_cap) if site.inflight_cap else None,
            )
        )
    subtitle = [site.describe().replace("`", "") for site in scenario.sites]
    svg = charts.scenario_svg(
        f"{scenario.name}: {scenario.title.replace('`', '')} (pool {scenario.pool})",
        sites,
        subtitle,
    )
    path = out_dir / f"{scenario.name}.svg"
    path.write_text(svg, "utf-8")
    return path


def run_scenario(
    sandbox: SandboxProcess,
    scenario: Scenario,
    variants: list[str],
    raw_dir: Path,
    python: str,
    progress: list[int],
    startup_cpu: dict[str, float],
) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    if scenario.state:  # a warm-start scenario's first crawl starts cold
        state_file = raw_dir / scenario.name / "limits.json"
        state_file.unlink(missing_ok=True)
        if scenario.state_from is not None:  # ... or from another's file
            source = raw_dir / scenario.state_from / "limits.json"
            if not source.exists():
                raise SystemExit(
                    f"{scenario.name} starts from the state file of "
                    f"{scenario.state_from}: run that scenario first, in the same run"
                )
            state_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, state_file)
    for variant in variants:
        progress[0] += 1
        log(f"[{progress[0]}/{progress[1]}] {scenario.name} / {variant} ...")
        started = time.monotonic()
        runs[variant] = run_variant(
            sandbox,
            scenario,
            variant,
            raw_dir / scenario.name / variant,
            python,
            startup_cpu,
        )
        error = runs[variant].get("error")
        log(
            f"    {time.monotonic() - started:.0f} s"
            + (f", ERROR: {error}" if error else f", reason {runs[variant]['reason']}")
        )
    rows = evaluate.evaluate_scenario(scenario, runs)
    for variant, row in rows.items():
        row.update(learning_metrics(scenario, runs[variant]))
    for variant, row in rows.items():
        log(
            f"    {variant:>13}: goodput {report.pct(row['goodput'])}, 429 "
            f"{report.pct(row['share_429'], 1)}, lost {row['lost']}, in flight "
            f"{report.num(row['concurrency_mean'], 1)}/{row['concurrency_peak']}"
        )
    return {
        "config": scenario.sandbox_config("USER", "********"),
        "sites": [site.describe() for site in scenario.sites],
        "timeout": scenario.timeout,
        "urls": scenario.urls,
        "ideal": evaluate.ideal(scenario),
        "metrics": rows,
        "errors": {v: r["error"] for v, r in runs.items() if r.get("error")},
        "observations": observations(scenario, runs, rows),
        "runs": runs,
    }


# -- the whole run --------------------------------------------------------------------


def measure_startup(
    sandbox: SandboxProcess, variants: list[str], raw_dir: Path, python: str
) -> dict[str, float]:
    """CPU seconds of an empty crawl per variant: the start-up to subtract."""
    preset = build_scenarios()[0].preset
    out: dict[str, float] = {}
    for variant in variants:
        fixed = [v for v in out if fixed_concurrency(v) is not None]
        if fixed_concurrency(variant) is not None and fixed:
            # The same start-up whatever C is: measured once.
            out[variant] = out[fixed[0]]
            continue
        spec = variant_spec(
            variant,
            preset,
            timeout=30,
            gateway=sandbox.gateway,
            user=sandbox.user,
            password=sandbox.password,
        )
        samples = []
        for attempt in range(2):
            result = run_crawl(
                raw_dir / "startup" / f"{variant}-{attempt}",
                reactor="asyncio",
                requests=[],
                settings=spec.settings,
                env=spec.env,
                python=python,
                timeout=60,
                log_level="INFO",
            )
            if result.returncode == 0:
                samples.append(result.cpu_seconds)
        out[variant] = round(min(samples), 3) if samples else 0.0
    log(
        "start-up CPU (empty crawl): "
        + ", ".join(f"{v} {s:.2f} s" for v, s in out.items())
    )
    return out


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "none yet"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _throttle_note(results: dict[str, Any]) -> str:
    source = Path(scrapy_justproxies.__file__).parent
    known = any(
        "JUSTPROXIES_THROTTLE_ENABLED" in path.read_text("utf-8", "replace")
        for path in source.glob("*.py")
    )
    active = [
        f"{name}/{variant}"
        for name, data in results["scenarios"].items()
        for variant, run in data["runs"].items()
        if run.get("throttle_active")
        or any(key.startswith("justproxies/limit") for key in run.get("stats", {}))
    ]
    if active:
        return (
            "present and active (the `plugin` runs report `justproxies/limit*` "
            "stats); numbers measured with the plugin as it was at this commit"
        )
    if known:
        return (
            "the plugin knows `JUSTPROXIES_THROTTLE_ENABLED`, but no run reported "
            "throttle stats; numbers measured with the plugin as it was at this commit"
        )
    return (
        "NOT present yet: the `plugin` variant ran as a static preset (per domain "
        "at the low end), so it matches `fixed-low`; re-run once the extension lands"
    )


def _background(results: dict[str, Any]) -> dict[str, float] | None:
    loads = [
        float(run["background_cores"])
        for data in results["scenarios"].values()
        for run in data["runs"].values()
        if "background_cores" in run
    ]
    if not loads:
        return None
    return {"mean": round(sum(loads) / len(loads), 3), "max": round(max(loads), 3)}


def update_docs(markdown: str) -> None:
    text = DOCS.read_text("utf-8")
    start, end = text.find(DOCS_START), text.find(DOCS_END)
    if start < 0 or end < start:
        log(f"{DOCS} has no {DOCS_START} … {DOCS_END} markers; not updated")
        return
    body = markdown.replace("](", "](../bench/results/").replace(
        "# Benchmark results", "### Benchmark results", 1
    )
    body = re.sub(r"^## ", "#### ", body, flags=re.MULTILINE)
    DOCS.write_text(
        text[: start + len(DOCS_START)] + "\n\n" + body + "\n" + text[end:], "utf-8"
    )
    log(f"updated {DOCS}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The scrapy-justproxies benchmark: the plugin next to fixed "
        "concurrency, AutoThrottle and plain Scrapy, through the local sandbox."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer URLs and shorter phases (7 s instead of 20 s): a smoke run",
    )
    parser.add_argument(
        "--scenarios",
        help="comma list (default: all): steady, drop, rise, two-sites, "
        "inflight-cap, no-limit, preset-datacenter, preset-residential, "
        "preset-mobile, preset-static, static-exits (its own runner, "
        "bench/static_exits.py); 'presets' = the four presets",
    )
    parser.add_argument(
        "--variants",
        help=f"comma list (default: all): {', '.join(ALL_VARIANTS)}; and "
        "fixed-<C> (e.g. fixed-12: throttle off, per-domain concurrency C) on any "
        "scenario, never by default: a sweep of them is the fixed-concurrency frontier; "
        f"{TRACED} (the plugin writing a JUSTPROXIES_TRACE, trace.jsonl in its raw "
        "directory) likewise",
    )
    parser.add_argument(
        "--max-rate",
        type=float,
        default=DEFAULT_MAX_RATE,
        help="cap on the preset scenarios' site rate, req/s (default %(default)g)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results directory"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter of the crawls"
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="also replace the 'Latest results' section of docs/benchmark.md",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the scenarios and exit"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="crawl nothing: rebuild latest.md and the charts from latest.json",
    )
    return parser.parse_args(argv)


def render_only(out_dir: Path, update: bool) -> int:
    """Rebuild the report and charts from a saved latest.json."""
    results = json.loads((out_dir / "latest.json").read_text("utf-8"))
    meta = results["meta"]
    every = build_scenarios(
        quick=meta["mode"].startswith("quick"), max_rate=meta["max_rate"]
    )
    done = [s for s in every if s.name in results["scenarios"]]
    for scenario in done:
        data = results["scenarios"][scenario.name]
        data["metrics"] = evaluate.evaluate_scenario(scenario, data["runs"])
        data["observations"] = observations(scenario, data["runs"], data["metrics"])
        chart(scenario, data["runs"], out_dir)
    meta["throttle"] = _throttle_note(results)
    meta["background_cores"] = _background(results)
    markdown = report.render(results, done)
    (out_dir / "latest.md").write_text(markdown, "utf-8")
    print(markdown)
    if update:
        update_docs(markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--cluster" in argv:
        # Several crawl processes on one site, with and without a shared
        # budget (issue 11): its own runner, see bench/cluster.py.
        import cluster  # noqa: PLC0415

        return cluster.main([a for a in argv if a != "--cluster"])
    args = parse_args(argv)
    if args.render_only:
        return render_only(args.out, args.update_docs)
    # Static exits (issue 11) have their own runner: their figures are per
    # exit IP, see bench/static_exits.py.
    names = [n.strip() for n in (args.scenarios or "").split(",") if n.strip()]
    static_exits = not names or static_exits_runner.NAME in names
    if names:
        names = [n for n in names if n != static_exits_runner.NAME]
        if not names:
            static_exits_runner.run(args.out, quick=args.quick, python=args.python)
            return 0
    try:
        scenarios = select(
            build_scenarios(quick=args.quick, max_rate=args.max_rate), ",".join(names)
        )
    except ValueError as error:
        log(str(error))
        return 2
    # Each once, in the order named.
    wanted = list(
        dict.fromkeys(v.strip() for v in (args.variants or "").split(",") if v.strip())
    )
    unknown = sorted(v for v in set(wanted) - set(ALL_VARIANTS) if not extra_variant(v))
    if unknown:
        log(
            f"unknown variants: {', '.join(unknown)} (known: {', '.join(ALL_VARIANTS)}, "
            f"fixed-<C> for a fixed per-domain concurrency C, and {TRACED})"
        )
        return 2
    # fixed-<C> and plugin-traced run on every scenario they are asked for,
    # after its own variants.
    sweep = [v for v in wanted if extra_variant(v)]
    # (Not twice where it is also one of the scenario's own.)
    scenarios = [
        dataclasses.replace(
            s, variants=(*s.variants, *(v for v in sweep if v not in s.variants))
        )
        if sweep
        else s
        for s in scenarios
    ]
    plan = [
        (s, [v for v in s.variants if not wanted or v in wanted]) for s in scenarios
    ]
    if args.list:
        for scenario, variants in plan:
            print(f"{scenario.name}: {scenario.title}; {', '.join(variants)}")
            for site in scenario.sites:
                print(f"    {site.describe()}")
            print(f"    bounded at {scenario.timeout:g} s")
        return 0
    total_runs = sum(len(v) for _, v in plan)
    bound = sum(s.timeout for s, v in plan for _ in v)
    log(
        f"{total_runs} crawls, {len(plan)} scenarios; their time bounds add up to "
        f"{bound / 60:.0f} min (a full run takes about 25 min, --quick about 12)"
    )
    # Absolute: each crawl runs in its own working directory, so a relative
    # state-file path would name a different file in every crawl.
    out_dir: Path = args.out.resolve()
    raw_dir = out_dir / "raw"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {"meta": {}, "scenarios": {}}
    progress = [0, total_runs]
    with run_sandbox_process(None) as sandbox:
        used = [
            v
            for v in dict.fromkeys((*ALL_VARIANTS, *sweep))
            if any(v in vs for _, vs in plan)
        ]
        startup_cpu = measure_startup(sandbox, used, raw_dir, args.python)
        for scenario, variants in plan:
            if not variants:
                continue
            data = run_scenario(
                sandbox, scenario, variants, raw_dir, args.python, progress, startup_cpu
            )
            results["scenarios"][scenario.name] = data
            chart(scenario, data["runs"], out_dir)
    versions = {
        run.get("scrapy_version")
        for data in results["scenarios"].values()
        for run in data["runs"].values()
        if run.get("scrapy_version")
    }
    results["meta"] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "scrapy": ", ".join(sorted(versions)) or scrapy.__version__,
        "twisted": twisted.__version__,
        "python": platform.python_version(),
        "plugin_version": scrapy_justproxies.__version__,
        "commit": _commit(),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": f"{platform.system()} {platform.release()}",
        "mode": "quick (--quick)" if args.quick else "full",
        "scenarios": [s.name for s, v in plan if v],
        "variants": wanted or "all",
        "max_rate": args.max_rate,
        "startup_cpu_seconds": startup_cpu,
        "total_minutes": (time.monotonic() - started) / 60,
    }
    results["meta"]["throttle"] = _throttle_note(results)
    results["meta"]["background_cores"] = _background(results)
    (out_dir / "latest.json").write_text(
        json.dumps(results, indent=1, default=str) + "\n", "utf-8"
    )
    markdown = report.render(results, [s for s, v in plan if v])
    (out_dir / "latest.md").write_text(markdown, "utf-8")
    print(markdown)
    log(f"wrote {out_dir / 'latest.md'}, latest.json and the charts")
    if args.update_docs:
        update_docs(markdown)
    if static_exits and not args.list:
        static_exits_runner.run(out_dir, quick=args.quick, python=args.python)
    failed = [
        f"{name}/{variant}"
        for name, data in results["scenarios"].items()
        for variant in data["errors"]
    ]
    if failed:
        log(f"crawls that failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
