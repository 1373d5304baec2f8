"""A miner that lies, for tests: the real miner (``neurons/miner.py``, same flags) with one hostile
behaviour wrapped around its app, chosen by the environment variable SN19_HOSTILE:

- ``inflate-units``: the chat stream's final line claims 10,000,000 prompt tokens, and image
  answers a thousand times the steps they took.
- ``inflate-completion``: the final line claims 1,000 completion tokens more than it sent.
- ``huge-integer``: the final line claims 2**70 prompt tokens.
- ``long-line``: a 1 MiB line before the final one.
- ``huge-capacity``, ``huge-image``: an 800 MB capacity or image answer, streamed without end.
- ``stall``: three lines of tokens, then keep-alive blank lines and nothing more.
- ``byte-by-byte``: the real answer, one byte every 20 ms.
- ``slow``: every answer 25 s late.
- ``garbage``: lines that are not JSON; images that are not JSON.
- ``stake-first``: serves only the validators whose hotkeys SN19_FAVOURITE names (comma-separated:
  the most-staked), and answers every other validator's task request 429, as a miner that
  declares more than it has and gives what it has to the largest stake.
- ``dodger``: the same, answering 403 instead: a refusal of the validator's signature, after
  admitting its signed /capacity call.
- ``equivocate``: answers the validator SN19_FAVOURITE names the declaration its capacity file
  makes (signed once for the period, as an honest miner does) and every other validator half of
  it, signed by the same hotkey for the same period: it tells validators different things.
- ``fewer-steps``: images with the UNet run on every other denoising step only, its last noise
  prediction reused in between (half the work, step 0 real), committing and opening that forged
  trajectory as its own.
- ``png-bomb``: image answers by reference that commit (the sha256 of) a 59-byte PNG whose header
  claims 20000x20000, and send it when the answer is opened.
- ``wrong-size``: image answers by reference whose proofs say 16x16.
- ``swap-png``: honest answers by reference; opened, another PNG of the right size (the image
  inverted) than the one committed.
- ``withhold-png``: honest answers by reference; opened, the latents and no PNG.
- ``wrong-thumbnail``: answers by reference whose thumbnails are the image's, inverted.
- ``ignore-seed``: the right model, but every chat request drawn with a random seed instead of the
  request's, as an API forwarder samples: right logprobs, right distribution, not the protocol
  sampler's tokens for the request.

Everything else is the honest miner: the same engines, signatures and limits.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.declaration import sign  # noqa: E402
from core.protocol import (  # noqa: E402
    PROTOCOL_VERSION,
    TRAJECTORY_PATH,
    CapacityResponse,
    png_digest,
)

MODE = os.environ.get("SN19_HOSTILE", "")
FAVOURITES = frozenset(filter(None, os.environ.get("SN19_FAVOURITE", "").split(",")))
HUGE = 800 * 2**20  # bytes of the oversized answers
KEEPALIVE_FOR_S = 90.0  # a stalled stream stops keeping the connection alive after this
IMAGE_PATHS = ("/text-to-image", "/image-to-image", "/inpaint")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of(width: int, height: int, rows: bytes) -> bytes:
    """A greyscale PNG whose header says ``width`` x ``height``, with ``rows`` compressed."""
    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", head)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


BOMB = png_of(20000, 20000, b"")  # a decompression bomb's header on almost no data
# what each image mode rewrites: the answer by reference, or the opening that sends its PNGs
ANSWER_MODES = ("png-bomb", "wrong-size", "wrong-thumbnail")
OPENING_MODES = ("png-bomb", "swap-png", "withhold-png")


def inverted(png_b64: str) -> str:
    """Another PNG of the same size: the image's colours inverted."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(base64.b64decode(png_b64))) as image:
        out = io.BytesIO()
        ImageOps.invert(image.convert("RGB")).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def endless(send, head: bytes, total: int = HUGE) -> None:
    """A 200 answer of ``total`` bytes, written in 1 MiB blocks as fast as the reader takes them."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    block = b"x" * 2**20
    await send({"type": "http.response.body", "body": head, "more_body": True})
    for _ in range(total // len(block)):
        await send({"type": "http.response.body", "body": block, "more_body": True})
    await send({"type": "http.response.body", "body": b"\"}", "more_body": False})


def rewrite_final(line: bytes) -> bytes:
    """The chat stream's final line with the counts this mode lies about."""
    chunk = json.loads(line)
    if MODE == "inflate-units":
        chunk["prompt_tokens"] = 10_000_000
    elif MODE == "inflate-completion":
        chunk["completion_tokens"] += 1000
    elif MODE == "huge-integer":
        chunk["prompt_tokens"] = 2**70
    return json.dumps(chunk).encode() + b"\n"


class Hostile:
    def __init__(self, app, keypair=None):
        self.app = app
        self.keypair = keypair  # the miner's hotkey, for the modes that sign what they answer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        caller = dict(scope["headers"]).get(b"x-bittensor-hotkey", b"").decode()
        if MODE == "equivocate" and path == "/capacity" and caller not in FAVOURITES:
            return await self.app(scope, receive, self.rewrite_send(send, self.halved))
        if (MODE in ("stake-first", "dodger") and caller not in FAVOURITES
                and path not in ("/health", "/capacity", "/metrics")):
            body = json.dumps({"version": PROTOCOL_VERSION, "error": "busy"}).encode()
            await send({"type": "http.response.start",
                        "status": 429 if MODE == "stake-first" else 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"retry-after", b"1")]})
            return await send({"type": "http.response.body", "body": body})
        if MODE == "huge-capacity" and path == "/capacity":
            return await endless(send, f'{{"version": "{PROTOCOL_VERSION}", "capacities": {{}}, '
                                       f'"hotkey": "'.encode())
        if MODE == "huge-image" and path.endswith("-image"):
            return await endless(send, f'{{"version": "{PROTOCOL_VERSION}", "units": 10, '
                                       f'"images": ["'.encode())
        if MODE == "slow" and path not in ("/health", "/capacity"):
            await asyncio.sleep(25)
        if MODE == "garbage" and path != "/health" and path != "/capacity":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(50):
                await send({"type": "http.response.body", "body": b"not json at all\n",
                            "more_body": True})
            return await send({"type": "http.response.body", "body": b"", "more_body": False})
        if path == "/chat":
            return await self.app(scope, receive, self.chat_send(send))
        if MODE == "inflate-units" and path.endswith("-image"):
            return await self.app(scope, receive, self.rewrite_send(send, self.more_units))
        if MODE in ANSWER_MODES and path in IMAGE_PATHS:
            return await self.app(scope, receive, self.rewrite_send(send, self.lying_proofs))
        if MODE in OPENING_MODES and path == TRAJECTORY_PATH:
            return await self.app(scope, receive, self.rewrite_send(send, self.lying_opening))
        return await self.app(scope, receive, send)

    @staticmethod
    def more_units(body: bytes) -> bytes:
        answer = json.loads(body)
        answer["units"] *= 1000
        return json.dumps(answer).encode()

    @staticmethod
    def lying_proofs(body: bytes) -> bytes:
        """The answer by reference with the proofs this mode lies in."""
        answer = json.loads(body)
        for proof in answer["proofs"]:
            if MODE == "png-bomb":
                proof["sha256"] = png_digest(BOMB)
            elif MODE == "wrong-size":
                proof["width"] = proof["height"] = 16
            elif MODE == "wrong-thumbnail":
                proof["thumbnail"] = inverted(proof["thumbnail"])
        return json.dumps(answer).encode()

    @staticmethod
    def lying_opening(body: bytes) -> bytes:
        """An opening with the PNGs this mode sends instead of the committed ones."""
        opening = json.loads(body)
        if MODE == "png-bomb":
            opening["images"] = [base64.b64encode(BOMB).decode()] * len(opening["images"])
        elif MODE == "swap-png":
            opening["images"] = [inverted(i) for i in opening["images"]]
        elif MODE == "withhold-png":
            opening["images"] = []
        return json.dumps(opening).encode()

    def halved(self, body: bytes) -> bytes:
        """The period's declaration, halved and signed again by the miner's hotkey."""
        signed = CapacityResponse.model_validate_json(body)
        lower = sign(self.keypair, signed.netuid, signed.period,
                     {task: value / 2 for task, value in signed.capacities.items()})
        return CapacityResponse(**lower.model_dump()).model_dump_json().encode()

    @staticmethod
    def rewrite_send(send, rewrite):
        """The answer with its body rewritten by ``rewrite`` when it is a 200 (its length header
        follows)."""
        start = {}

        async def hostile_send(message):
            if message["type"] == "http.response.start":
                start.update(message)  # held until the body's new length is known
                return None
            body = message.get("body", b"")
            if start.get("status") == 200 and body:
                body = rewrite(body)
            headers = [(k, str(len(body)).encode() if k == b"content-length" else v)
                       for k, v in start.get("headers", [])]
            await send({**start, "headers": headers})
            return await send({**message, "body": body})

        return hostile_send

    def chat_send(self, send):
        lines, stalled = 0, False

        async def hostile_send(message):
            nonlocal lines, stalled
            if stalled:
                return None  # the rest of the answer is never sent
            if message["type"] != "http.response.body" or not message.get("body"):
                return await send(message)
            body = message["body"]
            lines += body.count(b"\n")
            if MODE == "byte-by-byte":
                for i in range(len(body)):
                    await send({"type": "http.response.body", "body": body[i:i + 1],
                                "more_body": True})
                    await asyncio.sleep(0.02)
                return await send({**message, "body": b""})
            if MODE == "stall" and lines > 3:
                stalled = True
                for _ in range(int(KEEPALIVE_FOR_S / 0.5)):
                    await send({"type": "http.response.body", "body": b"\n", "more_body": True})
                    await asyncio.sleep(0.5)
                return None
            if b'"done":true' in body:
                if MODE == "long-line":
                    pad = b'{"tokens": [], "pad": "' + b"x" * 2**20 + b'"}\n'
                    await send({"type": "http.response.body", "body": pad, "more_body": True})
                elif MODE in ("inflate-units", "inflate-completion", "huge-integer"):
                    body = rewrite_final(body)
            return await send({**message, "body": body})

        return hostile_send


def ignore_seeds() -> None:
    """The chat engines draw every request with a seed of their own (the request is changed
    before it reaches the engine; all else, the counts included, stays honest)."""
    import random

    from core.backends.transformers_chat import TransformersChat
    from core.backends.vllm_chat import VllmChat

    for engine in (TransformersChat, VllmChat):
        def stream(self, request, _honest=engine.stream):
            return _honest(self, request.model_copy(update={"seed": random.getrandbits(62)}))

        engine.stream = stream  # type: ignore[method-assign]


def every_other_step(answer):
    """``DiffusersImages.answer`` with the UNet run on every other step only (its calls count
    the steps: one batched call a step), the last noise prediction reused in between."""
    from devtools.cheats import every_other_unet_call

    def cheating(self, request):
        with every_other_unet_call(self.pipeline.unet):
            return answer(self, request)

    return cheating


def main() -> int:
    import uvicorn

    sys.path.insert(0, str(ROOT / "neurons"))
    import miner

    keypair = None
    if MODE == "equivocate":
        from core.cli import load_wallet

        keypair = load_wallet(miner.parse_args(sys.argv[1:]))[1]
    if MODE == "ignore-seed":
        ignore_seeds()
    if MODE == "fewer-steps":
        from core.backends.diffusers_images import DiffusersImages

        DiffusersImages.answer = every_other_step(DiffusersImages.answer)
    run = uvicorn.run
    uvicorn.run = lambda app, **kw: run(Hostile(app, keypair), **kw)  # miner.py calls it late
    return miner.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
