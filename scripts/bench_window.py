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

For each multiple of today's caps (every miner declaring ``multiple`` x the cap of both chat
tasks; 1 is the whole subnet at today's caps, ~82,000 tokens/s): tokens/s and requests/s
received, the share of requests that reached their miner within ``--late`` seconds of their
planned time and the share answered ok, the validator's CPU seconds per million tokens and its
CPU share of the wall time, and its peak RSS. A multiple is sustained when 99% of its requests
are on time and 99% ok; the largest sustained one is printed last. On this machine the
simulated miners share its cores with the validator: the CPU per million tokens is the figure
that carries to a validator's own machine.

    python scripts/bench_window.py [--multiples 0.25,0.5,1,2] [--seconds 20]
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

CHAT_TASKS = ("chat-llama-3", "chat-mixtral")
PERIOD_BLOCKS, BLOCK_SECONDS = 300, 12.0  # production: a window sends W/300 of a declaration


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
            await response.write(ChatChunk.of(tokens).model_dump_json().encode() + b"\n")
        final = ChatChunk(done=True, prompt_tokens=prompt, completion_tokens=n)
        await response.write(final.model_dump_json().encode() + b"\n")
        await response.write_eof()
        return response

    async def arrived(_: web.Request) -> web.Response:
        times = list(arrivals)
        arrivals.clear()
        return web.json_response(times)

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


async def arrivals(ports: list[int]) -> list[float]:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        out: list[float] = []
        for port in ports:
            async with s.get(f"http://127.0.0.1:{port}/arrivals") as r:
                out.extend(json.loads(await r.read()))
        return out


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
    print(f"miners: {a.miners} count")
    print(f"window_seconds: {a.seconds:.0f} s")
    sustained = 0.0
    try:
        for period, multiple in enumerate(a.multiples):
            declared = {task: multiple * TASKS[task].max_capacity for task in CHAT_TASKS}
            contenders = [Contender(n.uid, n.hotkey, task, declared[task], declared[task], 0)
                          for n in metagraph.neurons if n.endpoint for task in CHAT_TASKS]
            store.begin_period(period, 0, "0x", 1.0, 0.0, contenders)
            validator.book.open(period, contenders, metagraph, {})
            # the window's rate over --seconds rather than its 300 (the share left = seconds/300)
            left = a.seconds / (window * BLOCK_SECONDS)
            sends = plan.window_plan(contenders, {}, PERIOD_BLOCKS, a.seconds, left=left)
            validator.sender.begin()
            cpu0, t0, start = cpu_seconds(), time.perf_counter(), time.time()
            await validator.sender.schedule(metagraph, sends)
            await validator.sender.sent()
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            records = store.records(period)
            ok = [r for r in records if r.outcome.value == "ok"]
            tokens = sum(r.units for r in ok)
            got = sorted(await arrivals([g[0] for g, _ in groups]))
            planned = sorted(start + s.at for s in sends)
            late = [max(0.0, t - p) for t, p in zip(got, planned)]
            on_time = sum(x <= a.late for x in late) / max(len(sends), 1)
            ok_share = len(ok) / max(len(sends), 1)
            name = f"x{multiple:g}".replace(".", "_")
            print(f"{name}_requests_planned: {len(sends)} count")
            planned_units = sum(s.units for s in sends)
            # rates over the window's length: every request was planned in it, and one sent
            # late shows in the on-time share; the wall time adds the last answers' drain
            print(f"{name}_requests_per_s: {len(records) / a.seconds:.1f} req/s")
            print(f"{name}_tokens_per_s: {tokens / a.seconds:.0f} tokens/s")
            print(f"{name}_tokens_over_planned: {tokens / max(planned_units, 1):.4f} ratio")
            print(f"{name}_wall: {wall:.1f} s")
            print(f"{name}_on_time_share: {on_time:.4f} share")
            print(f"{name}_lateness_p99: {late[int(0.99 * (len(late) - 1))] if late else 0:.3f} s")
            print(f"{name}_ok_share: {ok_share:.4f} share")
            print(f"{name}_validator_cpu_per_million_tokens: {cpu / max(tokens, 1) * 1e6:.2f} s")
            print(f"{name}_validator_cpu_share: {cpu / wall:.3f} share")
            print(f"{name}_peak_rss: "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB",
                  flush=True)
            if on_time >= 0.99 and ok_share >= 0.99:
                sustained = max(sustained, multiple)
            else:
                break  # a larger multiple will not do better
    finally:
        await validator.client.close()
        for s in servers:
            s.terminate()
    print(f"largest_sustained_multiple_of_caps: {sustained:g} ratio")


def main() -> None:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--miners", type=int, default=256, help="simulated miners")
    p.add_argument("--miner-processes", type=int, default=2, help="processes serving them")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each window")
    p.add_argument("--multiples", default="0.25,0.5,1,2",
                   help="multiples of today's caps to try, in order (stops at the first missed)")
    p.add_argument("--tick", type=float, default=0.2, help="seconds between a stream's lines")
    p.add_argument("--late", type=float, default=1.0,
                   help="seconds after its planned time a request still counts as on time")
    p.add_argument("--max-concurrency", type=int, default=8192,
                   help="the validator's requests in flight, all miners together")
    p.add_argument("--max-per-miner", type=int, default=64, help="in flight to one miner")
    p.add_argument("--plain-asyncio", action="store_true",
                   help="run the validator on asyncio's own loop, not uvloop as the neuron does")
    p.add_argument("--profile", metavar="FILE",
                   help="write a cProfile of the validator process (this one) to FILE")
    p.add_argument("--quick", action="store_true", help="16 miners, one 4-second window (tests)")
    a = p.parse_args()
    a.multiples = [float(x) for x in a.multiples.split(",")]
    if a.quick:
        a.miners, a.miner_processes, a.seconds, a.multiples = 16, 1, 4.0, [1.0]
    from core.cli import run_loop
    from devtools.profiling import run_profiled

    go = (lambda: asyncio.run(run(a))) if a.plain_asyncio else (lambda: run_loop(run(a)))
    run_profiled(go, a.profile)


if __name__ == "__main__":
    main()
