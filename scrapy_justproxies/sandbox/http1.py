"""A small incremental HTTP/1.1 message parser shared by the gateway and probes.

Only what a forward proxy needs: request/response heads, Content-Length,
chunked and close-delimited bodies.  Header names keep their case on the wire
and compare case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Headers = list[tuple[str, str]]
BodyMode = Literal["none", "length", "chunked", "close"]

CRLF = b"\r\n"
MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 4096
LAST_CHUNK = b"0\r\n\r\n"

# RFC 9110 7.6.1 plus the proxy credentials, which must never travel further.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class HTTPParseError(ValueError):
    """Malformed HTTP on the wire."""


# -- headers -------------------------------------------------------------------


def header_values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    lname = name.lower()
    return [value for key, value in headers if key.lower() == lname]


def header_get(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    values = header_values(headers, name)
    return values[0] if values else None


def header_tokens(headers: Iterable[tuple[str, str]], name: str) -> set[str]:
    """Comma-separated tokens of every ``name`` header, lower-cased."""
    return {
        token.strip().lower()
        for value in header_values(headers, name)
        for token in value.split(",")
        if token.strip()
    }


def without_headers(
    headers: Iterable[tuple[str, str]], names: Iterable[str]
) -> Headers:
    drop = {name.lower() for name in names}
    return [(key, value) for key, value in headers if key.lower() not in drop]


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Remove hop-by-hop headers, including any the Connection header names."""
    named = header_tokens(headers, "connection")
    return without_headers(headers, HOP_BY_HOP | named)


def serialize_head(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [start_line, *(f"{key}: {value}" for key, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- heads ---------------------------------------------------------------------


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    headers: Headers = field(default_factory=list)


@dataclass
class ResponseHead:
    version: str
    status: int
    reason: str
    headers: Headers = field(default_factory=list)


def _parse_header_lines(lines: list[str]) -> Headers:
    headers: Headers = []
    for line in lines:
        if not line:
            continue
        if line[0] in " \t":
            raise HTTPParseError("obsolete header line folding")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPParseError(f"malformed header line {line!r}")
        headers.append((name, value.strip()))
    return headers


def parse_request_head(block: bytes) -> RequestHead:
    """Parse a request head (without the final blank line)."""
    lines = block.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HTTPParseError(f"malformed request line {lines[0]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HTTPParseError(f"unsupported HTTP version {version!r}")
    return RequestHead(method.upper(), target, version, _parse_header_lines(lines[1:]))


def parse_response_head(block: bytes) -> ResponseHead:
    lines = block.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise HTTPParseError(f"malformed status line {lines[0]!r}")
    return ResponseHead(version, int(code), reason, _parse_header_lines(lines[1:]))


def _content_length(headers: Headers) -> int | None:
    values = {
        v.strip()
        for raw in header_values(headers, "content-length")
        for v in raw.split(",")
    }
    if not values:
        return None
    if len(values) != 1:
        raise HTTPParseError("conflicting Content-Length headers")
    value = values.pop()
    if not value.isdigit():
        raise HTTPParseError(f"bad Content-Length {value!r}")
    return int(value)


def _is_chunked(headers: Headers) -> bool:
    codings = [
        token.strip().lower()
        for raw in header_values(headers, "transfer-encoding")
        for token in raw.split(",")
        if token.strip()
    ]
    if not codings:
        return False
    if codings[-1] != "chunked":
        raise HTTPParseError(f"unsupported Transfer-Encoding {codings!r}")
    return True


def request_body_mode(headers: Headers) -> tuple[BodyMode, int]:
    if _is_chunked(headers):
        return "chunked", 0
    length = _content_length(headers)
    if length:
        return "length", length
    return "none", 0


def response_body_mode(method: str, head: ResponseHead) -> tuple[BodyMode, int]:
    if method == "HEAD" or head.status < 200 or head.status in (204, 304):
        return "none", 0
    if method == "CONNECT" and 200 <= head.status < 300:
        return "none", 0  # what follows is the tunnel
    if _is_chunked(head.headers):
        return "chunked", 0
    length = _content_length(head.headers)
    if length is not None:
        return ("length", length) if length else ("none", 0)
    return "close", 0


# -- bodies --------------------------------------------------------------------


class BodyReader:
    """Incremental body decoder for one message.

    ``feed`` returns decoded body pieces; once the body is complete ``done``
    is set and ``leftover`` holds bytes that belong to the next message.
    """

    def __init__(self, mode: BodyMode, length: int = 0) -> None:
        self.mode = mode
        self.done = mode == "none" or (mode == "length" and length == 0)
        self.leftover = b""
        self._remaining = length
        self._buffer = b""
        # chunked states: "size", "data", "data-crlf", "trailer"
        self._state = "size"

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            self.leftover += data
            return []
        if self.mode == "close":
            return [data] if data else []
        if self.mode == "length":
            piece = data[: self._remaining]
            self._remaining -= len(piece)
            if self._remaining == 0:
                self.done = True
                self.leftover = data[len(piece) :]
            return [piece] if piece else []
        return self._feed_chunked(data)

    def eof(self) -> bool:
        """The connection closed: True if that completes the body."""
        if self.mode == "close":
            self.done = True
        return self.done

    def _feed_chunked(self, data: bytes) -> list[bytes]:  # noqa: PLR0912 - one state machine
        pieces: list[bytes] = []
        buffer = self._buffer + data
        while not self.done:
            if self._state == "data":
                if not buffer:
                    break
                piece = buffer[: self._remaining]
                buffer = buffer[len(piece) :]
                self._remaining -= len(piece)
                pieces.append(piece)
                if self._remaining == 0:
                    self._state = "data-crlf"
                continue
            index = buffer.find(CRLF)
            if index < 0:
                if len(buffer) > MAX_CHUNK_LINE:
                    raise HTTPParseError("chunk line too long")
                break
            line, buffer = buffer[:index], buffer[index + 2 :]
            if self._state == "size":
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise HTTPParseError(f"bad chunk size {size_text!r}") from None
                if size < 0:
                    raise HTTPParseError("negative chunk size")
                if size == 0:
                    self._state = "trailer"
                else:
                    self._remaining = size
                    self._state = "data"
            elif self._state == "data-crlf":
                if line:
                    raise HTTPParseError("chunk data not followed by CRLF")
                self._state = "size"
            elif not line:  # trailer section ends with an empty line
                self.done = True
        if self.done:
            self.leftover = buffer
            self._buffer = b""
        else:
            self._buffer = buffer
        return pieces


# -- whole messages ------------------------------------------------------------


@dataclass
class Request:
    head: RequestHead
    body: bytes

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def headers(self) -> Headers:
        return self.head.headers


class RequestReader:
    """Buffers a client's byte stream and yields complete requests in order.

    Bodies are buffered whole (the gateway forwards them with a
    Content-Length), up to ``max_body`` bytes.
    """

    def __init__(self, max_body: int = 16 * 1024 * 1024) -> None:
        self._buffer = b""
        self._head: RequestHead | None = None
        self._body: BodyReader | None = None
        self._pieces: list[bytes] = []
        self._size = 0
        self._continue_sent = False
        self._max_body = max_body

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def take_buffer(self) -> bytes:
        """Hand over unparsed bytes (e.g. a TLS hello sent right after CONNECT)."""
        data, self._buffer = self._buffer, b""
        return data

    def wants_continue(self) -> bool:
        """True once per request whose head asks for ``100 Continue``."""
        if (
            self._head is not None
            and not self._continue_sent
            and "100-continue" in header_tokens(self._head.headers, "expect")
        ):
            self._continue_sent = True
            return True
        return False

    def next_request(self) -> Request | None:
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise HTTPParseError("request head too large")
                return None
            # Tolerate stray CRLFs between requests (RFC 9112 2.2).
            block = self._buffer[:end].lstrip(b"\r\n")
            self._buffer = self._buffer[end + 4 :]
            self._head = parse_request_head(block)
            self._continue_sent = False
            mode: BodyMode
            if self._head.method == "CONNECT":
                mode, length = "none", 0  # anything after it is tunnel data
            else:
                mode, length = request_body_mode(self._head.headers)
            if length > self._max_body:
                raise HTTPParseError("request body too large")
            self._body = BodyReader(mode, length)
            self._pieces = []
            self._size = 0
        assert self._body is not None
        if not self._body.done and self._buffer:
            data, self._buffer = self._buffer, b""
            for piece in self._body.feed(data):
                self._pieces.append(piece)
                self._size += len(piece)
            if self._size > self._max_body:
                raise HTTPParseError("request body too large")
            # Empty until the body is complete, then the next request's bytes.
            self._buffer = self._body.leftover
        if not self._body.done:
            return None
        request = Request(self._head, b"".join(self._pieces))
        self._head = None
        self._body = None
        self._pieces = []
        return request


class ResponseParser:
    """Incremental parser for one response to a request with ``method``.

    Interim 1xx responses are skipped.  After each ``feed`` check ``head``
    (set once the final head is parsed) and ``done``; ``leftover`` holds bytes
    past the end of the message.
    """

    def __init__(self, method: str) -> None:
        self.method = method.upper()
        self.head: ResponseHead | None = None
        self.body_mode: BodyMode = "none"
        self.done = False
        self.leftover = b""
        self._buffer = b""
        self._body: BodyReader | None = None

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            self.leftover += data
            return []
        if self._body is None:
            self._buffer += data
            while True:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD_BYTES:
                        raise HTTPParseError("response head too large")
                    return []
                head = parse_response_head(self._buffer[:end])
                self._buffer = self._buffer[end + 4 :]
                if 100 <= head.status < 200 and head.status != 101:
                    continue  # interim response
                break
            self.head = head
            self.body_mode, length = response_body_mode(self.method, head)
            self._body = BodyReader(self.body_mode, length)
            data, self._buffer = self._buffer, b""
        pieces = self._body.feed(data)
        if self._body.done:
            self.done = True
            self.leftover = self._body.leftover
        return pieces

    def eof(self) -> bool:
        """The connection closed: True if the response is complete."""
        if self.done:
            return True
        if self._body is not None and self._body.eof():
            self.done = True
        return self.done

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this one."""
        if self.head is None or self.body_mode == "close":
            return False
        tokens = header_tokens(self.head.headers, "connection")
        if self.head.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens
