"""The warm-start state file: what each domain's controller learned, kept
between crawls (``JUSTPROXIES_STATE_FILE``).

Pure apart from the file itself: the clock is passed in, nothing is global.
The file is JSON::

    {"format": "scrapy-justproxies/limits", "version": 1,
     "domains": {"example.com": {"concurrency": 11, "rate": 49.6,
                                 "kind": "rate", "answer_time": 0.22,
                                 "at": 1767225600.0, "samples": 812}}}

Keys are download slot keys (host names), values
:class:`~scrapy_justproxies.controller.Learned`; no credentials, no URLs.

Crash-safe: a save writes a temporary file next to the target, fsyncs it and
renames it over the target, so a crash (``kill -9``) leaves the old file or
the new one, never half of one. Two crawls saving at once never corrupt it:
a save holds an exclusive ``fcntl`` lock on ``<file>.lock`` while it reads
the current file, merges (per domain, the newer entry wins) and replaces it.
Reading never fails a crawl: a missing file is a cold start, a corrupt,
truncated, foreign or unreadable one is a cold start with one warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .controller import Learned

__all__ = ["FORMAT", "VERSION", "Loaded", "StateFileError", "load", "merge", "save"]

FORMAT = "scrapy-justproxies/limits"
VERSION = 1


class StateFileError(ValueError):
    """The file is not a state file this version can read."""


@dataclass(frozen=True)
class Loaded:
    """What :func:`load` found."""

    domains: dict[str, Learned]
    """Entries younger than the maximum age."""
    stale: int = 0
    """Entries ignored for their age."""
    warning: str | None = None
    """Why the file could not be used (then ``domains`` is empty)."""


def encode(domains: Mapping[str, Learned]) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "domains": {key: domains[key].to_dict() for key in sorted(domains)},
        },
        indent=1,
        sort_keys=True,
    )


def decode(text: str) -> dict[str, Learned]:
    """The entries of a state file's text; :class:`StateFileError` if it is
    not one (truncated, another format or version, a bad entry)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateFileError(f"not a {FORMAT} file")
    if data.get("version") != VERSION:
        raise StateFileError(
            f"version {data.get('version')!r}, this version reads {VERSION}"
        )
    raw = data.get("domains")
    if not isinstance(raw, dict):
        raise StateFileError("no domains")
    domains: dict[str, Learned] = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            raise StateFileError(f"entry {key!r} is not an object")
        try:
            domains[str(key)] = Learned.from_dict(entry)
        except ValueError as exc:
            raise StateFileError(f"entry {key!r}: {exc}") from None
    return domains


def load(path: Path, *, now: float, max_age: float) -> Loaded:
    """The entries of ``path`` learned less than ``max_age`` seconds before
    ``now`` (wall-clock seconds). Never raises for a bad or missing file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Loaded({})
    except (OSError, UnicodeDecodeError) as exc:
        return Loaded({}, warning=f"cannot read it ({exc.__class__.__name__})")
    try:
        domains = decode(text)
    except StateFileError as exc:
        return Loaded({}, warning=str(exc))
    fresh = {k: v for k, v in domains.items() if _fresh(v, now, max_age)}
    return Loaded(fresh, stale=len(domains) - len(fresh))


FUTURE_SKEW = 300.0
"""Seconds an entry may be dated after now (clocks of two machines sharing
the file differ): later, it never ages out, and is dropped as stale."""


def _fresh(entry: Learned, now: float, max_age: float) -> bool:
    return -FUTURE_SKEW <= now - entry.at <= max_age


def merge(
    old: Mapping[str, Learned],
    new: Mapping[str, Learned],
    *,
    now: float,
    max_age: float,
) -> dict[str, Learned]:
    """Per domain the newer entry (by ``at``); entries too old are dropped."""
    merged = dict(old)
    for key, entry in new.items():
        if key not in merged or entry.at >= merged[key].at:
            merged[key] = entry
    return {k: v for k, v in merged.items() if _fresh(v, now, max_age)}


def save(
    path: Path, domains: Mapping[str, Learned], *, now: float, max_age: float
) -> None:
    """Merge ``domains`` into ``path`` and replace it atomically.

    ``OSError`` if it cannot be written (the caller logs it); a current file
    that cannot be read is replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        current = load(path, now=now, max_age=max_age).domains
        text = encode(merge(current, domains, now=now, max_age=max_age))
        replace_atomically(path, text.encode("utf-8"))


def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it and
    rename it over ``path``: a crash at any moment leaves the old file or
    the new one, never half of one. ``OSError`` if it cannot be written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
