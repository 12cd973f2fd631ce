"""The warm-start state file: pure load/merge/save, and concurrent savers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from scrapy_justproxies.controller import Learned, LimitKind
from scrapy_justproxies.state import (
    FORMAT,
    VERSION,
    StateFileError,
    decode,
    encode,
    load,
    merge,
    save,
)

DAY = 86400.0


def entry(concurrency: int = 11, at: float = 1000.0, **kw: object) -> Learned:
    values: dict[str, object] = {
        "concurrency": concurrency,
        "rate": 49.5,
        "kind": LimitKind.RATE,
        "answer_time": 0.22,
        "at": at,
        "samples": 800,
        **kw,
    }
    return Learned(**values)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "limits.json"
    domains = {
        "a.test": entry(),
        "b.test": entry(4, rate=None, kind=LimitKind.INFLIGHT),
    }
    save(path, domains, now=1000.0, max_age=DAY)
    assert load(path, now=1000.0, max_age=DAY).domains == domains
    data = json.loads(path.read_text())
    assert (data["format"], data["version"]) == (FORMAT, VERSION)
    assert not list(tmp_path.glob("deep/.limits.json.*"))  # no temp file left


def test_missing_file_is_a_quiet_cold_start(tmp_path: Path) -> None:
    loaded = load(tmp_path / "none.json", now=0.0, max_age=DAY)
    assert (loaded.domains, loaded.warning) == ({}, None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"format": "scrapy-justproxies/limits", "version": 1, "domains": {"a',
        "[1, 2]",
        '{"format": "something-else", "version": 1, "domains": {}}',
        '{"format": "scrapy-justproxies/limits", "version": 99, "domains": {}}',
        '{"format": "scrapy-justproxies/limits", "version": 1, "domains": '
        '{"a.test": {"concurrency": "many", "at": 1, "samples": 1}}}',
        '{"format": "scrapy-justproxies/limits", "version": 1, "domains": '
        '{"a.test": {"concurrency": 5, "at": 1, "samples": 1, "kind": "weird"}}}',

        # Hostile numbers: 10**400 made the controller raise OverflowError.
        '{"format": "scrapy-justproxies/limits", "version": 1, "domains": '
        '{"a.test": {"concurrency": 1' + "0" * 400 + ', "at": 1, "samples": 1,'
        ' "answer_time": 0.2}}}',
        '{"format": "scrapy-justproxies/limits", "version": 1, "domains": '
        '{"a.test": {"concurrency": 5, "at": 1, "samples": 1, "rate": 1e300}}}',
        '{"format": "scrapy-justproxies/limits", "version": 1, "domains": '
        '{"a.test": {"concurrency": 5, "at": 1, "samples": 1,'
        ' "answer_time": 1e300}}}',
    ],
    ids=["empty", "truncated", "truncated-entry", "list", "foreign", "version",
         "bad-entry", "bad-kind", "huge-concurrency", "huge-rate", "huge-time"],
)  # fmt: skip
def test_bad_files_give_a_warning_and_nothing(tmp_path: Path, text: str) -> None:
    path = tmp_path / "limits.json"
    path.write_text(text)
    loaded = load(path, now=0.0, max_age=DAY)
    assert loaded.domains == {}
    assert loaded.warning
    with pytest.raises(StateFileError):
        decode(text)


def test_unreadable_file_gives_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.mkdir()  # a directory where the file should be
    loaded = load(path, now=0.0, max_age=DAY)
    assert loaded.domains == {}
    assert loaded.warning is not None


def test_old_entries_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text(encode({"old.test": entry(at=0.0), "new.test": entry(at=DAY)}))
    loaded = load(path, now=DAY + 10, max_age=DAY)
    assert list(loaded.domains) == ["new.test"]
    assert loaded.stale == 1


def test_entries_dated_in_the_future_are_ignored(tmp_path: Path) -> None:
    """A clock far ahead (or a hostile file) would keep an entry forever:
    beyond a few minutes of skew it is stale."""
    path = tmp_path / "limits.json"
    now = 10 * DAY
    path.write_text(
        encode({"skewed.test": entry(at=now + 60), "future.test": entry(at=now + DAY)})
    )
    loaded = load(path, now=now, max_age=DAY)
    assert list(loaded.domains) == ["skewed.test"]
    assert loaded.stale == 1


def test_merge_keeps_the_newer_entry_per_domain() -> None:
    old = {"a": entry(5, at=10.0), "b": entry(6, at=30.0)}
    new = {"a": entry(7, at=20.0), "b": entry(8, at=25.0), "c": entry(9, at=20.0)}
    merged = merge(old, new, now=30.0, max_age=DAY)
    assert {k: v.concurrency for k, v in merged.items()} == {"a": 7, "b": 6, "c": 9}


def test_save_replaces_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text("{garbage")
    save(path, {"a.test": entry()}, now=1000.0, max_age=DAY)
    assert list(load(path, now=1000.0, max_age=DAY).domains) == ["a.test"]


def _saver(path: str, name: str, count: int) -> None:
    for i in range(count):
        save(
            Path(path),
            {f"{name}-{i}.test": entry(at=1000.0 + i)},
            now=1000.0 + i,
            max_age=DAY,
        )


def test_concurrent_savers_keep_every_entry(tmp_path: Path) -> None:
    """Two processes saving the same file at once: every entry of both is
    there at the end and the file parses (without the lock and the merge,
    one process's read-modify-write loses the other's entries)."""
    path = tmp_path / "limits.json"
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_saver, args=(str(path), name, 40))
        for name in ("one", "two")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    domains = load(path, now=1040.0, max_age=DAY).domains
    assert len(domains) == 80
