"""What scaling out costs, each figure on its own line as `name: value unit`.

1. Routing overhead of the miner's front end: the same one-token chat requests, one at a time,
   alternately straight to a worker (neurons/worker.py, OpenAI-compatible API) and through a miner
   front end (neurons/miner.py, signed by the validator's aiohttp client) that routes to 1 or 2
   such workers, all on 127.0.0.1. The overhead is the through-front-end latency minus the direct
   one, at p50 and p99 over --n requests per path.
2. Budget accounting across validator replicas: processes each with its own PostgreSQL
   connection pool (as API replicas hold) do what the organic API does per request against one
   contender table, --in-flight requests at once each: pick (read the task's budgets), reserve
   (the atomic UPDATE) and settle. Requests/s with 1 and 2 replicas, and whether the budget held
   (it must, exactly).

    python scripts/bench_scaleout.py [--n 300] [--accounting-s 5] [--in-flight 16] [--dsn ...]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/

TOKEN = "bench-worker-token-0123456789"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(len(xs) * q), len(xs) - 1)]


async def routing(n: int) -> dict[str, float]:
    from core.backends.remote import OpenAIChat
    from core.localchain import LocalSubnet
    from core.protocol import MAX_CHAT_LINE_BYTES, ChatChunk, ChatRequest
    from core.transport.client import SignedClient
    from devtools.localproc import free_ports, make_wallet, neuron, wait_healthy

    tmp = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    chain = LocalSubnet.create(tmp / "chain", age_blocks=1000)
    validator = make_wallet(tmp / "w", "validator")
    chain.register(
        validator.hotkey.ss58_address, "c", stake=10, validator_permit=True, registered_at=0
    )
    a, b, one, two = free_ports(4)
    fronts = {}
    for port, urls in ((one, [a]), (two, [a, b])):
        wallet = make_wallet(tmp / "w", f"miner{port}")
        chain.register(wallet.hotkey.ss58_address, "c", registered_at=0,
                       endpoint=f"http://127.0.0.1:{port}")
        workers = "".join(f"      - {{capacity: 1000000, concurrency: 4, "
                          f"url: 'http://127.0.0.1:{u}', token_env: WTOKEN}}\n" for u in urls)
        (tmp / f"{port}.yml").write_text(f"tasks:\n  chat-llama-3:\n    workers:\n{workers}")
        fronts[port] = wallet.hotkey.ss58_address
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [neuron("worker", ["--task", "chat-llama-3", "--host", "127.0.0.1", "--port", str(p),
                               "--torch-threads", "1", "--concurrency", "4"],
                    env={"SN19_WORKER_TOKEN": TOKEN}, **quiet) for p in (a, b)]
    out: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 180
        for port, proc in zip((a, b), procs):
            wait_healthy(port, proc, deadline)
        procs += [neuron("miner", [
            "--network", f"local:{chain.folder}", "--wallet-path", str(tmp / "w"), "--wallet-name",
            f"miner{p}", "--config", str(tmp / f"{p}.yml"), "--host", "127.0.0.1", "--port", str(p),
            "--min-stake", "0", "--no-announce", "--state-dir", str(tmp / "state"), "--log-level",
            "WARNING"], env={"WTOKEN": TOKEN}, **quiet) for p in fronts]
        for port, proc in zip((one, two), procs[2:]):
            wait_healthy(port, proc, deadline)
        direct = OpenAIChat(f"http://127.0.0.1:{a}", "m", TOKEN)
        client = SignedClient(validator.hotkey)

        def request(i: int) -> ChatRequest:
            return ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": "hi"}],
                               max_tokens=1, temperature=0.0, seed=i)

        async def straight(i: int) -> float:
            began = time.perf_counter()
            chunks = [c async for c in direct.chunks(request(i))]
            assert chunks[-1].done
            return time.perf_counter() - began

        async def through(port: int, i: int) -> float:
            began = time.perf_counter()
            last = None
            async for status, line in client.stream(f"http://127.0.0.1:{port}", "/chat",
                                                    fronts[port], request(i), 30,
                                                    MAX_CHAT_LINE_BYTES):
                assert status == 200, line
                last = line
            assert ChatChunk.model_validate_json(last).done
            return time.perf_counter() - began

        for i in range(20):  # warm-up: connections, allocator, caches
            await straight(i), await through(one, i), await through(two, i)
        times: dict[str, list[float]] = {"direct": [], "one": [], "two": []}
        for i in range(n):
            times["direct"].append(await straight(i))
            times["one"].append(await through(one, i))
            times["two"].append(await through(two, i))
        await direct.close()
        await client.close()
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            out[f"direct_worker_{name}"] = pct(times["direct"], q) * 1e3
            for label, key in (("1_worker", "one"), ("2_workers", "two")):
                out[f"front_end_{label}_{name}"] = pct(times[key], q) * 1e3
                out[f"routing_overhead_{label}_{name}"] = (pct(times[key], q)
                                                           - pct(times["direct"], q)) * 1e3
                out[f"routing_overhead_over_direct_{label}_{name}"] = (
                    pct(times[key], q) / pct(times["direct"], q) - 1)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return out


def _replica(dsn: str, seconds: float, in_flight: int, start, counts) -> None:
    """One replica's accounting as the organic API does it per request (pick, reserve, record and
    settle, each through ``Store.io`` on the store's connection pool), ``in_flight`` requests at
    once on one event loop."""
    from core.records import Outcome, RequestRecord
    from core.storage import open_store
    from core.validator.book import PeriodBook

    store = open_store(dsn)
    book = PeriodBook(store)
    book.open(1, store.contenders(1), None, {})
    start.wait()
    end = time.perf_counter() + seconds

    async def client(i: int) -> int:
        done = 0
        while time.perf_counter() < end:
            options = await store.io(book.candidates, "chat-llama-3", 10)
            if not options:
                break
            key = (options[(i + done) % len(options)][0].hotkey, "chat-llama-3")
            reserved = await store.io(book.reserve, key, 10)
            if reserved is not None:  # the request served 7 of the 10 reserved: settled with it
                await store.io(store.finish_requests, [(RequestRecord(
                    reserved.period, key[0], "chat-llama-3", True, Outcome.OK, 7, 0.01), 10,
                    reserved.held)])
            done += 1
        return done

    async def clients() -> int:
        return sum(await asyncio.gather(*(client(i) for i in range(in_flight))))

    counts.put(asyncio.run(clients()))
    store.close()


def accounting(dsn: str, seconds: float, in_flight: int) -> dict[str, float]:
    import psycopg

    from core.budget import Contender
    from core.storage import open_store

    out = {}
    for replicas in (1, 2):
        schema = f"bench_{os.getpid()}_{replicas}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        scoped = f"{dsn}?options=-csearch_path%3D{schema}"
        store = open_store(scoped)
        budget = 1e12
        store.begin_period(1, 300, "0x0", 1.0, 0.0, [
            Contender(uid, f"hk{uid}", "chat-llama-3", budget, budget, 0) for uid in range(64)])
        ctx = multiprocessing.get_context("spawn")
        start, counts = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_replica, args=(scoped, seconds, in_flight, start, counts))
                 for _ in range(replicas)]
        for p in procs:
            p.start()
        time.sleep(3)  # every replica connected and waiting
        start.set()
        total = sum(counts.get(timeout=seconds + 60) for _ in procs)
        for p in procs:
            p.join()
        used = sum(u for _, u in store.spent(1).values())
        out[f"accounting_{replicas}_replica{'s' if replicas > 1 else ''}"] = total / seconds
        out[f"accounting_{replicas}_replica{'s' if replicas > 1 else ''}_units_exact"] = float(
            used == 7 * total)
        out[f"accounting_{replicas}_replica{'s' if replicas > 1 else ''}_in_flight"] = in_flight
        store.close()
    return out


def main(argv=None) -> int:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="requests per path for the routing figures")
    p.add_argument("--accounting-s", type=float, default=5.0,
                   help="seconds each accounting run lasts")
    p.add_argument("--dsn", default=None,
                   help="PostgreSQL to measure against (default: a private server started here "
                        "from the machine's binaries)")
    p.add_argument("--in-flight", type=int, default=16,
                   help="requests each replica has in flight at once (1: one after another)")
    args = p.parse_args(argv)
    print(f"routing: {args.n} one-token chat requests per path, one at a time", flush=True)
    for name, value in asyncio.run(routing(args.n)).items():
        print(f"{name}: {value:.3f} ratio" if "_over_" in name else f"{name}: {value:.2f} ms",
              flush=True)
    print(f"accounting: {args.accounting_s:g} s per run", flush=True)
    if args.dsn:
        figures = accounting(args.dsn, args.accounting_s, args.in_flight)
    else:
        from devtools.localpg import postgres_server

        with postgres_server(fsync=True) as dsn:
            figures = accounting(dsn, args.accounting_s, args.in_flight)
    for name, value in figures.items():
        unit = ("bool" if name.endswith("exact") else "count" if name.endswith("in_flight")
                else "req/s")
        print(f"{name}: {value:.0f} {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
