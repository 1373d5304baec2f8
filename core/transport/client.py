"""The validator's signed HTTP client: one aiohttp session with a bounded connection pool.

aiohttp, not httpx, because the validator fans out to every miner at once: with 64 signed
requests in flight aiohttp kept ~2,800 req/s here where httpx fell to ~90 (httpx #3215).

A request is signed only once it holds one of the pool's connections (``_gate``): signed first,
it could wait for one in aiohttp's queue past the signature's freshness and reach the miner
stale, a 401 that counts against the miner (docs/protocol.md §6) for the validator's own delay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from bittensor import http_auth
from pydantic import BaseModel

from core.errors import PeerFault


class TooLarge(PeerFault):
    """A peer's answer, or one line of it, went past the size its message allows."""


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


KEEPALIVE_S = 4.0
PER_HOST = 64  # connections to one neuron at once, unless a window needs more (``widen``)


def _reachable(endpoint: str | None) -> str:
    if not endpoint:
        raise aiohttp.ClientConnectionError("the neuron has announced no endpoint")
    return endpoint


class SignedClient:
    def __init__(self, keypair, *, max_connections: int = 256):
        self._keypair = keypair  # the loaded hotkey: signing with it costs ~36 µs, a Wallet ~1 ms
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._all = asyncio.Semaphore(max_connections)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._host_sizes: dict[str, int] = {}

    @property
    def hotkey(self) -> str:
        return self._keypair.ss58_address

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=0,  # ``_gate`` holds each host to its size
                # idle connections go before the server's keep-alive (uvicorn: 5 s) closes them:
                # reusing one it closed fails as "Server disconnected", a 5xx the miner never sent
                keepalive_timeout=KEEPALIVE_S))
        return self._session

    @contextlib.asynccontextmanager
    async def _gate(self, endpoint: str):
        """A place in the pool, per host and in all, held for one exchange: what aiohttp's
        connector would otherwise make a request wait for after it was signed."""
        async with self._all, self._host(urlsplit(endpoint).netloc):
            yield

    def _host(self, host: str) -> asyncio.Semaphore:
        if host not in self._hosts:
            self._hosts[host] = asyncio.Semaphore(PER_HOST)
            self._host_sizes[host] = PER_HOST
        return self._hosts[host]

    def widen(self, endpoint: str | None, size: int) -> None:
        """Let ``endpoint`` hold at least ``size`` connections at once: a window's requests to
        a miner (``core.validator.sender``) must never wait here, inside their time limit, for
        a place the miner cannot see."""
        if not endpoint:
            return
        host = urlsplit(endpoint).netloc
        gate = self._host(host)
        for _ in range(size - self._host_sizes[host]):
            gate.release()
        self._host_sizes[host] = max(size, self._host_sizes[host])

    def _sign(self, path: str, body: bytes, receiver: str) -> dict[str, str]:
        headers = http_auth.sign(self._keypair, method="POST", path=path, body=body,
                                 receiver_ss58=receiver)
        headers["Content-Type"] = "application/json"
        return headers

    async def post(self, endpoint: str | None, path: str, receiver: str, message: BaseModel,
                   timeout: float, max_bytes: int) -> Reply:
        """POST a message signed for ``receiver``; the answer read up to ``max_bytes`` (TooLarge
        beyond). Raises asyncio.TimeoutError or aiohttp errors (a neuron that announced no
        ``endpoint`` cannot be reached)."""
        endpoint = _reachable(endpoint)
        body = message.model_dump_json().encode()
        async with self._gate(endpoint), self._http().post(
            endpoint + path, data=body, headers=self._sign(path, body, receiver),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            if (r.content_length or 0) > max_bytes:
                raise TooLarge(f"{r.content_length} bytes announced, {max_bytes} allowed")
            data = bytearray()
            async for block in r.content.iter_any():
                data += block
                if len(data) > max_bytes:
                    raise TooLarge(f"more than {max_bytes} bytes")
            return Reply(r.status, bytes(data), r.headers)

    @contextlib.asynccontextmanager
    async def opened(self, endpoint: str | None, path: str, receiver: str, message: BaseModel,
                     timeout: float) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST a message signed for ``receiver``; the response, whose body its caller reads
        (``Lines`` splits it). The connection is released when the block ends."""
        endpoint = _reachable(endpoint)
        body = message.model_dump_json().encode()
        async with self._gate(endpoint), self._http().post(
            endpoint + path, data=body, headers=self._sign(path, body, receiver),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            yield r

    async def stream(self, endpoint: str | None, path: str, receiver: str, message: BaseModel,
                     timeout: float, max_line: int) -> AsyncIterator[tuple[int, bytes]]:
        """POST and yield (status, line) for each non-blank line of the answer as it arrives; a
        line longer than ``max_line`` bytes raises TooLarge (nothing longer is ever buffered)."""
        async with self.opened(endpoint, path, receiver, message, timeout) as r:
            if r.status != 200:
                yield r.status, b""  # the status says it all; the body is not read
                return
            lines = Lines(max_line)
            async for block in r.content.iter_any():
                for line in lines.feed(block):
                    yield r.status, line
            for line in lines.end():
                yield r.status, line

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Lines:
    """A streamed answer's non-blank lines from its blocks as they arrive, each at most
    ``max_line`` bytes (TooLarge beyond: nothing longer is ever buffered). Synchronous, so a
    reader handles every line a block brings in one step (``core.validator.traffic``); each
    line is checked as it is taken, so a reader that stops at an answer's final line never
    judges what came after it in the same block."""

    __slots__ = ("max_line", "_pending")

    def __init__(self, max_line: int):
        self.max_line = max_line
        self._pending = b""

    def feed(self, block: bytes) -> Iterator[bytes]:
        *lines, rest = (self._pending + block).split(b"\n")
        self._pending = rest
        for line in lines:
            if len(line) > self.max_line:
                raise TooLarge(f"a line over {self.max_line} bytes")
            if line.strip():
                yield line
        if len(rest) > self.max_line:
            raise TooLarge(f"a line over {self.max_line} bytes")

    def end(self) -> list[bytes]:
        """The last line when the answer did not end with a newline."""
        rest, self._pending = self._pending, b""
        return [rest] if rest.strip() else []
