"""What the miner costs over its back end, each figure on its own line as
`name: value unit`.

The same tiny CPU engines serve the same requests, one at a time, alternately in-process and
through a real miner process (neurons/miner.py on a local subnet, signed requests from the
validator's aiohttp client on 127.0.0.1), so both see the same machine state. Reports tokens/s and
steps/s both ways with their ratio, the signed round trip of the capacity synapse, and the latency
the miner adds to a one-step image request (p50, p99 over --n): each request's round trip minus
the engine time the miner reports in its Server-Timing header. The plain difference of the direct
and through-miner p50s is printed too; it compares two processes and swings by several ms.

The reference for the added latency, in the same run and alternating with it: the signed loopback
round trip through a bare FastAPI + uvicorn server that verifies btauth/1 and answers a body the
size of the image answer (the transport floor, as ../shared/tools/transport_floor.py measures it,
with the validator's aiohttp client). Each of its requests follows a direct engine run, as each
request to the miner does: right after one, a round trip here took 1.33 ms where back to back it
took 0.89 (the cores wake from the engine's work); both are printed.

    python scripts/bench_miner.py [--n 200] [--threads 1]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/

CONFIG = (
    "tasks:\n  chat-llama-3: {capacity: 10000000}\n  proteus-text-to-image: {capacity: 10000000}\n"
)


FLOOR_SEED = "//BenchFloor"


def serve_floor(port: int) -> None:
    """The transport floor: verify the signature, answer ``size`` bytes of JSON, nothing else."""
    import json

    import uvicorn
    from bittensor import http_auth
    from bittensor.sp_core import Keypair
    from fastapi import FastAPI
    from fastapi.responses import Response

    me = Keypair.create_from_uri(FLOOR_SEED).ss58_address
    nonces = http_auth.InMemoryNonceStore()
    app = FastAPI()

    async def floor(request):  # a Starlette route: the request as it comes, no validation
        body = await request.body()
        try:
            http_auth.verify(request.headers, body, method="POST", path="/floor",
                             self_hotkey_ss58=me, nonce_store=nonces)
        except http_auth.AuthError as e:
            return Response(str(e), status_code=401)
        size = json.loads(body)["size"]
        return Response(b'{"images":["' + b"A" * size + b'"]}', media_type="application/json")

    app.router.add_route("/floor", floor, methods=["POST"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(len(xs) * q), len(xs) - 1)]


def requests():
    from core.protocol import ChatRequest, TextToImageRequest

    chat = [ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": f"story {i}"}],
                        max_tokens=236, temperature=0.0, seed=i) for i in range(16)]
    images = [TextToImageRequest(task="proteus-text-to-image", prompt=f"a cat {i}", steps=10,
                                 height=64, width=64, seed=i) for i in range(6)]
    tiny = [TextToImageRequest(task="proteus-text-to-image", prompt="x", steps=1, height=64,
                               width=64, seed=i) for i in range(4)]
    return chat, images, tiny


async def _drain(stream) -> int:
    return sum([len(batch) async for batch in stream])


async def measure(n: int, threads: int) -> dict[str, float]:
    """Direct and through-the-miner requests alternate, so both see the same machine state."""
    import multiprocessing as mp

    from bittensor.sp_core import Keypair
    from pydantic import BaseModel

    from core.backends import load_engine
    from core.localchain import LocalSubnet
    from core.protocol import (
        CAPACITY_PATH,
        MAX_CAPACITY_BYTES,
        MAX_CHAT_LINE_BYTES,
        CapacityRequest,
        ChatChunk,
        ImageResponse,
    )
    from core.transport.client import SignedClient
    from devtools.localproc import free_port, make_wallet, neuron, wait_healthy

    chat_engine = load_engine("chat-llama-3")
    image_engine = load_engine("proteus-text-to-image")
    tmp = Path(tempfile.mkdtemp(prefix="bench-miner-"))
    chain = LocalSubnet.create(tmp / "chain", age_blocks=10_000)
    miner = make_wallet(tmp / "wallets", "miner")
    chain.register(miner.hotkey.ss58_address, "c", registered_at=0)
    validator = Keypair.create_from_uri("//BenchValidator")
    chain.register(validator.ss58_address, "c", stake=1000, validator_permit=True, registered_at=0)
    (tmp / "miner.yml").write_text(CONFIG)
    port, floor_port = free_port(), free_port()
    floor_proc = mp.get_context("spawn").Process(target=serve_floor, args=(floor_port,),
                                                 daemon=True)
    floor_proc.start()
    proc = neuron("miner", ["--network", f"local:{chain.folder}", "--wallet-path",
                            str(tmp / "wallets"), "--wallet-name", "miner", "--config",
                            str(tmp / "miner.yml"), "--host", "127.0.0.1", "--port", str(port),
                            "--min-stake", "0", "--torch-threads", str(threads),
                            "--log-level", "WARNING", "--period-blocks", "100000",
                            "--state-dir", str(tmp / "state")],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = SignedClient(validator)
    me, url = miner.hotkey.ss58_address, f"http://127.0.0.1:{port}"

    async def chat_direct(r) -> int:
        return len(chat_engine.prompt_ids(r)) + await _drain(chat_engine.stream(r))

    async def chat_miner(r) -> int:
        async for _, line in client.stream(url, "/chat", me, r, 600, MAX_CHAT_LINE_BYTES):
            chunk = ChatChunk.model_validate_json(line)
            if chunk.done:
                return chunk.units
        raise RuntimeError("chat stream ended without its final line")

    async def image_direct(r) -> None:
        await asyncio.to_thread(image_engine.generate, r)

    async def image_miner(r) -> float:
        """Seconds the engine took inside the miner, from its Server-Timing header."""
        reply = await client.post(url, "/text-to-image", me, r, 600,
                                   ImageResponse.max_bytes(r))
        assert reply.status == 200, reply.body[:200]
        return float(reply.headers["Server-Timing"].split("dur=")[1]) / 1e3

    class Pad(BaseModel):
        size: int

    floor_key = Keypair.create_from_uri(FLOOR_SEED).ss58_address
    answer_size = [0]

    async def floor(_) -> None:
        reply = await client.post(f"http://127.0.0.1:{floor_port}", "/floor", floor_key,
                                   Pad(size=answer_size[0]), 10, 2**24)
        assert reply.status == 200, reply.body[:200]

    async def timed(fn, r) -> tuple[float, object]:
        t = time.perf_counter()
        out = await fn(r)
        return time.perf_counter() - t, out

    try:
        wait_healthy(port, proc, time.monotonic() + 120)
        chat, images, tiny = requests()
        await chat_direct(chat[0]), await chat_miner(chat[0]), await image_miner(tiny[0])
        reply = await client.post(url, "/text-to-image", me, tiny[0], 600,
                                  ImageResponse.max_bytes(tiny[0]))
        answer_size[0] = len(reply.body)
        for _ in range(20):  # the floor's server warmed up as the miner was
            await floor(None)
        out = {"chat_d": [0.0, 0], "chat_m": [0.0, 0], "img_d": 0.0, "img_m": 0.0}
        for r in chat:
            for key, fn in (("chat_d", chat_direct), ("chat_m", chat_miner)):
                seconds, units = await timed(fn, r)
                out[key][0] += seconds
                out[key][1] += units
        for r in images:
            out["img_d"] += (await timed(image_direct, r))[0]
            out["img_m"] += (await timed(image_miner, r))[0]
        steps = sum(r.units for r in images)
        lat_d, lat_m, added, cap, rtt, warm = [], [], [], [], [], []
        for i in range(n):
            lat_d.append((await timed(image_direct, tiny[i % len(tiny)]))[0])
            seconds, engine = await timed(image_miner, tiny[i % len(tiny)])
            lat_m.append(seconds)
            added.append(seconds - engine)
            t = time.perf_counter()
            reply = await client.post(url, CAPACITY_PATH, me, CapacityRequest(), 10,
                                       MAX_CAPACITY_BYTES)
            cap.append(time.perf_counter() - t)
            assert reply.status == 200
            warm.append((await timed(floor, None))[0])  # back to back
            lat_d.append((await timed(image_direct, tiny[(i + 1) % len(tiny)]))[0])
            rtt.append((await timed(floor, None))[0])  # after an engine run, as the miner's
    finally:
        await client.close()
        proc.terminate()
        proc.wait()
        floor_proc.terminate()
    return {
        "tokens_d": out["chat_d"][1] / out["chat_d"][0],
        "tokens_m": out["chat_m"][1] / out["chat_m"][0],
        "steps_d": steps / out["img_d"],
        "steps_m": steps / out["img_m"],
        "p50_d": pct(lat_d, 0.5),
        "p99_d": pct(lat_d, 0.99),
        "p50_m": pct(lat_m, 0.5),
        "p99_m": pct(lat_m, 0.99),
        "cap50": pct(cap, 0.5),
        "cap99": pct(cap, 0.99),
        "added50": pct(added, 0.5),
        "added99": pct(added, 0.99),
        "rtt50": pct(rtt, 0.5),
        "rtt99": pct(rtt, 0.99),
        "warm50": pct(warm, 0.5),
    }


def main() -> None:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="one-step image requests for latency")
    p.add_argument("--threads", type=int, default=1, help="torch threads, both ways")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    m = asyncio.run(measure(a.n, a.threads))
    print(f"direct_chat_throughput: {m['tokens_d']:.0f} tokens/s")
    print(f"miner_chat_throughput: {m['tokens_m']:.0f} tokens/s")
    print(f"chat_throughput_ratio: {m['tokens_m'] / m['tokens_d']:.3f} ratio")
    print(f"direct_image_throughput: {m['steps_d']:.1f} steps/s")
    print(f"miner_image_throughput: {m['steps_m']:.1f} steps/s")
    print(f"image_throughput_ratio: {m['steps_m'] / m['steps_d']:.3f} ratio")
    print(f"capacity_signed_rtt_p50: {m['cap50'] * 1e3:.2f} ms")
    print(f"capacity_signed_rtt_p99: {m['cap99'] * 1e3:.2f} ms")
    print(f"image_1step_direct_p50: {m['p50_d'] * 1e3:.2f} ms")
    print(f"image_1step_miner_p50: {m['p50_m'] * 1e3:.2f} ms")
    print(f"image_1step_difference_p50: {(m['p50_m'] - m['p50_d']) * 1e3:.2f} ms")
    print(f"miner_added_p50: {m['added50'] * 1e3:.2f} ms")
    print(f"miner_added_p99: {m['added99'] * 1e3:.2f} ms")
    print(f"signed_loopback_rtt_p50: {m['rtt50'] * 1e3:.2f} ms")
    print(f"signed_loopback_rtt_p99: {m['rtt99'] * 1e3:.2f} ms")
    print(f"signed_loopback_rtt_back_to_back_p50: {m['warm50'] * 1e3:.2f} ms")
    print(f"miner_added_over_rtt_p50: {m['added50'] / m['rtt50']:.2f} ratio")


if __name__ == "__main__":
    main()
