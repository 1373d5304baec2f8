"""Command-line flags both neurons share: which chain, which wallet, how to log."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core import collector
from core.chain_time import PERIOD_BLOCKS
from core.errors import SetupError


class HelpFormatter(argparse.HelpFormatter):
    """Each flag's default shown once: appended unless the help already says it, and never for
    a switch, a positional or a flag without a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def parser(description: str) -> argparse.ArgumentParser:
    """An entry point's parser: defaults shown once, no abbreviated flags (``--period 30`` must
    not quietly set ``--period-blocks``)."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter,
                                   allow_abbrev=False)


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1] (argparse names the flag in its error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The chain and the wallet; each also under the dotted name Bittensor's own tools use
    (``--subtensor.network``, ``--wallet.name``, ...), so operators' scripts work as they are."""
    p.add_argument("--network", "--subtensor.network", default="finney",
                   help="finney, test, local, a ws(s):// endpoint, or local:PATH for a local "
                        "subnet folder (scripts/localnet.py makes one)")
    p.add_argument("--subtensor.chain_endpoint", dest="chain_endpoint", type=ws_url,
                   metavar="URL", help="a ws(s):// node to use in place of --network's (as in "
                                       "bittensor, it wins over --subtensor.network)")
    p.add_argument("--netuid", type=int, default=19, help="subnet uid")
    p.add_argument("--chain-fallback", "--subtensor.fallback_endpoints", action="append",
                   metavar="URL", help="a ws(s):// node to turn to when --network's stops "
                   "answering (repeat for more; default: bittensor's public nodes for finney "
                   "and test, none for an endpoint)")
    p.add_argument("--chain-archive", "--subtensor.archive_endpoints", action="append",
                   metavar="URL", help="a ws(s):// archive node for reads at blocks a pruned "
                   "node no longer holds (repeat for more; default: bittensor's archive for "
                   "finney, none for an endpoint)")
    p.add_argument("--wallet-name", "--wallet.name", default="default",
                   help="bittensor wallet (coldkey) name")
    p.add_argument("--wallet-hotkey", "--wallet.hotkey", default="default",
                   help="hotkey name in that wallet")
    p.add_argument("--wallet-path", "--wallet.path", default="~/.bittensor/wallets",
                   help="folder of wallets")
    p.add_argument("--period-blocks", type=int, default=PERIOD_BLOCKS,
                   help="blocks per scoring period (300 = 60 min at 12 s); miners and "
                        "validators must use the same")
    add_log_level(p)


def add_log_level(p: argparse.ArgumentParser, default: str = "INFO") -> None:
    p.add_argument("--log-level", default=default, type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="how much to log")
    p.add_argument("--logging.debug", dest="log_level", action="store_const", const="DEBUG",
                   help="bittensor's name for --log-level DEBUG")
    p.add_argument("--logging.info", dest="log_level", action="store_const", const="INFO",
                   help="bittensor's name for --log-level INFO")


def ws_url(text: str) -> str:
    """An argparse type: a ws:// or wss:// address."""
    if not text.startswith(("ws://", "wss://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a ws:// or wss:// address")
    return text


def add_endpoint_args(p: argparse.ArgumentParser, port: int, serves: str) -> None:
    """The endpoint a neuron listens on and announces on chain (``serves``: what it serves)."""
    p.add_argument("--host", "--axon.ip", default="0.0.0.0",
                   help=f"address to listen on ({serves})")
    p.add_argument("--port", "--axon.port", type=int, default=port,
                   help="port to listen on, and announced on chain")
    p.add_argument("--external-host", "--axon.external_ip", default=None, type=ip_address,
                   help="IP address (or a host name, resolved now) announced on chain for "
                        "others to reach (default: --host)")
    p.add_argument("--no-announce", action="store_true",
                   help="do not announce host:port on chain at start-up (already served)")
    p.add_argument("--public-metrics", action="store_true",
                   help="answer GET /metrics to any address, not only to this host's (it names "
                        "validators' hotkeys, and a miner's worker URLs)")


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The limits a hostile client meets on a listening neuron (``core/transport/server.py``)."""
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send a request's headers before it is "
                        "closed (slow clients cannot hold connections)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request may take to send its body (408 beyond)")
    p.add_argument("--max-connections", type=int, default=512,
                   help="connections open at once, a safety bound above the requests the app "
                        "serves at once: at the bound, the oldest connection still sending its "
                        "headers (of the address with the most) is closed for the new one")


def server_options(args) -> dict:
    """uvicorn's keyword arguments for the limits given by ``add_server_args``, after raising
    this process's open-files limit to its hard limit."""
    from core.transport.server import ServerLimits, raise_open_files_limit

    raise_open_files_limit()
    return ServerLimits(args.header_timeout, args.max_connections).uvicorn_options()


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


class CliError(SetupError):
    """A start-up problem the operator must fix; printed as one line, exit status 1."""


def ip_address(text: str) -> str:
    """An argparse type: an IP address, or a host name resolved to one now (the chain holds
    only addresses: ``ServeAxon`` refuses a name)."""
    import ipaddress
    import socket

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(text, None, proto=socket.IPPROTO_TCP)[0][4][0])
    except (OSError, UnicodeError) as e:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address and does not resolve to one ({e})") from None


def announced_host(args) -> str:
    """The address to announce on chain: ``--external-host``, else ``--host`` (resolved) when
    that is one others can reach (a wildcard listens everywhere but names no address)."""
    if args.external_host:
        return args.external_host
    if args.host in ("0.0.0.0", "::", ""):
        raise CliError(f"--host {args.host} listens on every address but cannot be announced on "
                       f"chain: set --external-host to the address others reach this neuron at "
                       f"(or --no-announce if it is already served)")
    try:
        return ip_address(args.host)
    except argparse.ArgumentTypeError as e:
        raise CliError(f"--host: {e}") from None


def chain_of(args):
    """The chain client the flags name (--subtensor.chain_endpoint, else --network;
    --chain-fallback, --chain-archive)."""
    from core.chain import connect

    network = getattr(args, "chain_endpoint", None) or args.network
    return connect(network, args.netuid, fallbacks=args.chain_fallback,
                   archives=args.chain_archive)


def guarded(main, args, *errors: type[BaseException]) -> int:
    """``main(args)``, with the expected start-up errors (a bad file, wallet, chain or database)
    turned into one line on stderr and exit status 1 instead of a traceback."""
    from core.chain import ChainError

    expected: tuple[type[BaseException], ...] = (CliError, ChainError, *errors)
    try:
        return main(args)
    except expected as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def load_wallet(args):
    """The wallet named by the flags, with its hotkey loaded once (signing with the loaded keypair
    is ~30x cheaper than passing the Wallet, which re-reads the keyfile on every call)."""
    import bittensor as bt

    wallet = bt.Wallet(args.wallet_name, args.wallet_hotkey, args.wallet_path)
    path = Path(wallet.hotkey_file.path).expanduser()
    if path.exists() and path.stat().st_mode & 0o077:
        raise CliError(f"{path} can be read by other users (mode {path.stat().st_mode & 0o777:o}): "
                       f"run chmod 600 {path}")
    try:
        return wallet, wallet.hotkey
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load the hotkey of wallet {args.wallet_name}/{args.wallet_hotkey} "
                       f"under {args.wallet_path}: {e} (create it with btcli, or set "
                       f"--wallet-name, --wallet-hotkey, --wallet-path)") from None


def run_loop(main) -> None:
    """Run the coroutine ``main`` on uvloop when installed (uvicorn[standard] brings it): the
    validator's fan-out to miners and relay of organic streams cost less CPU on it. What was
    loaded before is settled out of the garbage collector's way (``core.collector``)."""
    collector.settle()
    try:
        import uvloop
    except ImportError:
        import asyncio

        asyncio.run(main)
        return
    uvloop.run(main)
