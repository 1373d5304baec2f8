"""A body-size limit for the neurons' HTTP apps, enforced before any handler reads the body.

A POST must say its length (411 otherwise; uvicorn then holds the body to it) and stay within the
limit (413): no request can make a neuron buffer more than the limit in memory. A body's deadline
(``BodyTimeout``), and the bound on a client's text an answer echoes (``shown``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.responses import Response

from core.transport.slots import refusal

MAX_SHOWN = 64  # characters of a client's text in an error message or a log line


def shown(text: object) -> str:
    """A client's text as an answer or a log may echo it: at most MAX_SHOWN characters."""
    text = str(text)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


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
    handlers would read it anyway (the validator's API and peer endpoint, a worker); the miner
    reads its body itself, after deciding 401/403 from the headers.

    Until its body is in, nothing proves who a caller is (an API key or a signature is checked
    after), so one address may have at most ``per_address`` bodies arriving at once (429 with
    ``Retry-After`` beyond): a host that holds its bodies back holds no more than that many
    requests, and, read before ``core.transport.slots``' admission, none of the app's slots. A
    body sent with its headers is read at once and never counts."""

    def __init__(self, app, seconds: float, reject: Callable[[int, str], Response],
                 per_address: int | None = None):
        self.app, self.seconds, self.reject = app, seconds, reject
        self.per_address = per_address
        self._arriving: dict[str, int] = {}  # address -> bodies arriving; only addresses with some

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        address = scope["client"][0] if scope.get("client") else ""
        arriving = self._arriving.get(address, 0)
        if self.per_address is not None and arriving >= self.per_address:
            await refusal(self.reject, 429, f"more than {self.per_address} request bodies "
                                            "arriving from this address", 1)(scope, receive, send)
            return
        self._arriving[address] = arriving + 1
        messages = []
        try:
            async with asyncio.timeout(self.seconds):
                while True:
                    message = await receive()
                    messages.append(message)
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break
        except TimeoutError:
            refused = self.reject(408, f"the body took longer than {self.seconds:g} s")
            await refused(scope, receive, send)
            return
        finally:
            left = self._arriving.pop(address) - 1
            if left:
                self._arriving[address] = left

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
