"""A body-size limit for the neurons' HTTP apps, enforced before any handler reads the body.

A POST must say its length (411 otherwise; uvicorn then holds the body to it) and stay within the
limit (413): no request can make a neuron buffer more than the limit in memory."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response


class BodyLimit:
    """``max_bytes`` for every POST, or the limit ``per_path`` gives its path (a miner's
    /capacity takes a few bytes, its chat endpoint no image)."""

    def __init__(self, app, max_bytes: int, reject: Callable[[int, str], Response],
                 per_path: dict[str, int] | None = None):
        self.app, self.max_bytes, self.reject = app, max_bytes, reject
        self.per_path = per_path or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            limit = self.per_path.get(scope["path"], self.max_bytes)
            problem = None
            if length is None:
                problem = (411, "a Content-Length header is required")
            elif not length.isdigit() or int(length) > limit:
                problem = (413, f"request body over {limit} bytes")
            if problem:
                await self.reject(*problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)
