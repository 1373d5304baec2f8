"""A validator's peer endpoint that lies about its window reports, for tests: one process, one
hostile behaviour per path prefix (``http://127.0.0.1:PORT/<mode>`` is the endpoint a test
announces), every one signed with real keys from the wallets folder given:

    python tests/hostile_validator.py PORT WALLETS

- ``honest``: the report asked for, signed by ``validator`` for the caller.
- ``forged``: the same report, signed by ``other`` (a key that is not the validator asked).
- ``unsigned``: the report without btauth/1 headers.
- ``replayed``: the first honest answer it made, served again byte for byte each time.
- ``stale``: an honest answer for another window (block - 1), signed as such.
- ``mismatch``: a report naming another validator, signed by ``validator``.
- ``invalid``: good greater than asked.
- ``huge``: asked 1e300.
- ``oversized``: 64 MiB of JSON, streamed.
- ``outsider``: an honest report signed by ``outsider``, a hotkey without a permit.
- ``slow``: no answer for 60 s.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bittensor as bt  # noqa: E402
import uvicorn  # noqa: E402
from bittensor import http_auth  # noqa: E402

from core.protocol import PROTOCOL_VERSION  # noqa: E402
from core.window_report import SIGNED_METHOD, signed_path  # noqa: E402

SLICE = {"asked": 100.0, "good": 80.0, "refused": 20.0, "failed": 0.0, "requests": 2}


def report(validator: str, block: int, **slice_) -> bytes:
    row = {"hotkey": "victim", "task": "chat-llama-3", "slices": [{**SLICE, **slice_}] * 5}
    return json.dumps({"version": PROTOCOL_VERSION, "netuid": 19, "validator": validator,
                       "block": block, "rows": [row]}).encode()


class App:
    def __init__(self, wallets: str):
        self.keys = {name: bt.Wallet(name, "default", wallets).hotkey
                     for name in ("validator", "other", "outsider")}
        self.first: tuple[bytes, dict] | None = None

    def signed(self, signer: str, body: bytes, block: int, caller: str) -> tuple[bytes, dict]:
        headers = http_auth.sign(self.keys[signer], method=SIGNED_METHOD, path=signed_path(block),
                                 body=body, receiver_ss58=caller)
        return body, headers

    def answer(self, mode: str, block: int, caller: str) -> tuple[bytes, dict]:
        me = self.keys["validator"].ss58_address
        if mode == "forged":
            return self.signed("other", report(me, block), block, caller)
        if mode == "unsigned":
            return report(me, block), {}
        if mode == "replayed":
            self.first = self.first or self.signed("validator", report(me, block), block, caller)
            return self.first
        if mode == "stale":
            return self.signed("validator", report(me, block - 1), block - 1, caller)
        if mode == "mismatch":
            return self.signed("validator", report(self.keys["other"].ss58_address, block),
                               block, caller)
        if mode == "invalid":
            return self.signed("validator", report(me, block, good=500.0), block, caller)
        if mode == "huge":
            return self.signed("validator", report(me, block, asked=1e300, good=1e300,
                                                   refused=0.0), block, caller)
        if mode == "outsider":
            return self.signed("outsider", report(self.keys["outsider"].ss58_address, block),
                               block, caller)
        return self.signed("validator", report(me, block), block, caller)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        mode = scope["path"].strip("/").split("/")[0]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        caller = headers.get(http_auth.HEADER_HOTKEY.lower(), "")
        if mode == "slow":
            await asyncio.sleep(60)
        if mode == "oversized":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            block = b" " * 2**20
            for _ in range(64):
                await send({"type": "http.response.body", "body": block, "more_body": True})
            return await send({"type": "http.response.body", "body": b"{}"})
        answer, signed = self.answer(mode, json.loads(body or b"{}").get("block", 0), caller)
        raw = [(k.encode(), v.encode()) for k, v in signed.items()]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), *raw]})
        await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    uvicorn.run(App(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
