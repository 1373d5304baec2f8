"""Run a Subnet 19 miner: serve the tasks declared in a capacity YAML over signed HTTP.

    python neurons/miner.py --config miner_config/default.yml --wallet-name miner --network finney
    python neurons/miner.py --config miner_config/default.yml --check-config
    python neurons/miner.py --wallet-name miner --feedback
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
from pathlib import Path

from core import collector
from core.chain_time import BLOCK_SECONDS
from core.cli import (
    CliError,
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
from core.miner.config import (
    OVER_FACTOR,
    ConfigError,
    group_load,
    key_lines,
    load_config,
    missing_models,
    task_load,
)
from core.miner.settings import MinerSettings
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
                   help="validate --config without loading a model (keys, values, groups, "
                        "whether its back ends can load here, the declared load against the "
                        "task table's speed), print the effective declaration and one verdict, "
                        "and exit (0 if usable, 1 if not)")
    p.add_argument("--allow-over", action="store_true",
                   help=f"with --check-config: accept a group (or a task outside groups) that "
                        f"declares more than {OVER_FACTOR:g}x what its concurrency serves at "
                        f"the task table's expected time per request (a setup calibrate "
                        f"measured faster than the table); refused by default")
    p.add_argument("--calibrate", action="store_true",
                   help="measure what each task in --config serves at its expected speed (1, 2, "
                        "4, ... requests at once, up to its concurrency), propose a declaration "
                        "(--margin of it), print it or write it to --calibrate-out, and exit")
    p.add_argument("--margin", type=float, default=0.8,
                   help="with --calibrate: the share of the measured rate to declare")
    p.add_argument("--calibrate-seconds", type=float, default=30.0,
                   help="with --calibrate: seconds each concurrency is measured for (a request "
                        "still running at the end is waited for)")
    p.add_argument("--calibrate-out", metavar="FILE",
                   help="with --calibrate: write the proposed capacity YAML here, after each "
                        "task (marked PARTIAL until all are measured) and on SIGTERM or Ctrl-C "
                        "with what was measured so far (default: print it at the end)")
    p.add_argument("--image-size", type=int, default=None,
                   help="with --calibrate: width and height of image requests in pixels "
                        "(default: what the setup's validators send: 1024, their default, for "
                        "the diffusers back end and workers by URL; 64, the local subnet's, for "
                        "the cpu back end's tiny models)")
    p.add_argument("--block-time", type=float, default=BLOCK_SECONDS,
                   help="with --calibrate and --check-config: seconds per block of the chain "
                        "the miner serves (the protocol's 12); a period is --period-blocks x "
                        "--block-time seconds, and the proposal and the over-declaration check "
                        "are per period")
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
    p.add_argument("--sync-interval", type=float, default=MinerSettings.sync_interval_s,
                   help="seconds between metagraph syncs (stakes, permits)")
    p.add_argument("--health-interval", type=float, default=MinerSettings.health_interval_s,
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
    """Validate --config without loading a model, print the effective declaration, and end
    with one verdict line that agrees with the exit status: 0 when the file is valid, its back
    ends can load here and no group declares more than ``OVER_FACTOR`` times what it serves at
    the task table's speed (or --allow-over), else 1."""
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    path = args.config
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
    over = over_declared(config, path, args.period_blocks * args.block_time, args.allow_over)
    from core.backends import backend_problems

    problems = backend_problems(local_backends(config)) + missing_models(config, path)
    for problem in problems:
        print(f"  error: {problem}")
    print(verdict(path, over, problems, args.allow_over))
    return 1 if over or problems else 0


def over_declared(config, path: str, period_s: float, allow_over: bool) -> list[str]:
    """Print a line per group (and task outside groups) declaring more than its concurrency
    serves at the task table's expected time; return the keys beyond ``OVER_FACTOR`` that
    make the file unusable (none with ``allow_over``)."""
    lines = key_lines(path)
    loads = [(("groups", g), load) for g, load in group_load(config, period_s).items()]
    loads += [(("tasks", t), load) for t, load in task_load(config, period_s).items()]
    over = []
    for key, load in loads:
        if load <= 1:
            continue
        name = ".".join(key)
        what = ("its tasks together declare" if key[0] == "groups" else "it declares")
        text = (f"{path}: {lines.get(key, 'line ?')}: {name}: {what} {load:.1f}x what its "
                f"concurrency serves in a {period_s / 60:g}-minute period at the task table's "
                f"expected time per request (core/tasks.py); an audit window tests every task "
                f"at once and credits what is served (docs/protocol.md §2)")
        if load > OVER_FACTOR and not allow_over:
            over.append(name)
            print(f"  error: {text}; beyond {OVER_FACTOR:g}x is refused: declare less, raise "
                  f"the concurrency if the GPU serves more at once, or pass --allow-over when "
                  f"calibrate measured it served")
        else:
            print(f"  warning: {text}")
    return over


def port_free(host: str, port: int) -> None:
    """CliError when ``host:port`` cannot be listened on (taken, or not this host's address),
    found before the models load rather than after."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as e:
            raise CliError(f"--host {host} --port {port}: cannot listen there: "
                           f"{e.strerror}") from None


def local_backends(config) -> list[str]:
    """The back ends this process loads: every task's but those served only by url workers."""
    return [e.backend for e in config.tasks.values()
            if e.workers is None or any(w.device is not None for w in e.workers)]


def verdict(path: str, over: list[str], problems: list[str], allow_over: bool) -> str:
    """check-config's last line: usable or not, what was checked and what cannot be without
    loading the models."""
    load = ("declared load (over it accepted by --allow-over)" if allow_over
            else f"declared load within {OVER_FACTOR:g}x of the task table's speed")
    scope = (f"checked: keys and values, groups, the back ends' packages and GPU here, {load}; "
             f"not checked: that the models load and how fast they serve (calibrate measures "
             f"it)")
    if not over and not problems:
        return f"{path}: OK ({scope})"
    reasons = []
    if over:
        reasons.append(f"{', '.join(over)} declare{'s' if len(over) == 1 else ''} more than "
                       f"{OVER_FACTOR:g}x what {'it serves' if len(over) == 1 else 'they serve'}")
    if problems:
        reasons.append(f"{len(problems)} thing{'s' if len(problems) > 1 else ''} the back "
                       f"ends need {'are' if len(problems) > 1 else 'is'} not on this machine")
    valid = "" if over else "the file is valid, but "
    return f"{path}: NOT USABLE: {valid}{'; '.join(reasons)}: see the errors above ({scope})"


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
    """Measure, propose, print or write; 1 when a task met its expected time at no concurrency
    or the run was stopped (SIGTERM, Ctrl-C: what was measured is written, marked PARTIAL)."""
    import asyncio
    import signal

    from core.miner import calibrate as calibration
    from core.miner.pool import build_pools

    config = load_config(args.config)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    period_s = args.period_blocks * args.block_time
    out = Path(args.calibrate_out) if args.calibrate_out else None
    stopped: list[str] = []

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def write(results, why: str | None = None) -> None:
        if out is not None:
            calibration.write_atomic(out, calibration.proposed_yaml(
                config, results, args.margin, period_s, why))

    say(f"calibrating {', '.join(config.tasks)}: each concurrency for {args.calibrate_seconds:g} "
        f"s; a period is {args.period_blocks} blocks x {args.block_time:g} s = {period_s:g} s "
        f"(--period-blocks, --block-time)")
    pools = build_pools(config)

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def halt(sig: signal.Signals) -> None:
            stopped.append(sig.name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, halt, sig)
        try:
            await asyncio.gather(*(pool.check() for pool in pools.values()))
            results = await calibration.calibrate(
                config, pools, seconds=args.calibrate_seconds, margin=args.margin,
                period_seconds=period_s, image_size=args.image_size, progress=say, stop=stop,
                measured=write)
            if stopped:  # written before anything else can stop the process
                write(results, f"stopped by {stopped[0]}")
            return results
        finally:
            await asyncio.gather(*(pool.close() for pool in pools.values()))

    results = asyncio.run(run())
    for r in results:
        best = r.best
        shared = f", shared by {r.shared_by} tasks in its group" if r.shared_by > 1 else ""
        size = f" ({r.image_size} px)" if r.image_size else ""
        cut = " (cut short by the stop)" if r.partial else ""
        print(f"{r.task}{size}: " + (f"served {best.units_per_s:.1f} {TASKS[r.task].unit.value}"
                                     f"/s at {best.concurrency} at once{shared}; propose "
                                     f"{r.proposed:g} a period{cut}" if best else
                                     f"too slow at every concurrency{cut}: propose 0"))
    if stopped:
        left = [t for t in config.tasks if t not in {r.task for r in results}]
        print(f"stopped by {stopped[0]}" + (f"; not measured: {', '.join(left)}" if left else ""))
    if out is not None:
        print(f"wrote {out}" + (" (PARTIAL)" if stopped else ""))
    else:
        print(calibration.proposed_yaml(config, results, args.margin, period_s,
                                        f"stopped by {stopped[0]}" if stopped else None))
    return 0 if not stopped and all(r.best for r in results) else 1


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
        running = (f"; period {answer.running} running, not scored yet"
                   if answer.running is not None else "")
        scored = answer.period if answer.period is not None else "- (none closed yet)"
        print(f"scored period {scored}{running}")
        for t in answer.tasks:
            windows = " ".join(f"{w.score:.2f}" for w in t.windows) or "none yet"
            print(f"  {t.task:<28} declared {t.declared:g}  credited {t.credited:g}  "
                  f"reliability {t.reliability:.3f}  quality {t.quality:.3f}  "
                  f"effective {t.effective:g}")
            print(f"    window scores (oldest first): {windows}")
            print(f"    requests in scored period {answer.period}: "
                  f"{', '.join(f'{v} {k}' for k, v in sorted(t.outcomes.items())) or '-'}")
            if answer.running is not None:
                print(f"    requests in running period {answer.running} so far: "
                      f"{', '.join(f'{v} {k}' for k, v in sorted(t.running.items())) or '-'}")
            for note in t.notes:
                print(f"    note: {note}")
        if not answer.tasks:
            print("  no contender of this hotkey in its store yet")
    if not answers:
        print("no validator has announced an endpoint")
    return 0 if any(not isinstance(a, str) for _, _, a in answers) else 1


def serve(args) -> int:
    # everything the flags and files can get wrong is found before a model loads (minutes)
    config = load_config(args.config)
    from core.backends import backend_problems
    from core.miner.latch import DeclarationLatch
    from core.transport.auth import Gate
    from core.transport.nonces import SqliteNonceStore

    if problem := next(iter(missing_models(config, args.config)), None):
        raise CliError(problem)
    if problems := backend_problems(local_backends(config)):
        raise CliError(f"{args.config}: {'; '.join(problems)}")
    wallet, hotkey = load_wallet(args)
    announce = None if args.no_announce else (wallet, announced_host(args), args.port)
    port_free(args.host, args.port)
    chain = chain_of(args)
    state_dir = Path(args.state_dir).expanduser()
    try:
        nonces = SqliteNonceStore(state_dir / f"nonces-{hotkey.ss58_address}.sqlite3")
    except (OSError, sqlite3.Error) as e:
        raise CliError(f"--state-dir {args.state_dir}: cannot keep the miner's state there: "
                       f"{e}") from None
    latch = DeclarationLatch(hotkey, chain.netuid, state_dir)
    import uvicorn

    from core.miner.app import MinerState, build_app
    from core.miner.limits import Slots
    from core.miner.pool import build_pools

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    pools = build_pools(config)
    slots = Slots({g: e.concurrency for g, e in config.groups.items()},
                  {t: e.group for t, e in config.tasks.items() if e.workers is None},
                  args.queue_wait, args.max_waiting,
                  pooled={t: pools[t].concurrency() for t, e in config.tasks.items() if e.workers})
    state = MinerState(hotkey=hotkey.ss58_address, pools=pools, chain=chain,
                       gate=Gate(hotkey.ss58_address, min_stake=args.min_stake,
                                 nonce_store=nonces),
                       period_blocks=args.period_blocks, slots=slots, latch=latch)
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
