"""The control API, bound to 127.0.0.1.

``GET /stats``, ``POST /reset``, ``GET /config``, ``POST /config``, ``GET /health``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource

from .config import ConfigError, SandboxConfig


def _json(request: Any, status: int, payload: object) -> bytes:
    body = json.dumps(payload, sort_keys=True, indent=1).encode() + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return body


class ControlResource(Resource):
    """A leaf resource routing on the path; JSON in, JSON out."""

    isLeaf = True

    def __init__(
        self,
        *,
        stats: Callable[[], dict[str, Any]],
        reset: Callable[[], None],
        get_config: Callable[[], SandboxConfig],
        configure: Callable[[SandboxConfig], None],
    ) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._stats = stats
        self._reset = reset
        self._get_config = get_config
        self._configure = configure

    def render(self, request: Any) -> bytes:
        path = (request.path or b"/").decode("latin-1").rstrip("/") or "/"
        method = request.method.decode("latin-1")
        routes: dict[tuple[str, str], Callable[[Any], bytes]] = {
            ("GET", "/health"): lambda r: _json(r, 200, {"ok": True}),
            ("GET", "/stats"): lambda r: _json(r, 200, self._stats()),
            ("POST", "/reset"): self._post_reset,
            ("GET", "/config"): lambda r: _json(r, 200, self._get_config().to_dict()),
            ("POST", "/config"): self._post_config,
        }
        handler = routes.get((method, path))
        if handler is None and method == "HEAD":
            handler = routes.get(("GET", path))
        if handler is not None:
            return handler(request)
        if any(p == path for _, p in routes):
            allowed = ", ".join(sorted(m for m, p in routes if p == path))
            request.setHeader(b"Allow", allowed.encode("ascii"))
            return _json(request, 405, {"error": f"{method} not allowed on {path}"})
        return _json(request, 404, {"error": f"no such endpoint {path}"})

    def _post_reset(self, request: Any) -> bytes:
        self._reset()
        return _json(request, 200, {"ok": True})

    def _post_config(self, request: Any) -> bytes:
        raw = request.content.read() if request.content is not None else b""
        try:
            config = SandboxConfig.from_json(raw)
        except ConfigError as error:
            return _json(request, 400, {"error": str(error)})
        self._configure(config)
        return _json(request, 200, {"ok": True, "config": self._get_config().to_dict()})
