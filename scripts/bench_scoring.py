"""Benchmarks of the validator's heart, each figure on its own line as `name: value unit`.

- weights: effective capacity and the weight vector for 256 miners x all 9 tasks with 16 periods
  of history each (median of --repeats runs), and one period's close (advance every contender).
- dispatch: synthetic requests scheduled and sent per second by one validator process to 256
  simulated miners on 127.0.0.1 (signed aiohttp requests, answers parsed, every record committed
  to SQLite), with --concurrency requests in flight.

    python scripts/bench_scoring.py [--requests 6000] [--concurrency 64]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/

N_MINERS = 256


def weights_figures(repeats: int) -> None:
    from core.scoring import (
        ContenderState,
        PeriodOutcome,
        Tally,
        WindowOutcome,
        advance,
        effective,
        weights,
    )
    from core.tasks import TASK_IDS

    rng = random.Random(0)

    def outcome(window: bool) -> PeriodOutcome:
        declared = rng.uniform(100, 10_000)
        asked = declared / 60
        slices = tuple(Tally(asked, asked * rng.uniform(0.7, 1.0), 0.0, 0.0, 4) for _ in range(5))
        other = Tally(declared / 100, declared / 100, requests=1)
        return PeriodOutcome(declared, (WindowOutcome(0, slices),) if window else (), other,
                             rng.uniform(0.5, 1.0), 3)

    keys = [(uid, task) for uid in range(N_MINERS) for task in TASK_IDS]
    states = {}
    for key in keys:
        s = ContenderState()
        for period in range(16):
            s = advance(s, outcome(period % 3 != 0), 0)
        states[key] = s
    times, closes = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        vector = weights({k: effective(s) for k, s in states.items()}, N_MINERS)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        for key in keys:
            advance(states[key], outcome(True), 0)
        closes.append(time.perf_counter() - t)
    assert abs(vector.sum() - 1) < 1e-9
    print(f"contenders: {len(keys)} count")
    print(f"weights_256_miners_9_tasks_16_periods: {statistics.median(times) * 1e3:.2f} ms")
    print(f"period_close_advance_all_contenders: {statistics.median(closes) * 1e3:.2f} ms")


def _proof() -> dict:
    """An image answer's proof (docs/protocol.md §8: answers are by reference) of a black PNG of
    the size asked (--image-size 64)."""
    from PIL import Image

    from core.backends.diffusers_images import png, proof

    image = Image.new("RGB", (64, 64))
    return proof(image, png(image)).model_dump()


def serve_simulated_miners(ports: list[int]) -> None:
    """One process answering as many miners (one port each), instantly and validly."""
    from aiohttp import web

    proof = _proof()

    async def image(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        return web.json_response({"version": body["version"],
                                  "proofs": [proof] * body.get("num_images", 1),
                                  "units": body["steps"] * body.get("num_images", 1)})

    async def main():
        app = web.Application(client_max_size=2**24)
        app.router.add_post("/{kind}", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


async def aiohttp_ceiling(keypair, metagraph, requests: int, concurrency: int) -> float:
    """The reference in the same run: bare aiohttp, the same signed inpaint requests to the same
    simulated miners with as many in flight, nothing but sending and reading (no plan, budget,
    counting, checks or records)."""
    import aiohttp
    from bittensor import http_auth

    from core.protocol import InpaintRequest
    from core.request_shapes import noise_and_mask

    image, mask = noise_and_mask(64, 0)
    body = InpaintRequest(task="inpaint", prompt="p", steps=20, height=64, width=64,
                          init_image=image, mask_image=mask).model_dump_json().encode()
    neurons = [n for n in metagraph.neurons if n.endpoint]
    left = list(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker():
            while left:
                n = neurons[left.pop() % len(neurons)]
                headers = http_auth.sign(keypair, method="POST", path="/inpaint", body=body,
                                         receiver_ss58=n.hotkey)
                async with s.post(n.endpoint + "/inpaint", data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - t)


async def dispatch_figures(requests: int, concurrency: int, processes: int) -> None:
    import bittensor as bt
    from bittensor.sp_core import Keypair

    from core import plan
    from core.budget import Contender
    from core.localchain import LocalSubnet
    from core.storage import open_store
    from core.validator.loop import Settings, Validator
    from devtools.localproc import free_ports, make_wallet

    tmp = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    chain = LocalSubnet.create(tmp / "chain", age_blocks=10_000)
    wallet: bt.Wallet = make_wallet(tmp / "wallets", "validator")
    chain.register(wallet.hotkey.ss58_address, "c", stake=1, validator_permit=True, registered_at=0)
    ports = free_ports(N_MINERS)
    for i, port in enumerate(ports):
        hotkey = Keypair.create_from_uri(f"//miner{i}").ss58_address
        chain.register(hotkey, "c", registered_at=0, endpoint=f"http://127.0.0.1:{port}")
    ctx = mp.get_context("spawn")
    servers = [ctx.Process(target=serve_simulated_miners, args=(ports[i::processes],), daemon=True)
               for i in range(processes)]
    for s in servers:
        s.start()
    await asyncio.sleep(3.0)
    store = open_store(str(tmp / "v.sqlite3"))
    validator = Validator(wallet, chain.chain(), store, Settings(
        max_concurrency=concurrency, max_per_miner=concurrency, image_size=64, check="off",
        tokenizers="tiny"))
    metagraph = await validator.chain.metagraph()
    per_miner = requests // N_MINERS
    units = 20 * per_miner
    contenders = [Contender(n.uid, n.hotkey, "inpaint", units, units, 0)
                  for n in metagraph.neurons if n.endpoint]
    ceiling = 0.0
    try:
        for period in (0, 1):  # a warm-up, then the measured run
            store.begin_period(period, 0, "0x", 1.0, 0.0, contenders)
            validator.book.open(period, contenders, metagraph, {})
            # every request at once (a window that opened with the whole budget in it), the
            # miners in turn as the ceiling sends them and as a window's plan spreads them: all
            # of one miner's first would need 64 connections to each miner in turn
            sends = [plan.Send(0.0, c, 20, None) for _ in range(per_miner) for c in contenders]
            validator.sender.begin()
            t = time.perf_counter()
            await validator.sender.schedule(metagraph, sends)
            await validator.sender.sent()
            elapsed = time.perf_counter() - t
        records = store.records(1)
        ok = sum(r.outcome.value == "ok" for r in records)
        ceiling = await aiohttp_ceiling(wallet.hotkey, metagraph, len(records), concurrency)
    finally:
        await validator.client.close()
        for s in servers:
            s.terminate()
    if ok != len(records):
        raise SystemExit(f"only {ok} of {len(records)} simulated requests succeeded")
    print(f"dispatch_miners: {N_MINERS} count")
    print(f"dispatch_requests: {len(records)} count")
    print(f"dispatch_ok: {ok} count")
    print(f"dispatch_concurrency: {concurrency} count")
    print(f"dispatch_rate: {len(records) / elapsed:.0f} req/s")
    print(f"aiohttp_ceiling_rate: {ceiling:.0f} req/s")
    print(f"dispatch_over_ceiling: {len(records) / elapsed / ceiling:.3f} ratio")


def main() -> None:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20, help="runs of the weights computation")
    p.add_argument("--requests", type=int, default=6144, help="synthetic requests to dispatch")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument("--miner-processes", type=int, default=1,
                   help="processes serving the 256 simulated miners")
    p.add_argument("--quick", action="store_true",
                   help="2 runs of the weights and 512 requests: that it runs (tests)")
    p.add_argument("--profile", metavar="FILE",
                   help="write a cProfile (CPU time) of the dispatch to FILE")
    p.add_argument("--profile-wall", action="store_true",
                   help="profile wall time (the event loop blocked on the database shows)")
    a = p.parse_args()
    weights_figures(2 if a.quick else a.repeats)
    from devtools.profiling import run_profiled

    dispatch = dispatch_figures(512 if a.quick else a.requests, a.concurrency, a.miner_processes)
    from core.cli import run_loop  # uvloop, as neurons/validator.py runs (the ceiling too)

    run_profiled(lambda: run_loop(dispatch), a.profile, wall=a.profile_wall)


if __name__ == "__main__":
    main()
