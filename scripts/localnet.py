"""Run the whole mission on one machine: a local subnet with 3 miners and 3 validators.

Creates real bittensor wallets and a local subnet folder, starts each neuron as its own process on
127.0.0.1 (the same neurons, synapses and HTTP stack as on the network, reading and writing the
chain through bittensor's own client), runs --periods short periods, prints the largest
validator's table for each period, the weights every validator set as the chain recorded them
and each neuron's incentive after Yuma, stops every process it started, and exits non-zero if
anything failed. The validators hold 45%, 35% and 20% of the stake and share their window
reports (docs/protocol.md §9).

    python scripts/localnet.py --periods 2
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/

from core.cli import add_log_level, parser
from core.localchain import LocalSubnet
from core.plan import window_blocks
from core.storage import open_store
from core.validator import keys
from devtools.localproc import ROOT, free_port, make_wallet, neuron, wait_healthy

MARKER = ".sn19-localnet"  # in a folder this script made: the only kind it deletes
MINERS = ("small", "medium", "large")
# name, stake: the first prints its tables, keeps validator.sqlite3 and serves the API
VALIDATORS = (("validator", 4500.0), ("validator-2", 3500.0), ("validator-3", 2000.0))
TEMPO = 10  # blocks between epochs: Yuma runs soon after the last weights


def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--periods", type=int, default=2, help="periods to run before stopping")
    p.add_argument("--dir", default="localnet",
                   help="folder for wallets, the subnet file, the databases and logs (recreated "
                        "when a previous run made it; any other folder that is not empty is "
                        "refused)")
    p.add_argument("--period-blocks", type=int, default=60,
                   help="blocks per period (60 of 1 s: audit windows of 5 s)")
    p.add_argument("--block-time", type=float, default=1.0, help="seconds per local block")
    p.add_argument("--commit-reveal", action="store_true",
                   help="the chain takes weights as timelocked commits, revealed an epoch later")
    p.add_argument("--startup-timeout", type=float, default=180.0,
                   help="seconds to wait for the miners to answer")
    p.add_argument("--api-port", type=int, default=0,
                   help="also serve the validator's OpenAI-compatible API on this port of "
                        "127.0.0.1, with a key printed at start (0: no API)")
    add_log_level(p, "WARNING")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    base = Path(args.dir).resolve()
    if base.exists() and any(base.iterdir()) and not (base / MARKER).exists():
        print(f"localnet: {base} is not empty and was not made by localnet (no {MARKER}): "
              f"choose another --dir", file=sys.stderr)
        return 1
    shutil.rmtree(base, ignore_errors=True)
    wallets_dir, chain_dir, logs = base / "wallets", base / "chain", base / "logs"
    logs.mkdir(parents=True)
    (base / MARKER).write_text("made by scripts/localnet.py: recreated on its next run\n")
    # a chain with the rules a validator meets on finney, at local scale: epochs (Yuma) every
    # tempo blocks, independent of the period; rate limits on serving and on weights; commits
    # revealed an epoch later with --commit-reveal
    chain = LocalSubnet.create(chain_dir, block_time=args.block_time, tempo=TEMPO,
                               age_blocks=25 * args.period_blocks, serving_rate_limit=50,
                               weights_rate_limit=args.period_blocks // 2, min_allowed_weights=1,
                               max_weights_limit=65535, commit_reveal=args.commit_reveal)
    first, *others = VALIDATORS  # uids: the first validator 0, the miners 1-3, the others after
    common = ["--network", f"local:{chain_dir}", "--wallet-path", str(wallets_dir),
              "--period-blocks", str(args.period_blocks), "--log-level", args.log_level]
    procs: list[subprocess.Popen] = []

    def stop(*_):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        register_validator(chain, wallets_dir, *first)
        ports = {}
        for name in MINERS:
            wallet = make_wallet(wallets_dir, f"miner-{name}")
            ports[name] = free_port()
            # registered and served long ago, as on a chain it has run on: its endpoint is in
            # the metagraph at any period's start (it announces nothing when it starts)
            chain.register(wallet.hotkey.ss58_address, wallet.coldkeypub.ss58_address,
                           registered_at=0, endpoint=f"http://127.0.0.1:{ports[name]}")
            log = open(logs / f"miner-{name}.log", "w")
            procs.append(neuron("miner", [
                *common, "--config", str(ROOT / f"miner_config/localnet/{name}.yml"),
                "--wallet-name", f"miner-{name}", "--host", "127.0.0.1",
                "--port", str(ports[name]), "--min-stake", "0", "--torch-threads", "1",
                "--sync-interval", "2", "--state-dir", str(base / "state")],
                stdout=log, stderr=subprocess.STDOUT))
        for validator in others:
            register_validator(chain, wallets_dir, *validator)
        deadline = time.monotonic() + args.startup_timeout
        for name, proc in zip(MINERS, procs):
            try:
                wait_healthy(ports[name], proc, deadline)
            except RuntimeError as e:
                raise RuntimeError(f"miner {name} did not start ({e}); its log: "
                                   f"{logs / f'miner-{name}.log'}") from None
        print(f"localnet: 3 miners serving ({', '.join(f'{n} :{p}' for n, p in ports.items())}); "
              f"{len(VALIDATORS)} validators running {args.periods} period(s) of "
              f"{args.period_blocks} blocks", flush=True)
        show_windows(chain, args.period_blocks, args.periods)
        api = []
        if args.api_port:
            store = open_store(str(base / "validator.sqlite3"))
            key = keys.create(store, "localnet", per_minute=600)
            store.close()
            api = ["--api-port", str(args.api_port), "--api-host", "127.0.0.1"]
            print(f"localnet: API on http://127.0.0.1:{args.api_port}/v1 with key {key}\n"
                  f"  curl -H 'Authorization: Bearer {key}' http://127.0.0.1:{args.api_port}/v1/models",
                  flush=True)
        vprocs = {}
        for name, _ in VALIDATORS:
            # two cores cannot recompute three validators' samples: the largest checks quality
            # on the tiny models, the others score it by speed alone
            check = ["--check", "cpu"] if name == first[0] else ["--check", "off", "--tokenizers",
                                                                 "tiny"]
            flags = [*common, "--wallet-name", name, "--db", str(base / f"{name}.sqlite3"),
                     "--periods", str(args.periods), "--image-size", "64", "--capacity-timeout",
                     "5", *check, "--host", "127.0.0.1", "--port", str(free_port())]
            if name == first[0]:
                vprocs[name] = neuron("validator", [*flags, *api], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
            else:
                vprocs[name] = neuron("validator", flags, stdout=open(logs / f"{name}.log", "w"),
                                      stderr=subprocess.STDOUT)
            procs.append(vprocs[name])
        with open(logs / f"{first[0]}.log", "w") as log_file:  # also kept, like the others'
            for line in vprocs[first[0]].stdout:
                print(line, end="", flush=True)
                log_file.write(line)
        for name, vproc in vprocs.items():
            code = vproc.wait(timeout=120)
            if code != 0:
                print(f"localnet: {name} exited with {code}; see {logs}", file=sys.stderr)
                return 1
        dead = [n for n, p in zip(MINERS, procs) if p.poll() is not None]
        if dead:
            print(f"localnet: miner(s) {', '.join(dead)} died; see {logs}", file=sys.stderr)
            return 1
        return report(chain)
    except (RuntimeError, KeyboardInterrupt) as e:
        print(f"localnet: {e or 'interrupted'}; logs in {logs}", file=sys.stderr)
        return 1
    finally:
        stop()


def register_validator(chain: LocalSubnet, wallets: Path, name: str, stake: float) -> None:
    wallet = make_wallet(wallets, name)
    chain.register(wallet.hotkey.ss58_address, wallet.coldkeypub.ss58_address, stake=stake,
                   validator_permit=True, registered_at=0)


def show_windows(chain: LocalSubnet, period_blocks: int, periods: int) -> None:
    """Choose the local chain's seed so that every period the validator can run has an audit
    window: a short run always shows one. Only a local subnet can choose; the draws themselves
    are the protocol's."""
    chain.open_windows(period_blocks, periods, end_margin=period_blocks // 6)
    print(f"localnet: block hashes chosen so each period has an audit window "
          f"({window_blocks(period_blocks)} blocks) in its second half, ending a sixth of the "
          f"period before it", flush=True)


def report(chain: LocalSubnet) -> int:
    """Print the weights each validator set, as the chain recorded them (clipped to the
    subnet's limit, quantised to u16), then each neuron's incentive and dividends after the
    next epoch's Yuma, read through bittensor as from a node; non-zero when no weights were
    set."""
    log = chain.weights_log()
    if not log:
        print("localnet: no weights were set", file=sys.stderr)
        return 1
    names = [VALIDATORS[0][0]] + [f"miner-{m}" for m in MINERS] + [v for v, _ in VALIDATORS[1:]]
    for entry in log:
        total = sum(entry["weights"].values())
        shown = ", ".join(f"{names[int(u)]} (uid {u}) {v} ({v / total:.3f})"
                          for u, v in sorted(entry["weights"].items(), key=lambda kv: int(kv[0])))
        print(f"weights of {names[entry['uid']]} recorded at block {entry['block']}: {shown}")
    ledger = chain.ledger
    epoch = ledger.last_epoch(ledger.head()) + ledger.hyper("tempo") + 1
    time.sleep(max(ledger.timestamp(epoch) - time.time(), 0))  # the next epoch runs Yuma
    graph = asyncio.run(_metagraph(chain))
    print(f"after Yuma at block {graph.last_step} (tempo {graph.tempo}): "
          + ", ".join(f"{names[n.uid]} incentive {n.incentive:.3f}" for n in graph.neurons
                      if not n.validator_permit) + "; "
          + ", ".join(f"{names[n.uid]} dividends {n.dividends:.3f}" for n in graph.neurons
                      if n.validator_permit), flush=True)
    return 0


async def _metagraph(chain: LocalSubnet):
    """The subnet's metagraph as bittensor decodes it from the chain (incentive, dividends)."""
    import bittensor as bt

    from core.localchain import FolderSubstrate

    async with bt.Client("local", substrate=FolderSubstrate(chain.folder)) as client:
        return await client.subnets.metagraph(chain.netuid, commitments=False)


if __name__ == "__main__":
    sys.exit(main())
