"""A body-size limit for the neurons' HTTP apps, enforced before any handler reads the body.

A POST must say its length (411 otherwise; uvicorn then holds the body to it) and stay within the
limit (413): no request can make a neuron buffer more than the limit in memory."""

from __future__ import annotations

import asyncio
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


class BodyTimeout:
    """A request body must arrive within ``seconds`` (408 otherwise): read here, under the
    deadline and within BodyLimit's size, then handed to the app as received. For apps whose
    handlers would read it anyway (the validator's API, a worker); the miner reads its body
    itself, after deciding 401/403 from the headers."""

    def __init__(self, app, seconds: float, reject: Callable[[int, str], Response]):
        self.app, self.seconds, self.reject = app, seconds, reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        messages = []
        try:
            async with asyncio.timeout(self.seconds):
                while True:
                    message = await receive()
                    messages.append(message)
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break
        except TimeoutError:
            refusal = self.reject(408, f"the body took longer than {self.seconds:g} s")
            await refusal(scope, receive, send)
            return

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
