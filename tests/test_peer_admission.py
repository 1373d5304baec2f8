"""The peer endpoint, served by uvicorn on 127.0.0.1 under the validator's server limits, while one
address (127.0.0.2) holds connections that never finish their headers, more than the connection
bound, and requests that claim a registered validator's hotkey but hold their bodies back, or
while many addresses each hold back as many bodies as one address may send at once, together
the whole bound; reconnecting whenever cut off: a validator from another address is still
answered, and none of it logs a traceback."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from bittensor import http_auth
from bittensor.sp_core import Keypair

from core.metagraph import Metagraph, Neuron
from core.transport.server import ServerLimits, raise_open_files_limit
from core.validator.metrics import ValidatorMetrics
from core.validator.peer import BODIES_PER_ADDRESS, PeerServices, build_peer_app
from core.window_report import REPORT_PATH, ReportRequest
from devtools.localproc import free_port
from tests.servers import serving_here

MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 60.0  # longer than the test: only eviction frees a silent connection
SILENT = 2 * MAX_CONNECTIONS  # connections from the attacker that never finish their headers
WITHHELD = 4 * BODIES_PER_ADDRESS  # requests from the attacker that hold their bodies back
ASKS = 10
ATTACKER = "127.0.0.2"  # another address on loopback: the server sees two hosts
MANY = [f"127.0.1.{i}" for i in range(1, MAX_CONNECTIONS // BODIES_PER_ADDRESS + 1)]


class Reports:
    async def answer(self, block: int, hotkey: str):
        return None  # no report held: a proper request is answered 404


def services(me: Keypair, asker: Keypair) -> PeerServices:
    """What the peer endpoint uses of a validator: a metagraph of it and the asker."""
    graph = Metagraph(1, (Neuron(0, me.ss58_address, "c", 100.0, True, None, 0),
                          Neuron(1, asker.ss58_address, "c", 100.0, True, None, 0)))
    return PeerServices(me.ss58_address, lambda: graph, ValidatorMetrics(), Reports(),
                        None)  # type: ignore[arg-type]  # no feedback asked here


class Attacker:
    """Connections from ATTACKER, each reopened as soon as the server closes it, until stopped:
    ``silent`` send half a request line and headers, ``withheld`` send a validator's claimed
    btauth/1 headers and 5 bytes of a 60-byte body."""

    def __init__(self, port: int, claimed: dict[str, str]):
        self.port, self.stop = port, asyncio.Event()
        head = "".join(f"{k}: {v}\r\n" for k, v in claimed.items())
        self.withheld = (f"POST {REPORT_PATH} HTTP/1.1\r\nHost: v\r\nContent-Length: 60\r\n"
                         f"Content-Type: application/json\r\n{head}\r\n{{\"blo").encode()
        self.silent = f"POST {REPORT_PATH} HTTP/1.1\r\nHost: v\r\nContent-Le".encode()
        self.opened = 0

    async def hold(self, request: bytes, ready: asyncio.Event | None = None,
                   address: str = ATTACKER) -> None:
        while not self.stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                           local_addr=(address, 0))
            self.opened += 1
            writer.write(request)
            await writer.drain()
            if ready is not None:
                ready.set()
                ready = None
            stopped = asyncio.ensure_future(self.stop.wait())
            closed = asyncio.ensure_future(reader.read())  # the server's answer, or its close
            await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            closed.cancel()
            writer.close()


@pytest.mark.parametrize("attack", ["one address", "many addresses"])
def test_slow_and_withheld_requests_cannot_keep_a_validator_out(attack, caplog):
    raise_open_files_limit()  # both ends of every connection are in this process
    me, asker = Keypair.create_from_uri("//validator"), Keypair.create_from_uri("//asker")
    app = build_peer_app(services(me, asker))
    options = ServerLimits(HEADER_TIMEOUT_S, MAX_CONNECTIONS).uvicorn_options()
    body = ReportRequest(block=600).model_dump_json().encode()

    def signed() -> dict[str, str]:
        headers = http_auth.sign(asker, method="POST", path=REPORT_PATH, body=body,
                                 receiver_ss58=me.ss58_address)
        return {**headers, "Content-Type": "application/json"}

    async def main():
        port = free_port()
        async with serving_here(app, port, log_config=None, **options) as url:
            attacker = Attacker(port, signed())
            if attack == "one address":
                plan = [(attacker.silent, ATTACKER)] * SILENT + [
                    (attacker.withheld, ATTACKER)] * WITHHELD
            else:  # each within its per-address bodies, all of them the connection bound
                plan = [(attacker.withheld, a) for a in MANY for _ in range(BODIES_PER_ADDRESS)]
            ready = [asyncio.Event() for _ in plan]
            holds = [asyncio.create_task(attacker.hold(request, e, address))
                     for (request, address), e in zip(plan, ready)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 60)
            answers = []
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                    force_close=True)) as http:  # a new connection each time, as after a cut
                for _ in range(ASKS):
                    began = time.monotonic()
                    async with http.post(url + REPORT_PATH, data=body, headers=signed()) as r:
                        answers.append((r.status, time.monotonic() - began))
            attacker.stop.set()
            await asyncio.wait_for(asyncio.gather(*holds), 60)
        return answers, attacker.opened

    with caplog.at_level(logging.DEBUG):
        answers, opened = asyncio.run(main())
    assert [status for status, _ in answers] == [404] * ASKS  # answered, not 503 or 429
    # each long before the silent connections' header deadline (under a 2-core machine's load
    # of 12, with the attacker's reconnections in this same process: 9 s at most)
    assert max(took for _, took in answers) < HEADER_TIMEOUT_S / 2
    assert opened > MAX_CONNECTIONS  # the server cut the attacker off, and it came back
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    print(f"{ASKS} asks answered 404, slowest {max(t for _, t in answers):.2f} s, while the "
          f"attacker opened {opened} connections")
