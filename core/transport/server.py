"""Serving a neuron's app with uvicorn under limits no client can stretch (slowloris).

uvicorn bounds idle keep-alive connections but not a client that sends its request headers a
byte at a time: 1,100 such connections held a miner's every file descriptor. Here every
request's headers must arrive within ``header_timeout`` of the connection opening (or of the
previous response on a kept-alive connection), or the connection is closed; at most
``max_connections`` are open at once, and the process may open as many files as its hard limit
allows. Body read timeouts are the apps' (they read bodies).

``max_connections`` is a safety bound, set well above what the apps serve at once: how many
requests are served is decided per request by the apps (``core.transport.slots``), since
uvicorn's ``limit_concurrency`` (503 beyond it) counts connections, idle and half-sent ones alike.
So that connections which never finish their request cannot hold the bound against everyone
(530 that never finished their headers kept a peer endpoint at 503; 32 addresses holding 8
bodies each back dropped 19 of 20 signed callers), a connection opened at the bound closes the
oldest unfinished connection (still sending its headers or its body) of the address that holds
the most unfinished ones; uvicorn's 503 answers only when none is unfinished. A request being
served, a stream included, is never closed for another.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 512


class _HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers, and eviction of
    unfinished connections at the connection bound. ``uvicorn_options`` makes one subclass per
    server: ``unfinished`` is that server's (address -> its connections still sending a
    request, oldest first)."""

    header_timeout = DEFAULT_HEADER_TIMEOUT_S
    max_connections = DEFAULT_MAX_CONNECTIONS
    unfinished: dict[str, dict[_HeaderDeadline, None]] = {}

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._address = self.client[0] if self.client else ""
        self._arm()
        if len(self.connections) >= self.max_connections:
            self._evict()

    def _arm(self) -> None:
        self._disarm()
        self.unfinished.setdefault(self._address, {})[self] = None
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _disarm(self) -> None:
        self._stop_timer()
        waiting = self.unfinished.get(self._address)
        if waiting is not None:
            waiting.pop(self, None)
            if not waiting:  # the map holds only addresses with unfinished ones
                del self.unfinished[self._address]

    def _evict(self) -> None:
        if self.unfinished:  # else every connection is being served: uvicorn's 503 answers
            busiest = max(self.unfinished.values(), key=len)
            next(iter(busiest))._too_slow()

    def _too_slow(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()
        # no longer counted at once (uvicorn forgets it only when the loop next runs): a burst of
        # connections, each closing a silent one, stays within the bound uvicorn checks
        self.connections.discard(self)

    def on_headers_complete(self) -> None:
        self._stop_timer()  # the body's deadline is the app's; the request is unfinished still
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


@dataclass(frozen=True)
class ServerLimits:
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def uvicorn_options(self) -> dict:
        """Keyword arguments for uvicorn.run / uvicorn.Config (one server's: call it per
        server)."""
        protocol = type("HeaderDeadline", (_HeaderDeadline,),
                        {"header_timeout": self.header_timeout_s,
                         "max_connections": self.max_connections, "unfinished": {}})
        return {"http": protocol, "limit_concurrency": self.max_connections,
                "timeout_keep_alive": 5, "h11_max_incomplete_event_size": 64 * 1024}


def raise_open_files_limit() -> int:
    """Let the process open as many files as its hard limit allows (the soft limit is often
    1,024); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft
