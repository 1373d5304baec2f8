"""A bounded load and fault run on a local subnet, each figure on its own line as
`name: value unit`.

Three miners and a validator (with its organic API and CPU checking) run on 127.0.0.1 for
--minutes. Organic clients stream chats and generate images through the API the whole time,
while miners are killed (SIGKILL) at random and restarted a few seconds later. At the end the
validator is stopped with SIGTERM and its database is compared with what the clients saw:
every answer a client received must be on record (lost records: 0), and every period it began
must be closed or resumable. Reports requests by outcome, restarts, and the validator's memory.

    python scripts/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/

from core.cli import parser
from core.localchain import LocalSubnet
from core.storage import open_store
from core.validator import keys
from devtools.localproc import ROOT, free_ports, lone_validator, make_wallet, neuron, wait_healthy

MINERS = ("small", "medium", "large")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Net:
    def __init__(self, base: Path, period_blocks: int):
        self.base = base
        self.chain = LocalSubnet.create(base / "chain", block_time=1.0, tempo=period_blocks,
                                       age_blocks=25 * period_blocks)
        self.common = ["--network", f"local:{self.chain.folder}", "--wallet-path",
                       str(base / "w"), "--period-blocks", str(period_blocks),
                       "--log-level", "WARNING"]
        *self.ports, self.api_port = free_ports(len(MINERS) + 1)
        self.miners: dict[str, subprocess.Popen] = {}
        self.restarts = 0

    def start_miner(self, name: str, port: int) -> None:
        self.miners[name] = neuron("miner", [
            *self.common, "--config", str(ROOT / f"miner_config/localnet/{name}.yml"),
            "--wallet-name", f"miner-{name}", "--host", "127.0.0.1", "--port", str(port),
            "--min-stake", "0", "--torch-threads", "1", "--sync-interval", "2",
            "--state-dir", str(self.base / "state")],
            stdout=open(self.base / f"miner-{name}.log", "a"), stderr=subprocess.STDOUT)


async def client_loop(session, api: str, key: str, stop: float, seen: collections.Counter,
                      rng: random.Random) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    while time.monotonic() < stop:
        chat = rng.random() < 0.7
        try:
            if chat:
                body = {"model": "chat-llama-3", "stream": True, "max_tokens": 64,
                        "messages": [{"role": "user", "content": f"tell me {rng.random()}"}]}
                async with session.post(f"{api}/chat/completions", json=body, headers=auth) as r:
                    text = await r.text()
                    ok = r.status == 200 and "[DONE]" in text and '"error"' not in text
                    status = r.status if r.status != 200 or ok else "stream-error"
            else:
                body = {"model": "proteus-text-to-image", "prompt": "a boat", "size": "64x64",
                        "steps": 10}
                async with session.post(f"{api}/images/generations", json=body, headers=auth) as r:
                    await r.read()
                    ok, status = r.status == 200, r.status
            seen["ok" if ok else f"error_{status}"] += 1
        except (TimeoutError, aiohttp.ClientError) as e:
            seen[f"error_{type(e).__name__}"] += 1
        await asyncio.sleep(rng.uniform(0.2, 1.0))


async def chaos(net: Net, stop: float, every: float, rng: random.Random) -> None:
    while time.monotonic() < stop - every:
        await asyncio.sleep(rng.expovariate(1 / every))
        name = rng.choice(MINERS)
        net.miners[name].kill()
        net.miners[name].wait()
        await asyncio.sleep(rng.uniform(3, 8))
        net.start_miner(name, net.ports[MINERS.index(name)])
        net.restarts += 1


async def main(args) -> None:
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    net = Net(base, args.period_blocks)
    validator = make_wallet(base / "w", "validator")
    net.chain.register(validator.hotkey.ss58_address, "c", stake=1000, validator_permit=True,
                       registered_at=0)
    for name, port in zip(MINERS, net.ports):
        wallet = make_wallet(base / "w", f"miner-{name}")
        net.chain.register(wallet.hotkey.ss58_address, "c", registered_at=0,
                           endpoint=f"http://127.0.0.1:{port}")
        net.start_miner(name, port)
    for name, port in zip(MINERS, net.ports):
        wait_healthy(port, net.miners[name], time.monotonic() + 180)
    db = str(base / "v.sqlite3")
    store = open_store(db)
    key = keys.create(store, "soak", per_minute=10**6)
    store.close()
    log = open(base / "validator.log", "w")  # noqa: ASYNC230 (at start-up)
    vproc = lone_validator(net.common, "validator", db, "--check", "cpu", "--image-size", "64",
                           "--api-port", str(net.api_port), "--api-host", "127.0.0.1",
                           stdout=log, stderr=subprocess.STDOUT)
    print(f"# soak: logs and database in {base}", flush=True)
    api = f"http://127.0.0.1:{net.api_port}/v1"
    seen: collections.Counter = collections.Counter()
    memory = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            for _ in range(120):  # the validator plans a period before the API has capacity
                try:
                    async with session.get(f"{api}/models",
                                           headers={"Authorization": f"Bearer {key}"}) as r:
                        data = await r.json()
                        if any(m["remaining"] > 0 for m in data["data"]):
                            break
                except (aiohttp.ClientError, KeyError, ValueError):
                    pass
                await asyncio.sleep(1)
            memory.append(rss_mb(vproc.pid))
            stop = time.monotonic() + args.minutes * 60

            async def sample():
                while time.monotonic() < stop:
                    await asyncio.sleep(10)
                    memory.append(rss_mb(vproc.pid))

            await asyncio.gather(
                *(client_loop(session, api, key, stop, seen, random.Random(rng.random()))
                  for _ in range(args.clients)),
                chaos(net, stop, args.kill_every, rng), sample())
    finally:
        vproc.send_signal(signal.SIGTERM)
        code = vproc.wait(60)
        for p in net.miners.values():
            p.terminate()
            p.wait(30)
    store = open_store(db)
    periods = sorted({p for p in range(store.latest_period() - 500, store.latest_period() + 1)
                      if store.period(p)})
    records = [r for p in periods for r in store.records(p)]
    organic_ok = sum(r.organic and r.outcome.value == "ok" for r in records)
    unfinished = [p for p in periods if not store.period(p).finished]
    print(f"soak_minutes: {args.minutes} min")
    print(f"soak_validator_exit: {code} code")
    print(f"soak_miner_kills: {net.restarts} count")
    print(f"soak_organic_requests: {sum(seen.values())} count")
    for kind, n in sorted(seen.items()):
        print(f"soak_organic_{kind}: {n} count")
    print(f"soak_records: {len(records)} count")
    print(f"soak_records_synthetic: {sum(not r.organic for r in records)} count")
    by_outcome = collections.Counter(r.outcome.value for r in records)
    for outcome, n in sorted(by_outcome.items()):
        print(f"soak_records_{outcome}: {n} count")
    print(f"soak_periods: {len(periods)} count")
    print(f"soak_periods_left_open: {len(unfinished)} count")
    print(f"soak_lost_records: {max(seen['ok'] - organic_ok, 0)} count")
    print(f"validator_rss_start: {memory[0]:.1f} MB")
    # after a minute the checker's reference models are loaded: growth from there is a leak
    print(f"validator_rss_after_1min: {memory[min(6, len(memory) - 1)]:.1f} MB")
    print(f"validator_rss_peak: {max(memory):.1f} MB")
    print(f"validator_rss_end: {memory[-1]:.1f} MB")


def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    p.add_argument("--clients", type=int, default=4, help="organic clients in parallel")
    p.add_argument("--kill-every", type=float, default=30.0,
                   help="mean seconds between killing a random miner (restarted 3-8 s later)")
    p.add_argument("--period-blocks", type=int, default=30, help="blocks (seconds) per period")
    p.add_argument("--seed", type=int, default=0, help="seed of the load and the kills")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
