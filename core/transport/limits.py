"""A body-size limit for the neurons' HTTP apps, enforced before any handler reads the body.

A POST must say its length (411 otherwise; uvicorn then holds the body to it) and stay within the
limit (413): no request can make a neuron buffer more than the limit in memory."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response


class BodyLimit:
    def __init__(self, app, max_bytes: int, reject: Callable[[int, str], Response]):
        self.app, self.max_bytes, self.reject = app, max_bytes, reject

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            problem = None
            if length is None:
                problem = (411, "a Content-Length header is required")
            elif not length.isdigit() or int(length) > self.max_bytes:
                problem = (413, f"request body over {self.max_bytes} bytes")
            if problem:
                await self.reject(*problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)
