"""Can one validator process test a whole subnet in an audit window? Each figure a line
`name: value unit`.

Simulated miners (``--miners``, one port and hotkey each, served by ``--miner-processes``
processes on 127.0.0.1) verify every request's btauth/1 signature as a miner does and stream
prepared chat tokens at production speed (the task's expected time for the request, in lines
every ``--tick`` seconds) with the prompt counted as the validator counts it. One validator, in
this process, runs the real window plan (``core.plan.window_plan``: every contender's full
declared rate) at stake share 1.0 for ``--seconds`` with the real sender (signed aiohttp
requests, answers read within their bounds, units counted, every request recorded in SQLite),
on uvloop as ``neurons/validator.py`` runs it.

Every miner declares the cap of both chat tasks (``core.tasks``: one 8-GPU node each), and the
validator's load is set by its stake share (``--shares``): at share ``s`` it sends
``s x miners x Σ caps / 3,600 s`` tokens a second in a window (256 miners: s x 8.74 M tokens/s),
in the plan's requests. For each share:
tokens/s, requests/s and MB/s received, the share of requests that reached their miner within
``--late`` seconds of their planned time and the share answered ok, CPU seconds per million
tokens of the validator (this process) and of the simulated miners (their processes, measured
apart: the harness's cost is not the validator's), against its floor in the same run (the same
plan's requests signed and their answers read to their end on one aiohttp session, nothing else
done: the transport's own cost), the validator's CPU share of the wall time and its peak RSS.
A share is sustained when 99% of its requests are on time and 99% ok. Last,
the largest sustained share, that share per validator core used, and the projection: cores a
validator of share 0.05 / 0.25 / 1.0 needs for a full subnet of 256 miners at the caps, from
the CPU per million tokens of the largest sustained share. On this machine the miners share its
2 cores with the validator, which bounds the shares it can sustain; the CPU per million tokens
is the figure that carries to a validator's own machine.

    python scripts/bench_window.py [--shares 0.0025,0.005,0.01,0.02] [--seconds 20]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/

from core.chain_time import BLOCK_SECONDS, PERIOD_BLOCKS, PERIOD_SECONDS

CHAT_TASKS = ("chat-llama-3", "chat-mixtral")
SUBNET_MINERS = 256  # the projection's subnet
PROJECTED_SHARES = (0.05, 0.25, 1.0)


def serve_simulated_miners(ports: list[int], first_index: int, tick: float) -> None:
    """One process answering as ``len(ports)`` miners: each request's signature verified for the
    port's hotkey (``//miner{i}``), then its tokens streamed at the task's production speed."""

    from aiohttp import web
    from bittensor import http_auth
    from bittensor.sp_core import Keypair

    from core.backends import tiny
    from core.backends.prompt import prompt_ids
    from core.protocol import ChatChunk, ChatRequest, ChatToken
    from core.tasks import TASKS

    tokenizer = tiny.chat_tokenizer()
    hotkeys = {port: Keypair.create_from_uri(f"//miner{first_index + i}").ss58_address
               for i, port in enumerate(ports)}
    nonces = http_auth.InMemoryNonceStore()
    arrivals: list[float] = []
    written = [0]  # bytes of answers sent: what the validator received

    async def chat(request: web.Request) -> web.StreamResponse:
        arrivals.append(time.time())
        body = await request.read()
        try:
            http_auth.verify(request.headers, body, method="POST", path=request.path,
                             self_hotkey_ss58=hotkeys[request.transport.get_extra_info(
                                 "sockname")[1]], nonce_store=nonces)
        except http_auth.AuthError as e:
            return web.json_response({"error": str(e)}, status=401)
        message = ChatRequest.model_validate_json(body)
        prompt = len(prompt_ids(tokenizer, message.messages))
        task = TASKS[message.task]
        n = message.max_tokens
        per_token = (task.expected_seconds(prompt + n) - task.overhead_s) / n
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await asyncio.sleep(task.overhead_s)
        sent, began = 0, time.monotonic()
        while sent < n:
            await asyncio.sleep(tick)
            due = min(n, int((time.monotonic() - began) / per_token) + 1)
            # the tiny tokenizer's "a": the validator checks a line's text against its ids
            tokens = [ChatToken(token_id=69, text="a", logprob=-1.0) for _ in range(due - sent)]
            sent = due
            line = ChatChunk.of(tokens).model_dump_json().encode() + b"\n"
            written[0] += len(line)
            await response.write(line)
        final = ChatChunk(done=True, prompt_tokens=prompt, completion_tokens=n)
        line = final.model_dump_json().encode() + b"\n"
        written[0] += len(line)
        await response.write(line)
        await response.write_eof()
        return response

    async def arrived(_: web.Request) -> web.Response:
        """Arrival times since the last call, this process's CPU seconds and bytes sent so far."""
        times = list(arrivals)
        arrivals.clear()
        return web.json_response({"times": times, "cpu": cpu_seconds(), "bytes": written[0]})

    async def main():
        app = web.Application(client_max_size=2**20)
        app.router.add_post("/chat", chat)
        app.router.add_get("/arrivals", arrived)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    asyncio.run(main())


async def arrivals(ports: list[int]) -> tuple[list[float], float, int]:
    """Requests' arrival times at the miner processes answering ``ports`` (one port each) since
    the last call, and those processes' CPU seconds and answer bytes so far."""
    import aiohttp

    async with aiohttp.ClientSession() as s:
        out: list[float] = []
        cpu, sent = 0.0, 0
        for port in ports:
            async with s.get(f"http://127.0.0.1:{port}/arrivals") as r:
                answer = json.loads(await r.read())
                out.extend(answer["times"])
                cpu, sent = cpu + answer["cpu"], sent + answer["bytes"]
        return out, cpu, sent


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(a) -> None:
    import bittensor as bt
    from bittensor.sp_core import Keypair

    from core import plan
    from core.budget import Contender
    from core.localchain import LocalSubnet
    from core.storage import open_store
    from core.tasks import TASKS
    from core.validator.loop import Settings, Validator
    from devtools.localproc import free_ports, make_wallet

    tmp = Path(tempfile.mkdtemp(prefix="bench-window-"))
    chain = LocalSubnet.create(tmp / "chain", age_blocks=10_000)
    wallet: bt.Wallet = make_wallet(tmp / "wallets", "validator")
    chain.register(wallet.hotkey.ss58_address, "c", stake=1, validator_permit=True, registered_at=0)
    ports = free_ports(a.miners)
    for i, port in enumerate(ports):
        hotkey = Keypair.create_from_uri(f"//miner{i}").ss58_address
        chain.register(hotkey, "c", registered_at=0, endpoint=f"http://127.0.0.1:{port}")
    ctx = mp.get_context("spawn")
    k = a.miner_processes
    groups = [(ports[i * len(ports) // k:(i + 1) * len(ports) // k], i * len(ports) // k)
              for i in range(k)]
    servers = [ctx.Process(target=serve_simulated_miners, args=(g, first, a.tick), daemon=True)
               for g, first in groups]
    for s in servers:
        s.start()
    await asyncio.sleep(5.0 + a.miners / 100)  # imports, tokenizer, sockets
    store = open_store(str(tmp / "v.sqlite3"))
    validator = Validator(wallet, chain.chain(), store, Settings(
        max_concurrency=a.max_concurrency, max_per_miner=a.max_per_miner, check="off",
        tokenizers="tiny", period_blocks=PERIOD_BLOCKS))
    metagraph = await validator.chain.metagraph()
    window = plan.window_blocks(PERIOD_BLOCKS)
    caps = {task: float(TASKS[task].max_capacity) for task in CHAT_TASKS}
    print(f"miners: {a.miners} count")
    print(f"window_seconds: {a.seconds:.0f} s")
    miner_ports = [g[0] for g, _ in groups]
    _, miners_cpu, miners_bytes = await arrivals(miner_ports)
    sustained, sustained_cpu, cores_used = 0.0, None, None
    try:
        for period, share in enumerate(a.shares):
            contenders = [Contender(n.uid, n.hotkey, task, cap, cap * share, 0)
                          for n in metagraph.neurons if n.endpoint for task, cap in caps.items()]
            store.begin_period(period, 0, "0x", share, 0.0, contenders)
            validator.book.open(period, contenders, metagraph, {})
            # the window's rate over --seconds rather than its 300 (the share left = seconds/300)
            left = a.seconds / (window * BLOCK_SECONDS)
            sends = plan.window_plan(contenders, {}, PERIOD_BLOCKS, a.seconds, left=left)
            validator.sender.begin()
            validator.sender.make_room(metagraph, sends, a.seconds)  # as the loop does
            cpu0, t0, start = cpu_seconds(), time.perf_counter(), time.time()
            await validator.sender.schedule(metagraph, sends)
            await validator.sender.sent()
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            records = store.records(period)
            ok = [r for r in records if r.outcome.value == "ok"]
            tokens = sum(r.units for r in ok)
            got, miners_now, bytes_now = await arrivals(miner_ports)
            harness_cpu, miners_cpu = miners_now - miners_cpu, miners_now
            received, miners_bytes = bytes_now - miners_bytes, bytes_now
            got.sort()
            planned = sorted(start + s.at for s in sends)
            late = [max(0.0, t - p) for t, p in zip(got, planned)]
            on_time = sum(x <= a.late for x in late) / max(len(sends), 1)
            ok_share = len(ok) / max(len(sends), 1)
            name = f"share_{share:g}".replace(".", "_")
            print(f"{name}_requests_planned: {len(sends)} count")
            planned_units = sum(s.units for s in sends)
            # rates over the window's length: every request was planned in it, and one sent
            # late shows in the on-time share; the wall time adds the last answers' drain
            print(f"{name}_requests_per_s: {len(records) / a.seconds:.1f} req/s")
            print(f"{name}_tokens_per_s: {tokens / a.seconds:.0f} tokens/s")
            print(f"{name}_received_mb_per_s: {received / a.seconds / 1e6:.2f} MB/s")
            print(f"{name}_tokens_over_planned: {tokens / max(planned_units, 1):.4f} ratio")
            print(f"{name}_wall: {wall:.1f} s")
            print(f"{name}_on_time_share: {on_time:.4f} share")
            print(f"{name}_lateness_p99: {late[int(0.99 * (len(late) - 1))] if late else 0:.3f} s")
            print(f"{name}_ok_share: {ok_share:.4f} share")
            per_million = cpu / max(tokens, 1) * 1e6
            print(f"{name}_validator_cpu_per_million_tokens: {per_million:.2f} s")
            print(f"{name}_miners_cpu_per_million_tokens: "
                  f"{harness_cpu / max(tokens, 1) * 1e6:.2f} s")
            floor_cpu, floor_tokens = await read_floor(wallet.hotkey, metagraph, sends,
                                                       validator.counter)
            floor = floor_cpu / max(floor_tokens, 1) * 1e6
            _, miners_cpu, miners_bytes = await arrivals(miner_ports)  # the floor's are not the
            #                                                            next share's
            print(f"{name}_floor_cpu_per_million_tokens: {floor:.2f} s")
            print(f"{name}_validator_over_floor: {per_million / max(floor, 1e-9):.2f} ratio")
            print(f"{name}_validator_cpu_share: {cpu / wall:.3f} share")
            print(f"{name}_peak_rss: "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB",
                  flush=True)
            if on_time >= 0.99 and ok_share >= 0.99:
                # its cores: the window's tokens/s at what each cost (the drain after the
                # window, in the wall time, is not part of a steady window's load)
                sustained, sustained_cpu, cores_used = share, per_million, cpu / a.seconds
            else:
                break  # a larger share will not do better
    finally:
        await validator.client.close()
        for s in servers:
            s.terminate()
    print(f"largest_sustained_share: {sustained:g} share")
    if sustained_cpu is None or not cores_used:
        return
    print(f"sustained_share_per_validator_core: {sustained / cores_used:.4f} share")
    # a full subnet at the caps: tokens/s a validator of share s receives in a window
    full = SUBNET_MINERS * sum(caps.values()) / PERIOD_SECONDS
    for projected in PROJECTED_SHARES:
        name = f"projection_share_{projected:g}".replace(".", "_")
        print(f"{name}_tokens_per_s: {projected * full:.0f} tokens/s")
        print(f"{name}_validator_cores: {projected * full * sustained_cpu / 1e6:.1f} cores")
        print(f"{name}_requests_in_flight: {in_flight(caps, projected):.0f} count")


async def read_floor(keypair, metagraph, sends, counter) -> tuple[float, int]:
    """The floor: the same plan's requests (built beforehand, untimed) each signed, sent at its
    planned time and its answer read to its end on one aiohttp session, nothing else done (no
    request built, no reservation, no line read, nothing recorded). Its CPU seconds and the
    tokens it asked (each answer is all of them: ``min_tokens`` is ``max_tokens``)."""
    import random

    import aiohttp
    from bittensor import http_auth

    from core.protocol import ChatRequest, task_path
    from core.synthetic import synthetic_request

    rng, planned, tokens = random.Random(0), [], 0
    for s in sends:
        message = synthetic_request(s.contender.task, s.units, rng, 64, counter)
        assert isinstance(message, ChatRequest)  # the window's tasks are chat tasks
        neuron = metagraph.by_hotkey(s.contender.hotkey)
        tokens += counter.prompt_tokens(message) + message.max_tokens
        planned.append((s.at, neuron, task_path(message.task), message.model_dump_json().encode()))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4))

    async def one(neuron, path: str, body: bytes) -> None:
        headers = http_auth.sign(keypair, method="POST", path=path, body=body,
                                 receiver_ss58=neuron.hotkey)
        headers["Content-Type"] = "application/json"
        async with session.post(neuron.endpoint + path, data=body, headers=headers) as r:
            await r.read()

    cpu0, t0, out = cpu_seconds(), time.monotonic(), []
    try:
        for at, neuron, path, body in planned:
            await asyncio.sleep(max(t0 + at - time.monotonic(), 0))
            out.append(asyncio.create_task(one(neuron, path, body)))
        await asyncio.gather(*out)
        return cpu_seconds() - cpu0, tokens
    finally:
        await session.close()


def in_flight(caps: dict[str, float], share: float) -> float:
    """Requests a validator of ``share`` keeps in flight through a window at production speed
    when ``SUBNET_MINERS`` miners declare ``caps`` (``plan.required_concurrency`` of the
    window's requests, counted rather than listed)."""
    from core import plan
    from core.budget import Contender
    from core.tasks import TASKS

    seconds = plan.window_blocks(PERIOD_BLOCKS) * BLOCK_SECONDS
    busy = 0.0
    for task, cap in caps.items():
        c = Contender(0, "hk", task, cap, cap * share, 0)
        n, size = plan.requests_for(c, plan.window_units(c, PERIOD_BLOCKS), 0.0)
        busy += n * TASKS[task].expected_seconds(size)
    return SUBNET_MINERS * busy / seconds


def main() -> None:
    from core.cli import parser
    from core.validator.settings import DEFAULTS

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--miners", type=int, default=256, help="simulated miners")
    p.add_argument("--miner-processes", type=int, default=2, help="processes serving them")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each window")
    p.add_argument("--shares", default="0.0025,0.005,0.01,0.02",
                   help="the validator's stake shares to try, in order, every miner declaring "
                        "the caps (stops at the first not sustained)")
    p.add_argument("--tick", type=float, default=0.2, help="seconds between a stream's lines")
    p.add_argument("--late", type=float, default=1.0,
                   help="seconds after its planned time a request still counts as on time")
    p.add_argument("--max-concurrency", type=int, default=DEFAULTS.max_concurrency,
                   help="the validator's requests in flight, all miners together")
    p.add_argument("--max-per-miner", type=int, default=DEFAULTS.max_per_miner,
                   help="in flight to one miner beyond twice what its window keeps in flight")
    p.add_argument("--plain-asyncio", action="store_true",
                   help="run the validator on asyncio's own loop, not uvloop as the neuron does")
    p.add_argument("--profile", metavar="FILE",
                   help="write a cProfile of the validator process (this one) to FILE")
    p.add_argument("--quick", action="store_true",
                   help="16 miners, one 4-second window at share 0.01 (tests)")
    a = p.parse_args()
    a.shares = [float(x) for x in a.shares.split(",")]
    if a.quick:
        a.miners, a.miner_processes, a.seconds, a.shares = 16, 1, 4.0, [0.01]
    from core.cli import run_loop
    from devtools.profiling import run_profiled

    go = (lambda: asyncio.run(run(a))) if a.plain_asyncio else (lambda: run_loop(run(a)))
    run_profiled(go, a.profile)


if __name__ == "__main__":
    main()
