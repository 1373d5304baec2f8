"""Run a Subnet 19 miner: serve the tasks declared in a capacity YAML over signed HTTP.

    python neurons/miner.py --config miner_config/default.yml --wallet-name miner --network finney
    python neurons/miner.py --config miner_config/default.yml --check-config
    python neurons/miner.py --wallet-name miner --feedback
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core import collector
from core.cli import (
    add_common_args,
    add_endpoint_args,
    add_server_args,
    announced_host,
    chain_of,
    guarded,
    load_wallet,
    parser,
    server_options,
    setup_logging,
)
from core.miner.config import ConfigError, group_load, load_config, task_load
from core.tasks import TASKS

log = logging.getLogger("miner")


ACTIONS = ("check-config", "calibrate", "feedback")  # also as a first word: `miner.py feedback`


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("Subnet 19 miner: advertises the capacities declared in --config and serves "
               "those tasks to validators over hotkey-signed HTTP. Its one-off actions may be "
               f"named as a first word, without the dashes: {', '.join(ACTIONS)}.")
    p.add_argument("--config", default="miner_config/default.yml",
                   help="capacity YAML: per task its capacity per period, back end, group, model")
    p.add_argument("--check-config", action="store_true",
                   help="validate --config and the back ends' settings, print the effective "
                        "declaration, and exit (0 if usable, 1 if not)")
    p.add_argument("--calibrate", action="store_true",
                   help="measure what each task in --config serves at its expected speed (1, 2, "
                        "4, ... requests at once, up to its concurrency), propose a declaration "
                        "(--margin of it), print it or write it to --calibrate-out, and exit")
    p.add_argument("--margin", type=float, default=0.8,
                   help="with --calibrate: the share of the measured rate to declare")
    p.add_argument("--calibrate-seconds", type=float, default=30.0,
                   help="with --calibrate: seconds each concurrency is measured for")
    p.add_argument("--calibrate-out", metavar="FILE",
                   help="with --calibrate: write the proposed capacity YAML here (default: print)")
    p.add_argument("--image-size", type=int, default=1024,
                   help="with --calibrate: width and height of image requests (validators "
                        "send --image-size, 1024 by default)")
    p.add_argument("--feedback", action="store_true",
                   help="ask every validator that announced an endpoint what it measured of "
                        "this hotkey (per task: credited, reliability, quality, windows, how "
                        "requests ended, notes), print it, and exit")
    add_common_args(p)
    add_endpoint_args(p, 8091, "the synapses validators call")
    p.add_argument("--min-stake", type=float, default=1000.0,
                   help="minimum stake of a validator this miner answers (others get 403)")
    p.add_argument("--queue-wait", type=float, default=30.0,
                   help="seconds a request may wait for a free slot in its concurrency group "
                        "before it is answered 429")
    p.add_argument("--max-waiting", type=int, default=64,
                   help="requests queued per concurrency group, served in arrival order; when "
                        "full, a newcomer is answered 429")
    p.add_argument("--state-dir", default="~/.sn19",
                   help="folder for the miner's own state: the nonces it accepted, so requests "
                        "replayed across a restart are still refused, and the declarations it "
                        "signed, so a restart never signs a second one for a period")
    p.add_argument("--max-body", type=int, default=None,
                   help="largest request body in bytes (413 beyond; default: room for an "
                        "inpaint request's two largest images)")
    add_server_args(p)
    p.add_argument("--sync-interval", type=float, default=12.0,
                   help="seconds between metagraph syncs (stakes, permits)")
    p.add_argument("--health-interval", type=float, default=5.0,
                   help="seconds between health checks of the workers listed in --config; a "
                        "worker that fails one is taken out (and out of the declaration) until "
                        "it answers again")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="CPU threads per engine for the cpu back end (0: torch's default)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ACTIONS:
        argv[0] = f"--{argv[0]}"
    return p.parse_args(argv)


def check_config(args) -> int:
    """Print the effective declaration and any warnings; 0 if the file is usable."""
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    print(f"{'task':<30} {'declared':>10} {'clamped':>10}  unit    backend    group")
    effective = config.declaration()
    for task_id, entry in config.tasks.items():
        task = TASKS[task_id]
        backend = ("/".join(sorted({"url" if w.url else entry.backend for w in entry.workers}))
                   if entry.workers else entry.backend)
        print(f"{task_id:<30} {entry.total():>10g} {effective.get(task_id, 0):>10g}  "
              f"{task.unit.value:<7} {backend:<10} {entry.group or '-'}")
        for worker in entry.workers or ():
            print(f"  worker {worker.name}: capacity {worker.capacity:g}, "
                  f"concurrency {worker.concurrency}")
        if entry.total() > task.max_capacity:
            print(f"  warning: {task_id} declares more than the maximum {task.max_capacity}; "
                  f"validators clamp it")
        if 0 < entry.total() < 1:
            print(f"  warning: {task_id} declares under one unit; validators count it as 0")
    from core.backends import backend_problems

    problems = backend_problems(e.backend for e in config.tasks.values())
    for problem in problems:
        print(f"  error: {problem}")
    period_s = args.period_blocks * 12.0
    for group, load in group_load(config, period_s).items():
        if load > 1:
            print(f"  warning: group {group!r} declares {load:.1f}x what its GPU can serve in a "
                  f"{period_s / 60:g}-minute period at production speed; tasks sharing a GPU "
                  f"must together declare what it serves: audit windows test them all at "
                  f"once and credit what they serve (docs/protocol.md §2)")
    for task_id, load in task_load(config, period_s).items():
        if load > 1:
            print(f"  warning: {task_id} declares {load:.1f}x what its concurrency serves in a "
                  f"{period_s / 60:g}-minute period at production speed; an audit window "
                  f"credits what it serves (docs/protocol.md §2)")
    return 1 if problems else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    if args.check_config:
        return check_config(args)
    if args.feedback:
        return guarded(feedback, args, ConfigError)
    if args.calibrate:
        return guarded(calibrate, args, ConfigError)
    return guarded(serve, args, ConfigError)


def calibrate(args) -> int:
    """Measure, propose, print or write; 1 when a task met its expected time at no concurrency."""
    import asyncio

    from core.miner import calibrate as calibration
    from core.miner.pool import build_pools

    config = load_config(args.config)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    pools = build_pools(config)
    period_s = args.period_blocks * 12.0

    async def run():
        try:
            await asyncio.gather(*(pool.check() for pool in pools.values()))
            return await calibration.calibrate(
                config, pools, seconds=args.calibrate_seconds, margin=args.margin,
                period_seconds=period_s, image_size=args.image_size,
                progress=lambda line: print(line, file=sys.stderr, flush=True))
        finally:
            await asyncio.gather(*(pool.close() for pool in pools.values()))

    results = asyncio.run(run())
    for r in results:
        best = r.best
        shared = f", shared by {r.shared_by} tasks in its group" if r.shared_by > 1 else ""
        print(f"{r.task}: " + (f"served {best.units_per_s:.1f} {TASKS[r.task].unit.value}/s at "
                               f"{best.concurrency} at once{shared}; propose {r.proposed:g} a "
                               f"period" if best else "too slow at every concurrency: propose 0"))
    text = calibration.proposed_yaml(config, results, args.margin)
    if args.calibrate_out:
        Path(args.calibrate_out).write_text(text)
        print(f"wrote {args.calibrate_out}")
    else:
        print(text)
    return 0 if all(r.best for r in results) else 1


def feedback(args) -> int:
    """Each validator's feedback for this hotkey; 1 when none answered."""
    import asyncio

    from core.feedback import FEEDBACK_PATH, MAX_FEEDBACK_BYTES, Feedback, FeedbackRequest
    from core.transport.client import SignedClient

    _, hotkey = load_wallet(args)

    async def ask() -> list[tuple[int, str, Feedback | str]]:
        chain = chain_of(args)
        try:
            metagraph = await chain.metagraph()
        finally:
            await chain.close()
        client = SignedClient(hotkey)
        validators = [n for n in metagraph.neurons if n.validator_permit and n.endpoint]

        async def one(n) -> tuple[int, str, Feedback | str]:
            try:
                reply = await client.post(n.endpoint, FEEDBACK_PATH, n.hotkey, FeedbackRequest(),
                                          15.0, MAX_FEEDBACK_BYTES)
                if reply.status != 200:
                    return n.uid, n.hotkey, f"answered {reply.status}: {reply.body[:200]!r}"
                return n.uid, n.hotkey, Feedback.model_validate_json(reply.body)
            except Exception as e:  # one validator away must not hide the others
                return n.uid, n.hotkey, f"{type(e).__name__}: {e}"

        try:
            return await asyncio.gather(*(one(n) for n in validators))
        finally:
            await client.close()

    answers = asyncio.run(ask())
    for uid, validator, answer in answers:
        print(f"validator uid {uid} ({validator[:10]}...):", end=" ")
        if isinstance(answer, str):
            print(answer)
            continue
        print(f"period {answer.period}")
        for t in answer.tasks:
            windows = " ".join(f"{w.score:.2f}" for w in t.windows) or "none yet"
            print(f"  {t.task:<28} declared {t.declared:g}  credited {t.credited:g}  "
                  f"reliability {t.reliability:.3f}  quality {t.quality:.3f}  "
                  f"effective {t.effective:g}")
            print(f"    window scores (oldest first): {windows}")
            print(f"    requests: {', '.join(f'{v} {k}' for k, v in t.outcomes.items()) or '-'}")
            for note in t.notes:
                print(f"    note: {note}")
        if not answer.tasks:
            print("  no contender of this hotkey in its store yet")
    if not answers:
        print("no validator has announced an endpoint")
    return 0 if any(not isinstance(a, str) for _, _, a in answers) else 1


def serve(args) -> int:
    config = load_config(args.config)
    import uvicorn

    from core.miner.app import MinerSettings, MinerState, build_app
    from core.miner.latch import DeclarationLatch
    from core.miner.limits import Slots
    from core.miner.pool import build_pools
    from core.transport.auth import Gate
    from core.transport.nonces import SqliteNonceStore

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    wallet, hotkey = load_wallet(args)
    announce = None if args.no_announce else (wallet, announced_host(args), args.port)
    chain = chain_of(args)
    pools = build_pools(config)
    slots = Slots({g: e.concurrency for g, e in config.groups.items()},
                  {t: e.group for t, e in config.tasks.items() if e.workers is None},
                  args.queue_wait, args.max_waiting,
                  pooled={t: pools[t].concurrency() for t, e in config.tasks.items() if e.workers})
    state = MinerState(hotkey=hotkey.ss58_address, pools=pools, chain=chain,
                       gate=Gate(hotkey.ss58_address, min_stake=args.min_stake,
                                 nonce_store=SqliteNonceStore(Path(args.state_dir) /
                                                              f"nonces-{hotkey.ss58_address}.sqlite3")),
                       period_blocks=args.period_blocks, slots=slots,
                       latch=DeclarationLatch(hotkey, chain.netuid, Path(args.state_dir)))
    log.info("serving %s as %s on %s:%d", ", ".join(pools), hotkey.ss58_address,
             args.host, args.port)
    limits = {"max_body": args.max_body} if args.max_body else {}
    settings = MinerSettings(sync_interval_s=args.sync_interval,
                             health_interval_s=args.health_interval,
                             body_timeout_s=args.body_timeout, public_metrics=args.public_metrics,
                             **limits)
    collector.settle()  # the engines are loaded: out of the collector's way
    uvicorn.run(build_app(state, settings, announce=announce),
                host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30,
                **server_options(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
