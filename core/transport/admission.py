"""Admitting a signed call from a validator into a neuron's app: the miner's synapses and a
validator's window reports take the same path (docs/protocol.md §7).

Headers first (btauth/1 present: 401; a registered validator with a permit and the minimum
stake: 403) before a byte of the body is read; then the body within its deadline (408; 499 for a
client that left), its signature (401), JSON (400) and the protocol's major version (400)."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request
from starlette.requests import ClientDisconnect

from core.errors import Refusal
from core.metagraph import Metagraph, Neuron
from core.protocol import MAJOR, PROTOCOL_VERSION, major_of
from core.transport.auth import Gate
from core.transport.limits import shown


def request_target(scope) -> str:
    """The request target as the client sent it (path undecoded, and the query): what a
    btauth/1 signature covers, so `/cap%61city` is not `/capacity`."""
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return (path + (b"?" + query if query else b"")).decode("latin-1")


async def admit_signed(request: Request, gate: Gate, metagraph: Metagraph | None,
                       body_timeout_s: float, speaks: str = "this neuron"
                       ) -> tuple[Neuron, dict]:
    """The calling validator and its message as JSON, or Refusal. ``speaks`` names who
    answers, for the version error ("this miner")."""
    if metagraph is None:
        raise Refusal(503, "not synced with the chain yet")
    screened = gate.screen(request.headers, metagraph)
    try:
        async with asyncio.timeout(body_timeout_s):
            body = await request.body()
    except TimeoutError:
        raise Refusal(408, f"the body took longer than {body_timeout_s:g} s") from None
    except ClientDisconnect:  # an ordinary event: an answer no one reads, not a traceback
        raise Refusal(499, "the client left before its body arrived") from None
    caller = gate.verify(screened, request.headers, body, request.method,
                         request_target(request.scope))
    try:
        raw = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # RecursionError: JSON nested beyond Python's stack
        raise Refusal(400, "body is not JSON") from None
    if not isinstance(raw, dict):
        raise Refusal(400, "body is not a JSON object")
    # a message without a version is of this one, as the protocol models default it
    version = raw.get("version", PROTOCOL_VERSION)
    if major_of(str(version)) != MAJOR:
        raise Refusal(400, f"protocol version {shown(version)!r} is not supported; {speaks} speaks "
                           f"{PROTOCOL_VERSION} (major {MAJOR})")
    return caller, raw
