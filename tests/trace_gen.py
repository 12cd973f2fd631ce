"""A synthetic trace the size of a long crawl (for the report's tests and
``bench/report_render.py``): ``domains`` domains, each active every second
for ``seconds`` seconds, with limit decisions every few seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_synthetic_trace(
    path: Path, *, seconds: int = 3600, domains: int = 20, seed: int = 1
) -> None:
    rng = random.Random(seed)
    names = [f"shop{i:02d}.example" for i in range(domains)]
    limits = {name: 16 for name in names}
    with path.open("w", encoding="utf-8") as out:
        header = {
            "type": "header",
            "format": 1,
            "plugin": "synthetic",
            "scrapy": "synthetic",
            "spider": "synthetic",
            "started": 1_700_000_000.0,
            "pool": "mobile",
            "gateway": "http://gateway.invalid:8080",
            "price_per_gb": 8.0,
            "settings": {"JUSTPROXIES_POOL": "mobile"},
        }
        out.write(json.dumps(header) + "\n")
        for second in range(1, seconds + 1):
            lines = []
            for index, name in enumerate(names):
                if rng.random() < 0.1:
                    old = limits[name]
                    backoff = rng.random() < 0.4
                    new = max(1, old * 3 // 4) if backoff else min(50, old + 2)
                    limits[name] = new
                    decision = {
                        "type": "decision",
                        "t": second - 0.5,
                        "domain": name,
                        "old": old,
                        "new": new,
                        "reason": "backoff" if backoff else "increase",
                        "evidence": {
                            "answers": 40,
                            "429": 6 if backoff else 0,
                            "share": 0.15 if backoff else 0.0,
                            "overload_level": old if backoff else None,
                        },
                    }
                    lines.append(json.dumps(decision, separators=(",", ":")))
                ok = rng.randint(5, 60) // (1 + index // 5)
                rate_limited = rng.randint(0, 5)
                record = {
                    "type": "domain",
                    "t": second + 0.01,
                    "domain": name,
                    "limit": limits[name],
                    "in_flight": rng.randint(0, limits[name]),
                    "ok": ok,
                    "429": rate_limited,
                    "error": rng.randint(0, 1),
                    "gateway": 0,
                    "sent": 400 * (ok + rate_limited),
                    "received": 30_000 * ok + 300 * rate_limited,
                    "bytes_429": 700 * rate_limited,
                    "answer_ms": round(rng.uniform(200, 900), 1),
                }
                lines.append(json.dumps(record, separators=(",", ":")))
            out.write("\n".join(lines) + "\n")
        end = {"type": "end", "t": seconds + 0.5, "reason": "finished"}
        out.write(json.dumps(end) + "\n")
