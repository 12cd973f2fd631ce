"""The crawl report: the CLI on a long synthetic trace and on broken ones,
and a real crawl's report opened in headless Chromium as a person would."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from scrapy_justproxies.report import CHARTED_DOMAINS
from scrapy_justproxies.sandbox.crawl import run_crawl
from tests.test_crawl import ADDON, configure
from tests.test_hostile_inputs import refused_at_startup
from tests.trace_gen import write_synthetic_trace

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(trace: Path, output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "scrapy_justproxies.report",
            str(trace),
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_renders_an_hour_over_20_domains(tmp_path: Path) -> None:
    trace, output = tmp_path / "trace.jsonl", tmp_path / "report.html"
    write_synthetic_trace(trace, seconds=3600, domains=20)
    started = time.monotonic()
    done = render(trace, output)
    took = time.monotonic() - started  # reported, not asserted: bench/report_render.py
    print(f"rendered {trace.stat().st_size / 1e6:.1f} MB of trace in {took:.2f} s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(output)
    html = output.read_text()
    charts = re.findall(r'<svg [^>]*class="domain-chart" data-domain="([^"]+)"', html)
    assert len(charts) == CHARTED_DOMAINS
    # The busiest by requests are charted; every domain is in the table.
    # (the generator makes domains 0-4 the busiest, 15-19 the quietest)
    assert {f"shop{i:02d}.example" for i in range(10)} <= set(charts)
    assert not {f"shop{i:02d}.example" for i in range(15, 20)} & set(charts)
    assert len(re.findall(r"<tr><td data-v=\"shop", html)) == 20
    assert f"{20 - CHARTED_DOMAINS} more are in the table above" in html
    assert "cost" in html and "at 8.00/GB" in html
    # Self-contained: nothing is fetched.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)
    assert "url(" not in html
    # Long crawls are binned: at most a few thousand points per chart.
    first = html.split('class="domain-chart"')[1].split("</svg>")[0]
    assert first.count(",") < 8 * 1000


@pytest.mark.crawl
def test_a_report_in_a_missing_folder_stops_the_crawl_at_start(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    report = str(tmp_path / "no" / "r.html")
    output = refused_at_startup(
        sandbox, gateway_env, tmp_path, settings={"JUSTPROXIES_REPORT": report}
    )
    assert "JUSTPROXIES_REPORT: the folder" in output


def test_cli_renders_a_trace_cut_short(tmp_path: Path) -> None:
    trace, output = tmp_path / "trace.jsonl", tmp_path / "report.html"
    write_synthetic_trace(trace, seconds=30, domains=2)
    text = trace.read_text()
    trace.write_text(text[: text.rindex('{"type":"domain"') + 40])  # killed mid-line
    done = render(trace, output)
    assert done.returncode == 0, done.stderr
    assert "the crawl was killed" in output.read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"type": "domain", "t": 1}\n', "does not start with a JustProxies trace"),
        ("<html></html>\nmore\n", "not a JSON line"),
    ],
)
def test_cli_refuses_what_is_not_a_trace(
    tmp_path: Path, content: str, message: str
) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(content)
    done = render(trace, tmp_path / "report.html")
    assert done.returncode == 1
    assert message in done.stderr
    assert not (tmp_path / "report.html").exists()


HEADER = (
    '{"type":"header","format":1,"plugin":"x","scrapy":"x","spider":"s",'
    '"started":1700000000,"pool":null,"gateway":null,"price_per_gb":8,"settings":{}}'
)


@pytest.mark.parametrize(
    "records",
    [
        b'{"type":"domain","t":1,"domain":"caf\xe9","ok":1}\n',  # latin-1 byte
        b'{"type":"domain","t":1,"ok":1}\n',  # no domain
        b'{"type":"domain","t":1,"domain":"a","ok":"5"}\n',
        b'{"type":"domain","t":NaN,"domain":"a","ok":5}\n',
        b'{"type":"domain","t":1e400,"domain":"a","ok":5}\n',
        b'{"type":"domain","t":"1","domain":"a","ok":5}\n',
        b'{"type":"domain","t":1,"domain":"a","ok":5,"limit":"x"}\n',
        b'{"type":"decision","t":1,"domain":"a","old":1,"new":2,"reason":"x"}\n',
        b'{"type":"decision","t":1,"domain":"a","old":null,"new":2,"reason":"x",'
        b'"evidence":{}}\n',
        b'{"type":"end","t":1,"reason":{"a":1}}\n',
    ],
)
def test_cli_refuses_a_broken_trace_with_one_line(
    tmp_path: Path, records: bytes
) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(HEADER.encode() + b"\n" + records + b'{"type":"end"}\n')
    done = render(trace, tmp_path / "report.html")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: {trace}"), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    "header",
    [
        '{"type":"header","started":1e20}',
        '{"type":"header","started":"yesterday"}',
        '{"type":"header","price_per_gb":"8"}',
        '{"type":"header","price_per_gb":-1}',
        '{"type":"header","settings":[1]}',
    ],
)
def test_cli_refuses_a_broken_header(tmp_path: Path, header: str) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(header + "\n")
    done = render(trace, tmp_path / "report.html")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "header" in done.stderr


def test_cli_never_writes_the_report_over_its_trace(tmp_path: Path) -> None:
    trace = tmp_path / "crawl.html"  # the default output: the trace's name .html
    write_synthetic_trace(trace, seconds=5, domains=1)
    before = trace.read_bytes()
    for output in ([], ["-o", str(trace)]):
        done = subprocess.run(
            [sys.executable, "-m", "scrapy_justproxies.report", str(trace), *output],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert "is the trace itself" in done.stderr
        assert trace.read_bytes() == before


def test_hostile_names_are_text_in_the_report(tmp_path: Path) -> None:
    """A site picks its hostnames and paths; a spider its name and slots."""
    evil = "</svg><script>alert(1)</script>\"'><img src=x onerror=alert(2)>"
    records = [
        {**json.loads(HEADER), "spider": evil, "settings": {evil: evil}},
        {"type": "domain", "t": 1, "domain": evil, "ok": 3, "429": 1, "limit": 4},
        {"type": "domain", "t": 2, "domain": "a\udcff", "ok": 1},  # a lone surrogate
        {
            "type": "decision", "t": 1.5, "domain": evil, "old": 4, "new": 2,
            "reason": evil, "evidence": {"answers": 4, "429": 2},
        },
        {"type": "end", "t": 2, "reason": evil},
    ]  # fmt: skip
    trace, output = tmp_path / "trace.jsonl", tmp_path / "report.html"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = render(trace, output)
    assert done.returncode == 0, done.stderr
    html = output.read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<img" not in html
    assert html.count("<script>") == 1 and html.count("</svg>") == 2
    assert "&lt;/svg&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html


# -- in a browser --------------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """``(width, height, rows of RGB(A) bytes)`` of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat = 8, b""
    width = height = channels = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = (
                    left if pa <= pb and pa <= pc else up if pb <= pc else corner
                )
                line[x] = (line[x] + predictor) & 0xFF
        rows.append(bytes(line))
        previous = line
    return (
        width,
        height,
        [bytes(r[i] for i in range(len(r)) if i % channels < 3) for r in rows],
    )


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.crawl
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI has it)")
def test_a_real_crawls_report_in_headless_chromium(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(
        sandbox,
        {
            "a.test": {"rate": 30, "burst": 5, "latency_p50_ms": 30},
            "b.test": {"latency_p50_ms": 50},
            "c.test": {},
        },
    )
    port = sandbox.site_http_port
    requests = [
        {"url": f"http://{host}:{port}/item/{i}"}
        for host, count in (("a.test", 120), ("b.test", 60), ("c.test", 20))
        for i in range(1, count + 1)
    ]
    report = tmp_path / "report.html"
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=requests,
        settings={**ADDON, "LOG_LEVEL": "INFO", "JUSTPROXIES_REPORT": str(report)},
        env={
            **gateway_env,
            "JUSTPROXIES_POOL": "mobile",
            "JUSTPROXIES_PRICE_PER_GB": "8",
        },
    )
    assert result.reason == "finished", result.output[-3000:]
    assert f"report written to {report}" in result.log
    assert sandbox.password not in report.read_text()

    # The DOM as Chromium built it: each domain's chart, with its lines drawn.
    dom = chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile").stdout
    for host in ("a.test", "b.test", "c.test"):
        chart = re.search(
            rf'<svg [^>]*class="domain-chart" data-domain="{host}".*?</svg>', dom, re.S
        )
        assert chart, f"no chart for {host}"
        assert chart.group().count("<polyline") >= 3, host
    # a.test was rate-limited: its limit decisions are marked.
    a_chart = re.search(r'data-domain="a.test".*?</svg>', dom, re.S)
    assert a_chart and "<title>" in a_chart.group()

    # The table sorts in the browser: report.html#sort=domain clicks "domain"
    # (the first click sorts down), instead of the default order by cost.
    def order(html: str) -> list[str]:
        body = html.split('<table id="domains">')[1].split("</table>", maxsplit=1)[0]
        return re.findall(r'<tr><td data-v="([^"]+)"', body)

    assert order(report.read_text()) == ["a.test", "b.test", "c.test"]
    sorted_dom = chromium(
        "--dump-dom", report.as_uri() + "#sort=domain", profile=tmp_path / "profile"
    ).stdout
    assert order(sorted_dom) == ["c.test", "b.test", "a.test"]

    # A screenshot that is not blank: the chart colours are on screen.
    shot = tmp_path / "report.png"
    chromium(
        f"--screenshot={shot}",
        "--window-size=1000,1400",
        "--hide-scrollbars",
        report.as_uri(),
        profile=tmp_path / "profile",
    )
    width, height, rows = decode_png(shot.read_bytes())
    pixels = [row[i : i + 3] for row in rows for i in range(0, len(row), 3)]
    not_white = sum(p != b"\xff\xff\xff" for p in pixels)
    assert not_white > 0.02 * width * height
    for color in ("1f5fbf", "ff7f0e", "2ca02c", "d62728"):  # limit, in flight, ok, 429
        target = bytes.fromhex(color)
        near = sum(
            all(abs(a - b) <= 24 for a, b in zip(p, target, strict=True))
            for p in pixels
        )
        assert near > 20, f"#{color} is not drawn"


@pytest.mark.crawl
def test_a_report_that_cannot_be_written_at_close_keeps_the_trace(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    # /proc takes no new files, even from root (a full disk at close is alike).
    configure(sandbox, {"a.test": {}})
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=[{"url": f"http://a.test:{sandbox.site_http_port}/item/1"}],
        settings={**ADDON, "JUSTPROXIES_REPORT": "/proc/justproxies-report.html"},
        env=gateway_env,
    )
    assert result.reason == "finished", result.output[-3000:]
    assert "Traceback" not in result.log
    kept = re.search(
        r"JUSTPROXIES_REPORT: cannot write '/proc/justproxies-report.html' \(.+\); "
        r"the trace is kept at (\S+): render it with python -m "
        r"scrapy_justproxies.report",
        result.log,
    )
    assert kept, result.log[-3000:]
    trace = Path(kept.group(1))
    try:
        assert render(trace, tmp_path / "later.html").returncode == 0
    finally:
        trace.unlink()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI has it)")
def test_a_domain_without_a_success_sorts_as_the_worst(tmp_path: Path) -> None:
    """Its attempts per success are infinite; the browser must sort them so."""
    seconds = [
        ("few.test", 10, 5),
        ("none.test", 0, 7),  # only 429s: no success at all
        ("many.test", 10, 40),
        ("some.test", 10, 10),
    ]  # (domain, ok, 429); by cost: many, some, none, few
    records = [json.loads(HEADER)] + [
        {
            "type": "domain", "t": 1, "domain": name, "ok": ok, "429": limited,
            "sent": 100 * (ok + limited), "received": 100 * (ok + limited),
        }
        for name, ok, limited in seconds
    ]  # fmt: skip
    trace, report = tmp_path / "trace.jsonl", tmp_path / "report.html"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert render(trace, report).returncode == 0
    dom = chromium(
        "--dump-dom",
        report.as_uri() + "#sort=attempts%20per%20success",
        profile=tmp_path / "profile",
    ).stdout
    body = dom.split('<table id="domains">')[1].split("</table>", maxsplit=1)[0]
    order = re.findall(r'<tr><td data-v="([^"]+)"', body)
    assert order == ["none.test", "many.test", "some.test", "few.test"]


@pytest.mark.crawl
def test_by_hand_a_report_without_a_trace_leaves_no_temporary_file(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    """README: the trace extension by hand, without the add-on; a report from
    a temporary trace, removed at close; per-domain cost stats."""
    configure(sandbox, {"a.test": {}, "b.test": {}})
    port = sandbox.site_http_port
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    report = tmp_path / "report.html"
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=[
            {"url": f"http://{host}:{port}/item/{i}"}
            for host in ("a.test", "b.test")
            for i in range(1, 4)
        ],
        settings={
            "LOG_LEVEL": "INFO",
            "DOWNLOADER_MIDDLEWARES": {
                "scrapy_justproxies.JustProxiesMiddleware": 745,
                "scrapy_justproxies.ratelimit.JustProxiesRateLimitMiddleware": 940,
                "scrapy_justproxies.middleware.JustProxiesScrubMiddleware": 950,
            },
            "EXTENSIONS": {"scrapy_justproxies.trace.JustProxiesTrace": 0},
            "JUSTPROXIES_REPORT": str(report),
            "JUSTPROXIES_PRICE_PER_GB": 10**6,  # costs of a few kB to 4 places
        },
        env={**gateway_env, "TMPDIR": str(temporary)},
    )
    assert result.reason == "finished", result.output[-3000:]
    html = report.read_text()
    assert 'data-domain="a.test"' in html and 'data-domain="b.test"' in html
    assert list(temporary.iterdir()) == []
    for host in ("a.test", "b.test"):
        size = result.stats[f"justproxies/bytes/{host}"]
        assert result.stats[f"justproxies/cost/{host}"] == round(size / 1e3, 4) > 0
