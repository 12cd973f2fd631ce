"""The sandbox's incremental HTTP/1.1 parsing, fed byte by byte and in bulk."""

from __future__ import annotations

import pytest

from scrapy_justproxies.sandbox.http1 import (
    BodyReader,
    HTTPParseError,
    RequestReader,
    ResponseParser,
    encode_chunk,
    strip_hop_by_hop,
)

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n"
    b"NEXT"
)


def _feed_in_pieces(parser: ResponseParser, data: bytes, size: int) -> bytes:
    body = b""
    for i in range(0, len(data), size):
        body += b"".join(parser.feed(data[i : i + size]))
    return body


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_chunked_response_any_split(size: int) -> None:
    parser = ResponseParser("GET")
    assert _feed_in_pieces(parser, CHUNKED, size) == b"hello world"
    assert parser.done
    assert parser.leftover == b"NEXT"
    assert parser.body_mode == "chunked"
    assert parser.keep_alive


def test_content_length_response() -> None:
    parser = ResponseParser("GET")
    data = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabcdef"
    assert b"".join(parser.feed(data)) == b"abc"
    assert parser.done and parser.leftover == b"def"
    assert parser.head is not None and parser.head.status == 201


def test_close_delimited_response() -> None:
    parser = ResponseParser("GET")
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\npart1") == [b"part1"]
    assert parser.feed(b"part2") == [b"part2"]
    assert not parser.done
    assert parser.eof()
    assert not parser.keep_alive


def test_truncated_response_is_not_complete() -> None:
    parser = ResponseParser("GET")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert not parser.eof()


@pytest.mark.parametrize(
    ("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304), ("CONNECT", 200)]
)
def test_bodyless_responses(method: str, status: int) -> None:
    parser = ResponseParser(method)
    parser.feed(f"HTTP/1.1 {status} X\r\nContent-Length: 99\r\n\r\n".encode())
    assert parser.done


def test_interim_responses_are_skipped() -> None:
    parser = ResponseParser("POST")
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert b"".join(parser.feed(data)) == b"ok"
    assert parser.head is not None and parser.head.status == 200


def test_connection_close_and_http10() -> None:
    parser = ResponseParser("GET")
    parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert parser.done and not parser.keep_alive
    parser = ResponseParser("GET")
    parser.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not parser.keep_alive


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"SPDY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
)
def test_malformed_responses(data: bytes) -> None:
    with pytest.raises(HTTPParseError):
        ResponseParser("GET").feed(data)


def test_request_reader_pipelined_requests_with_bodies() -> None:
    reader = RequestReader()
    stream = (
        b"POST http://a.test/x HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
        b"PUT http://a.test/y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
        b"GET http://a.test/z HTTP/1.1\r\nHost: a.test\r\n\r\n"
    )
    requests = []
    for byte in range(len(stream)):
        reader.feed(stream[byte : byte + 1])
        while (request := reader.next_request()) is not None:
            requests.append(request)
    assert [(r.method, r.head.target, r.body) for r in requests] == [
        ("POST", "http://a.test/x", b"body"),
        ("PUT", "http://a.test/y", b"abc"),
        ("GET", "http://a.test/z", b""),
    ]


def test_request_reader_connect_leaves_tunnel_bytes() -> None:
    reader = RequestReader()
    reader.feed(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01")
    request = reader.next_request()
    assert request is not None and request.method == "CONNECT"
    assert reader.take_buffer() == b"\x16\x03\x01"


def test_request_reader_expect_continue() -> None:
    reader = RequestReader()
    reader.feed(b"POST http://a.test/ HTTP/1.1\r\nExpect: 100-continue\r\n")
    reader.feed(b"Content-Length: 2\r\n\r\n")
    assert reader.next_request() is None
    assert reader.wants_continue()
    assert not reader.wants_continue()  # only once
    reader.feed(b"ok")
    request = reader.next_request()
    assert request is not None and request.body == b"ok"


@pytest.mark.parametrize(
    "data",
    [
        b"GET\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70_000,
    ],
)
def test_request_reader_rejects_garbage(data: bytes) -> None:
    reader = RequestReader()
    reader.feed(data)
    with pytest.raises(HTTPParseError):
        reader.next_request()


def test_request_reader_body_limit() -> None:
    reader = RequestReader(max_body=10)
    reader.feed(b"POST http://a.test/ HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(HTTPParseError, match="too large"):
        reader.next_request()


def test_strip_hop_by_hop() -> None:
    headers = [
        ("Host", "a.test"),
        ("Connection", "keep-alive, X-Private"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic xyz"),
        ("TE", "trailers"),
        ("Trailer", "X"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("x-private", "secret"),
        ("Accept", "*/*"),
    ]
    assert strip_hop_by_hop(headers) == [("Host", "a.test"), ("Accept", "*/*")]


def test_body_reader_length_and_encode_chunk() -> None:
    reader = BodyReader("length", 3)
    assert reader.feed(b"ab") == [b"ab"]
    assert reader.feed(b"cde") == [b"c"]
    assert reader.done and reader.leftover == b"de"
    chunked = BodyReader("chunked")
    assert chunked.feed(encode_chunk(b"xyz") + b"0\r\n\r\n") == [b"xyz"]
    assert chunked.done
