"""Latency the validator's organic API adds, each figure on its own line as
`name: value unit`.

A miner process and a validator process (with its API) run on a local subnet on 127.0.0.1.
Streamed chat requests go to the miner directly (signed, as the validator sends them) and through
the API (OpenAI schema, server-sent events), alternately in rounds, at 1, 16 and 64 concurrent
clients. Reports time to first token (p50, p99) both ways, the difference and its ratio to the
direct figure, and the CPU each process spent per request. ``--db postgresql`` runs the validator
on a private PostgreSQL server (started here from the machine's binaries) instead of SQLite.

    python scripts/bench_organic.py [--requests 96] [--rounds 2] [--db sqlite|postgresql]
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/

PERIOD_BLOCKS = 3600


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(len(xs) * q), len(xs) - 1)]


async def ttft_direct(client, url: str, miner: str, request) -> float:
    """Time to the first token; the stream is read to its end, as the API path reads it (an
    abandoned stream stops the miner's generation and would flatter this side)."""
    from core.protocol import MAX_CHAT_LINE_BYTES

    t = time.perf_counter()
    first = None
    async for status, line in client.stream(url, "/chat", miner, request, 120, MAX_CHAT_LINE_BYTES):
        if status != 200:
            raise RuntimeError(f"miner answered {status}: {line[:200]!r}")
        if first is None and b'"ids":[' in line and b'"ids":[]' not in line:
            first = time.perf_counter() - t
    if first is None:
        raise RuntimeError("no token came back")
    return first


async def ttft_api(session, api: str, key: str, body: dict) -> float:
    t = time.perf_counter()
    async with session.post(f"{api}/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status != 200:
            raise RuntimeError(f"API answered {r.status}: {await r.text()}")
        async for line in r.content:
            if line.startswith(b"data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    elapsed = time.perf_counter() - t
                    async for _ in r.content:  # finish reading the stream
                        pass
                    return elapsed
    raise RuntimeError("no token came back")


async def run(concurrency: int, n: int, call) -> list[float]:
    out: list[float] = []

    async def worker(count: int):
        for _ in range(count):
            out.append(await call())

    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return out


async def measure(requests: int, rounds: int, db: str) -> None:
    import aiohttp

    from core.localchain import LocalSubnet
    from core.protocol import ChatRequest
    from core.storage import open_store
    from core.transport.client import SignedClient
    from core.validator import keys
    from devtools.localproc import free_ports, lone_validator, make_wallet, neuron, wait_healthy

    tmp = Path(tempfile.mkdtemp(prefix="bench-organic-"))
    chain = LocalSubnet.create(tmp / "chain", tempo=PERIOD_BLOCKS, age_blocks=10 * PERIOD_BLOCKS)
    validator, miner = make_wallet(tmp / "w", "validator"), make_wallet(tmp / "w", "miner")
    chain.register(
        validator.hotkey.ss58_address, "c", stake=1000, validator_permit=True, registered_at=0
    )
    miner_port, api_port = free_ports(2)
    chain.register(miner.hotkey.ss58_address, "c", registered_at=0,
                   endpoint=f"http://127.0.0.1:{miner_port}")
    (tmp / "miner.yml").write_text("tasks:\n  chat-llama-3: {capacity: 576000, group: g}\n"
                                   "groups:\n  g: {concurrency: 64}\n")
    if db == "sqlite":
        db = str(tmp / "v.sqlite3")
    store = open_store(db)
    key = keys.create(store, "bench", per_minute=10**6)
    store.close()
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(tmp / "w"),
              "--period-blocks", str(PERIOD_BLOCKS), "--log-level", "WARNING"]
    procs = [neuron("miner", [*common, "--config", str(tmp / "miner.yml"), "--wallet-name",
                              "miner", "--host", "127.0.0.1", "--port", str(miner_port),
                              "--min-stake", "0", "--torch-threads", "1", "--max-waiting", "256",
                              "--state-dir", str(tmp / "state")],
                    stdout=open(tmp / "miner.log", "w"), stderr=subprocess.STDOUT)]  # noqa: ASYNC230 (at start-up)
    try:
        wait_healthy(miner_port, procs[0], time.monotonic() + 120)
        procs.append(lone_validator(
            common, "validator", db, "--check", "off", "--tokenizers", "tiny", "--api-port",
            str(api_port), "--api-host", "127.0.0.1",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        api = f"http://127.0.0.1:{api_port}/v1"
        messages = [{"role": "user", "content": "hello there"}]
        body = {"model": "chat-llama-3", "messages": messages, "max_tokens": 8, "stream": True,
                "seed": 0}  # the direct requests' seed: the same tokens both ways
        direct = SignedClient(validator.hotkey)
        url, me = f"http://127.0.0.1:{miner_port}", miner.hotkey.ss58_address
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=128, keepalive_timeout=4.0)
        ) as session:
            deadline = time.monotonic() + 3 * 60
            while True:
                try:
                    await ttft_api(session, api, key, body)
                    break
                except (RuntimeError, aiohttp.ClientError):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the validator's API never served a request") from None
                    await asyncio.sleep(1)
            results, cpu = {}, {"direct": [0.0, 0.0, 0], "api": [0.0, 0.0, 0]}
            pids = (procs[0].pid, procs[1].pid)

            async def timed_run(mode, c, n, call):
                before = [cpu_seconds(p) for p in pids]
                out = await run(c, n, call)
                after = [cpu_seconds(p) for p in pids]
                cpu[mode][0] += after[0] - before[0]
                cpu[mode][1] += after[1] - before[1]
                cpu[mode][2] += len(out)
                return out

            for c in (1, 16, 64):
                n = max(requests // c, 1) * c
                d, v = [], []
                for _ in range(rounds):
                    d += await timed_run("direct", c, n, lambda: ttft_direct(
                        direct, url, me, ChatRequest(task="chat-llama-3", messages=messages,
                                                     max_tokens=8)))
                    v += await timed_run("api", c, n, lambda: ttft_api(session, api, key, body))
                results[c] = (d, v)
        await direct.close()
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    for mode, (miner_s, validator_s, n) in cpu.items():
        print(f"miner_cpu_per_request_{mode}: {miner_s / n * 1e3:.2f} ms")
        print(f"validator_cpu_per_request_{mode}: {validator_s / n * 1e3:.2f} ms")
    for c, (d, v) in results.items():
        print(f"ttft_direct_c{c}_p50: {pct(d, 0.5) * 1e3:.2f} ms")
        print(f"ttft_validator_c{c}_p50: {pct(v, 0.5) * 1e3:.2f} ms")
        print(f"ttft_added_c{c}_p50: {(pct(v, 0.5) - pct(d, 0.5)) * 1e3:.2f} ms")
        print(f"ttft_added_over_direct_c{c}_p50: {(pct(v, 0.5) - pct(d, 0.5)) / pct(d, 0.5):.3f} "
              "ratio")
        print(f"ttft_direct_c{c}_p99: {pct(d, 0.99) * 1e3:.2f} ms")
        print(f"ttft_validator_c{c}_p99: {pct(v, 0.99) * 1e3:.2f} ms")
        print(f"ttft_added_c{c}_p99: {(pct(v, 0.99) - pct(d, 0.99)) * 1e3:.2f} ms")


def main() -> None:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=96, help="requests per round and concurrency")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds, direct then API")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the validator's database")
    a = p.parse_args()
    print(f"db: {a.db}")
    if a.db == "sqlite":
        asyncio.run(measure(a.requests, a.rounds, "sqlite"))
        return
    from devtools.localpg import postgres_server

    with postgres_server(fsync=True) as dsn:
        asyncio.run(measure(a.requests, a.rounds, dsn))


if __name__ == "__main__":
    main()
