"""Serving a neuron's app with uvicorn under limits no client can stretch (slowloris).

uvicorn bounds idle keep-alive connections but not a client that sends its request headers a
byte at a time: 1,100 such connections held a miner's every file descriptor. Here every
request's headers must arrive within ``header_timeout`` of the connection opening (or of the
previous response on a kept-alive connection), or the connection is closed; at most
``max_connections`` are served at once (uvicorn answers 503 beyond); and the process may open
as many files as its hard limit allows. Body read timeouts are the apps' (they read bodies).
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 512


class _HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers."""

    header_timeout = DEFAULT_HEADER_TIMEOUT_S

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

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
        """Keyword arguments for uvicorn.run / uvicorn.Config."""
        protocol = type("HeaderDeadline", (_HeaderDeadline,),
                        {"header_timeout": self.header_timeout_s})
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
