"""Run the whole mission on one machine: a local subnet with 3 miners and 3 validators.

Creates real bittensor wallets and a local subnet folder, starts each neuron as its own process on
127.0.0.1 (the same neurons, synapses and HTTP stack as on the network, reading and writing the
chain through bittensor's own client), runs --periods short periods, prints the largest
validator's table for each period, the weights every validator set as the chain recorded them
and each neuron's incentive after Yuma, stops every process it started, and exits non-zero if
anything failed. The validators hold 45%, 35% and 20% of the stake and share their window
reports (docs/protocol.md §9).

``--miner-config my.yml`` (repeatable) runs a miner declaring your capacity YAML beside the
project's three, and the end of the run prints, for every miner's task, what the largest
validator credited of what was declared, and why when it credited less.

    python scripts/localnet.py --periods 2
    python scripts/localnet.py --periods 2 --miner-config my.yml
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
from core.validator.feedback import feedback_for
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
    p.add_argument("--block-time", type=float, default=None,
                   help="seconds per local block (default: 1, or what --window-seconds needs)")
    p.add_argument("--window-seconds", type=float, default=None,
                   help="seconds an audit window lasts, a twelfth of the period: the local "
                        "block time is set to give it. A window must be long enough for a "
                        "backlog to show: in 5-second windows a miner declaring several times "
                        "what it serves answers the window's requests late but within their "
                        "time limits and is credited in full (default: 30 with --miner-config, "
                        "so a period lasts 6 minutes; else 5)")
    p.add_argument("--miner-config", action="append", default=[], metavar="FILE",
                   help="also run a miner declaring this capacity YAML beside the project's "
                        "three (repeatable); its capacities are per local period (60 blocks: "
                        "--period-blocks x the block time)")
    p.add_argument("--commit-reveal", action="store_true",
                   help="the chain takes weights as timelocked commits, revealed an epoch later")
    p.add_argument("--startup-timeout", type=float, default=180.0,
                   help="seconds to wait for the miners to answer")
    p.add_argument("--api-port", type=int, default=0,
                   help="also serve the validator's OpenAI-compatible API on this port of "
                        "127.0.0.1, with a key printed at start (0: no API)")
    add_log_level(p, "WARNING")
    args = p.parse_args(argv)
    if args.window_seconds is not None and args.block_time is not None:
        p.error("give --window-seconds or --block-time, not both")
    if args.block_time is None:
        window = args.window_seconds or (30.0 if args.miner_config else None)
        args.block_time = window / window_blocks(args.period_blocks) if window else 1.0
    for path in args.miner_config:
        if not Path(path).is_file():
            p.error(f"--miner-config {path}: no such file")
    return args


def own_miners(paths: list[str]) -> list[tuple[str, Path]]:
    """(name, file) of each --miner-config: ``own-<file name>``, numbered when two share one."""
    out: list[tuple[str, Path]] = []
    for path in paths:
        name = f"own-{Path(path).stem}"
        taken = {n for n, _ in out}
        if name in taken:
            name = next(f"{name}-{i}" for i in range(2, len(out) + 2) if f"{name}-{i}" not in taken)
        out.append((name, Path(path).resolve()))
    return out


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
    # uids: the first validator 0, the project's miners 1-3, --miner-config's next, the other
    # validators after
    first, *others = VALIDATORS
    common = ["--network", f"local:{chain_dir}", "--wallet-path", str(wallets_dir),
              "--period-blocks", str(args.period_blocks), "--log-level", args.log_level]
    procs: list[subprocess.Popen] = []
    miners = [(name, ROOT / f"miner_config/localnet/{name}.yml") for name in MINERS]
    miners += own_miners(args.miner_config)

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
        hotkeys = {}
        for name, config in miners:
            wallet = make_wallet(wallets_dir, f"miner-{name}")
            hotkeys[name] = wallet.hotkey.ss58_address
            ports[name] = free_port()
            # registered and served long ago, as on a chain it has run on: its endpoint is in
            # the metagraph at any period's start (it announces nothing when it starts)
            chain.register(wallet.hotkey.ss58_address, wallet.coldkeypub.ss58_address,
                           registered_at=0, endpoint=f"http://127.0.0.1:{ports[name]}")
            log = open(logs / f"miner-{name}.log", "w")
            procs.append(neuron("miner", [
                *common, "--config", str(config),
                "--wallet-name", f"miner-{name}", "--host", "127.0.0.1",
                "--port", str(ports[name]), "--min-stake", "0", "--torch-threads", "1",
                "--sync-interval", "2", "--state-dir", str(base / "state")],
                stdout=log, stderr=subprocess.STDOUT))
        for validator in others:
            register_validator(chain, wallets_dir, *validator)
        deadline = time.monotonic() + args.startup_timeout
        for (name, _), proc in zip(miners, procs):
            try:
                wait_healthy(ports[name], proc, deadline)
            except RuntimeError as e:
                raise RuntimeError(f"miner {name} did not start ({e}); its log: "
                                   f"{logs / f'miner-{name}.log'}") from None
        print(f"localnet: {len(miners)} miners serving "
              f"({', '.join(f'{n} :{p}' for n, p in ports.items())}); {len(VALIDATORS)} "
              f"validators running {args.periods} period(s) of {args.period_blocks} blocks of "
              f"{args.block_time:g} s (windows of "
              f"{window_blocks(args.period_blocks) * args.block_time:g} s)", flush=True)
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
        output = vprocs[first[0]].stdout
        assert output is not None  # started with stdout=PIPE
        with open(logs / f"{first[0]}.log", "w") as log_file:  # also kept, like the others'
            for line in output:
                print(line, end="", flush=True)
                log_file.write(line)
        for name, vproc in vprocs.items():
            code = vproc.wait(timeout=120)
            if code != 0:
                print(f"localnet: {name} exited with {code}; see {logs}", file=sys.stderr)
                return 1
        dead = [n for (n, _), p in zip(miners, procs) if p.poll() is not None]
        if dead:
            print(f"localnet: miner(s) {', '.join(dead)} died; see {logs}", file=sys.stderr)
            return 1
        credited(base / f"{first[0]}.sqlite3", miners, hotkeys)
        return report(chain, [VALIDATORS[0][0]] + [f"miner-{n}" for n, _ in miners]
                      + [v for v, _ in VALIDATORS[1:]])
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


def credited(db: Path, miners: list[tuple[str, Path]], hotkeys: dict[str, str]) -> None:
    """Per miner and task: what the largest validator credited of the declaration after its
    last scored period, and, when less, why (its feedback's notes: the windows, how the
    requests ended)."""
    store = open_store(str(db))
    try:
        print("localnet: credited by the largest validator after its last scored period "
              "(capacity per period):", flush=True)
        for name, config in miners:
            answer = feedback_for(store, "localnet", hotkeys[name])
            if not answer.tasks:
                print(f"  miner-{name} ({config.name}): not scored (no declaration reached the "
                      f"validator)")
            for t in answer.tasks:
                verdict = ("in full" if t.credited >= t.declared else
                           f"LESS THAN DECLARED ({t.credited / t.declared:.0%})"
                           if t.declared else "nothing declared")
                print(f"  miner-{name} {t.task:<28} credited {t.credited:g} of declared "
                      f"{t.declared:g}: {verdict}; reliability {t.reliability:.2f}, quality "
                      f"{t.quality:.2f}, effective {t.effective:g}")
                for note in t.notes if t.credited < t.declared or t.effective == 0 else ():
                    print(f"      {note}")
                if t.effective == 0 and t.credited >= t.declared > 0:
                    print(f"      effective 0: {zero_reason(t)}")
            if any(t.credited < t.declared for t in answer.tasks):
                print(f"      {why_less(config, len(miners))}")
    finally:
        store.close()


def why_less(config: Path, miners: int) -> str:
    """What holds a local miner back on this machine: its cores, shared with every neuron, and
    its concurrency group, whose tasks are all asked at once in a window."""
    import os

    from core.miner.config import load_config

    cores = os.cpu_count() or 1
    out = (f"(on this machine {miners} miners and {len(VALIDATORS)} validators share {cores} "
           f"cores: a request that waits for them past its time limit, twice its expected "
           f"time plus 2 s, is a timeout, and a task asked one request in a window that times "
           f"out scores 0 for that window")
    try:
        loaded = load_config(config)
    except Exception:  # the miner ran it: a file it read cannot fail here but in a race
        return out + ")"
    shared: dict[str, list[str]] = {}
    for task, entry in loaded.tasks.items():
        if entry.group is not None:
            shared.setdefault(entry.group, []).append(task)
    for group, tasks in shared.items():
        if len(tasks) > 1:
            out += (f"; its {len(tasks)} tasks in group {group!r} share "
                    f"{loaded.groups[group].concurrency} at once, and a window asks them all "
                    f"at the same time")
    return out + ")"


def zero_reason(t) -> str:
    """Why a task credited in full weighs nothing."""
    if t.reliability == 0:
        return "reliability 0: nothing it was asked in the windows was served"
    if t.quality == 0:
        return ("quality 0: every checked answer failed its check or was answered past twice "
                "the task's expected time")
    return "no window measured it yet"


def report(chain: LocalSubnet, names: list[str]) -> int:
    """Print the weights each validator set, as the chain recorded them (clipped to the
    subnet's limit, quantised to u16), then each neuron's incentive and dividends after the
    next epoch's Yuma, read through bittensor as from a node; non-zero when no weights were
    set."""
    log = chain.weights_log()
    if not log:
        print("localnet: no weights were set", file=sys.stderr)
        return 1
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

    async with bt.Client("local", substrate=FolderSubstrate(chain.folder)  # type: ignore[arg-type]
                         ) as client:
        return await client.subnets.metagraph(chain.netuid, commitments=False)


if __name__ == "__main__":
    sys.exit(main())
