"""Run a Subnet 19 validator: each period, ask every miner for its capacities, test its stake
share of them with synthetic requests, score against the declaration, and set weights.

    python neurons/validator.py --wallet-name validator --network finney
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from core.cli import (
    CliError,
    HelpFormatter,
    add_common_args,
    add_endpoint_args,
    add_server_args,
    announced_host,
    chain_of,
    fraction,
    guarded,
    load_wallet,
    parser,
    run_loop,
    server_options,
    setup_logging,
)
from core.validator.settings import API_CONCURRENCY, DEFAULTS


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("Subnet 19 validator: scores miners against their declared capacities and sets "
               "weights on chain.")
    add_common_args(p)
    p.add_argument("--db", default=None,
                   help="where records and scores are kept across restarts: a SQLite file, or "
                        "a PostgreSQL DSN (postgresql://user@host/db) (default: the SN19_DB "
                        "environment variable, which keeps a password out of the process list, "
                        "else ~/.sn19/validator.sqlite3)")
    p.add_argument("--status", action="store_true",
                   help="print the latest period from --db (its audit windows; per contender: "
                        "declared, budget, requests, what the windows asked and got, score, "
                        "reliability, quality, demonstrated, credited, effective; the weights "
                        "set), exit")
    p.add_argument("--uid", type=int, action="append",
                   help="with --status: only this uid's contenders (repeatable)")
    p.add_argument("--hotkey", action="append",
                   help="with --status: only this hotkey's contenders (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="with --status: print it as JSON (windows, contenders with their last "
                        "windows, weights)")
    p.add_argument("--history", action="store_true",
                   help="with --status: also each contender's last windows (scores, and the "
                        "declared x served the mean is taken of)")
    p.add_argument("--png", metavar="FILE",
                   help="with --status: also draw the period as a PNG (needs matplotlib)")
    p.add_argument("--capacity-timeout", type=float, default=DEFAULTS.capacity_timeout_s,
                   help="seconds to wait for each miner's capacity synapse")
    p.add_argument("--max-concurrency", type=int, default=DEFAULTS.max_concurrency,
                   help="synthetic requests in flight at once in this process, all miners "
                        "together (a window at stake share 0.05 keeps about 10,000 in flight "
                        "when every miner declares the caps)")
    p.add_argument("--max-per-miner", type=int, default=DEFAULTS.max_per_miner,
                   help="synthetic requests in flight at once to one miner beyond twice what "
                        "its window keeps in flight at the expected speed (a slow miner holds "
                        "no more slots than this)")
    p.add_argument("--background", type=fraction, default=DEFAULTS.background,
                   help="share of each contender's budget sent outside audit windows, spread "
                        "over the period (liveness and quality checks; docs/protocol.md §3.4)")
    p.add_argument("--image-size", type=int, default=DEFAULTS.image_size,
                   help="width and height of synthetic image requests (pixels, multiple of 8)")
    p.add_argument("--retention-periods", type=int, default=DEFAULTS.retention_periods,
                   help="periods of request records kept before pruning")
    p.add_argument("--check", choices=("gpu", "cpu", "off"), default=DEFAULTS.check,
                   help="quality checking: recompute a sample of results with the tasks' "
                        "production models on a GPU (gpu), with the tiny CPU models of the local "
                        "subnet (cpu), or not at all (off: quality is the speed factor alone)")
    p.add_argument("--tokenizers", choices=("production", "tiny"), default=None,
                   help="tokenizers the validator counts chat prompts with (it never takes a "
                        "miner's count): the tasks' production tokenizers (from the Hugging Face "
                        "cache or hub), or the local subnet's tiny one (default: tiny with "
                        "--check cpu, else production)")
    p.add_argument("--check-rate", type=fraction, default=DEFAULTS.check_rate,
                   help="share of results checked beyond each contender's first of the period")
    p.add_argument("--check-queue", type=int, default=DEFAULTS.check_queue,
                   help="results waiting for a check; when full the oldest is dropped, counted")
    add_endpoint_args(p, 8092, "window reports for the other validators, /health, /metrics; "
                               "--port 0: none, and this validator's reports are not shared")
    p.add_argument("--no-share-reports", action="store_true",
                   help="neither serve this validator's window reports nor fetch the others': "
                        "score every window from its own view alone (docs/protocol.md §9; "
                        "validators that share agree on a miner that serves some of them only)")
    p.add_argument("--report-timeout", type=float, default=DEFAULTS.report_timeout_s,
                   help="seconds to wait for another validator's window report")
    p.add_argument("--api-port", type=int, default=0,
                   help="serve the OpenAI-compatible API for organic traffic on this port, in "
                        "this process (0: no API)")
    p.add_argument("--api-host", default="0.0.0.0", help="address the API listens on")
    p.add_argument("--api-max-body", type=int, default=16 * 2**20,
                   help="largest API request body in bytes (larger: 413)")
    p.add_argument("--api-concurrency", type=int, default=API_CONCURRENCY,
                   help="API requests served at once (a stream holds its place to its end); as "
                        "many more wait up to 2 s, then 503 with Retry-After")
    add_server_args(p)  # for the API
    # a safety bound well above the apps' own request limits (core/transport/server.py)
    p.set_defaults(max_connections=4096)
    p.add_argument("--leader-poll", type=float, default=5.0,
                   help="with several processes on one --db (API replicas), only one runs the "
                        "period loop; the others try to take it over every this many seconds")
    p.add_argument("--periods", type=int, default=None,
                   help="stop after this many periods (default: run until stopped)")
    sub = p.add_subparsers(dest="command", title="commands")
    key = sub.add_parser("api-key", help="create, revoke or list the API's keys in --db, then "
                                         "exit (api-key --help)", formatter_class=HelpFormatter,
                         allow_abbrev=False)
    key.add_argument("action", choices=("create", "revoke", "list"),
                     help="create a key (shown once, only its hash is kept), revoke one, or list "
                          "them")
    key.add_argument("name", nargs="?", help="the key's name (create, revoke)")
    key.add_argument("--per-minute", type=int, default=60,
                     help="requests a minute the key may make (create)")
    args = p.parse_args(argv)
    args.db = args.db or os.environ.get("SN19_DB") or "~/.sn19/validator.sqlite3"
    return args


def api_key(store, args) -> int:
    """The api-key subcommand: keys are shown once, at creation; only their hash is stored."""
    from core.validator import keys

    if args.action == "list":
        for k in keys.listing(store):
            state = "revoked" if k.revoked_at else "live"
            print(f"{k.name:<24} {k.prefix}...  {k.per_minute:>5}/min  {state}")
        return 0
    if not args.name:
        raise CliError(f"api-key {args.action} needs a NAME")
    if args.action == "create":
        try:
            print(keys.create(store, args.name, args.per_minute))
        except ValueError as e:
            raise CliError(str(e)) from None
        return 0
    if not keys.revoke(store, args.name):
        raise CliError(f"no live key named {args.name!r}")
    print(f"revoked {args.name}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    from core.storage import StorageError

    return guarded(run, args, StorageError)


def run(args) -> int:
    from core.storage import open_store
    from core.validator.counting import CountingError
    from core.validator.loop import Validator
    from core.validator.settings import Settings
    from core.validator.status import status

    reading = args.status or (args.command == "api-key" and args.action != "create")
    if reading and "://" not in args.db and not Path(args.db).expanduser().exists():
        raise CliError(f"--db {args.db}: no such database (a validator makes it when it first "
                       f"runs; check the path)")
    store = open_store(args.db)
    if args.command == "api-key":
        try:
            return api_key(store, args)
        finally:
            store.close()
    if args.status:
        from core.validator.status import UnknownContender

        try:
            try:
                text = status(store, args.period_blocks, uids=args.uid or (),
                              hotkeys=args.hotkey or (), as_json=args.json, history=args.history)
            except UnknownContender as e:
                raise CliError(f"--status: {e}") from None
            print(text)
            if args.png:
                from core.validator.picture import NoPlotting, period_png
                from core.validator.status import snapshot

                snap = snapshot(store, args.period_blocks, args.uid or (), args.hotkey or ())
                if snap is None:
                    raise CliError("no period recorded yet: nothing to draw")
                try:
                    print(f"wrote {period_png(snap, Path(args.png))}", file=sys.stderr)
                except NoPlotting as e:
                    raise CliError(str(e)) from None
        finally:
            store.close()
        return 0
    wallet, _ = load_wallet(args)
    if args.port and not args.no_announce:
        announced_host(args)  # refused before the tokenizers and models load, or anything serves
    if args.check == "gpu":
        import importlib.util

        cuda = (importlib.util.find_spec("torch") is not None
                and __import__("torch").cuda.is_available())
        if not cuda:
            raise CliError("--check gpu recomputes results with the production models and needs "
                           "a CUDA GPU with the gpu extra; use --check cpu on a local subnet or "
                           "--check off (quality from speed alone)")
    settings = Settings(period_blocks=args.period_blocks, capacity_timeout_s=args.capacity_timeout,
                        max_concurrency=args.max_concurrency, max_per_miner=args.max_per_miner,
                        image_size=args.image_size, background=args.background,
                        tokenizers=args.tokenizers or ("tiny" if args.check == "cpu"
                                                       else "production"),
                        retention_periods=args.retention_periods, check=args.check,
                        check_rate=args.check_rate, check_queue=args.check_queue,
                        share_reports=not args.no_share_reports,
                        report_timeout_s=args.report_timeout)
    try:
        validator = Validator(wallet, chain_of(args), store, settings)
    except CountingError as e:
        raise CliError(str(e)) from None
    from core.transport.server import raise_open_files_limit

    files = raise_open_files_limit()  # a connection per request in flight, and the API's
    if files < 2 * args.max_concurrency:
        logging.getLogger("validator").warning(
            "this process may open %d files, under twice --max-concurrency %d: a full window may "
            "run out of connections (raise the hard limit: ulimit -Hn, or LimitNOFILE= in its "
            "systemd unit)", files, args.max_concurrency)
    try:
        run_loop(serve(validator, args))
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0


async def serve(validator, args) -> None:
    """The peer endpoint (window reports; announced on chain unless --no-announce), the
    organic API when --api-port is set, and the period loop when this process holds the
    database's lease (else it serves the plan of the process that does, and takes over when that
    one dies), until --periods are done or SIGTERM/SIGINT: then the loop is cancelled (every
    record is already committed; the period resumes at the next start) and the servers finish
    their requests."""
    import uvicorn

    from core.chain.announce import keep_announced
    from core.validator.peer import build_peer_app
    from core.validator.replica import lead_or_follow

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # this process's handlers above stop them all
            yield

    apps = []
    if args.port:
        apps.append((build_peer_app(validator.peer_services(), body_timeout_s=args.body_timeout,
                                    public_metrics=args.public_metrics), args.host, args.port))
    if args.api_port:
        from core.validator.api import DEFAULT_SLOTS, build_api

        slots = dataclasses.replace(DEFAULT_SLOTS, concurrency=args.api_concurrency,
                                    queue=args.api_concurrency)
        apps.append((build_api(validator.api_services(), max_body=args.api_max_body,
                               body_timeout_s=args.body_timeout, slots=slots),
                     args.api_host, args.api_port))
    servers = [Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                     timeout_graceful_shutdown=30, **server_options(args)))
               for app, host, port in apps]
    serving = [asyncio.create_task(server.serve()) for server in servers]
    announcing = None  # in the background: a refusal never stops the validator
    if args.port and not args.no_announce:
        announcing = asyncio.create_task(keep_announced(validator.chain, validator.wallet,
                                                        announced_host(args), args.port))
    work = asyncio.create_task(lead_or_follow(validator, args.periods, args.leader_poll))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    while stop.is_set() and not work.done():
        # again until it ends: Python 3.11's wait_for can swallow a cancel that lands as its
        # call completes (2 of 5 stops right after start went on running the loop)
        work.cancel()
        await asyncio.wait({work}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await work
    stopping.cancel()
    if announcing is not None:
        announcing.cancel()
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*serving)
    await validator.close()
    logging.getLogger("validator").info("validator stopped%s",
                                        " by signal" if stop.is_set() else "")


if __name__ == "__main__":
    sys.exit(main())
