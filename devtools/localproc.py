"""Neurons as local processes on 127.0.0.1: wallets, ports, start and wait. Shared by
scripts/localnet.py and the tests that run the real neurons."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import bittensor as bt

ROOT = Path(__file__).resolve().parent.parent


def make_wallet(path: Path, name: str) -> bt.Wallet:
    """A real bittensor wallet (unencrypted keyfiles) under ``path``."""
    wallet = bt.Wallet(name, "default", str(path))
    wallet.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    return wallet


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def neuron(script: str, args: list[str], env: dict[str, str] | None = None,
           **popen) -> subprocess.Popen:
    """Start ``neurons/<script>.py`` with ``args`` (and ``env`` added to this environment),
    unbuffered, from the repository root."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, str(ROOT / f"neurons/{script}.py"), *args],
                            env=env, cwd=ROOT, **popen)


def validated_subnet(folder: Path, period_blocks: int, block_s: float):
    """A local subnet in ``folder`` (periods of ``period_blocks`` blocks of ``block_s``) with
    one validator, "validator", staked 10,000, its wallet in ``folder/wallets``: the subnet,
    the wallets' folder and the flags every neuron on it takes."""
    from core.localchain import LocalSubnet

    chain = LocalSubnet.create(folder / "chain", block_time=block_s, tempo=period_blocks,
                               age_blocks=25 * period_blocks)
    wallets = folder / "wallets"
    validator = make_wallet(wallets, "validator")
    chain.register(validator.hotkey.ss58_address, validator.coldkeypub.ss58_address,
                   stake=10_000.0, validator_permit=True, registered_at=0)
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(wallets),
              "--period-blocks", str(period_blocks), "--log-level", "WARNING"]
    return chain, wallets, common


def start_miner(chain, wallets: Path, name: str, port: int, common: list[str], config: Path,
                state_dir: Path, log, hostile: str = "") -> tuple[str, int, subprocess.Popen]:
    """Register ``name`` on the local ``chain`` and start its miner on 127.0.0.1:``port`` with
    ``config``: the real one, or ``tests/hostile_miner.py`` in mode ``hostile``. Its hotkey,
    uid and process."""
    wallet = make_wallet(wallets, name)
    hotkey = wallet.hotkey.ss58_address
    uid = chain.register(hotkey, wallet.coldkeypub.ss58_address, registered_at=0,
                         endpoint=f"http://127.0.0.1:{port}")
    argv = [*common, "--config", str(config), "--wallet-name", name, "--host", "127.0.0.1",
            "--port", str(port), "--min-stake", "0", "--torch-threads", "1", "--sync-interval",
            "2", "--state-dir", str(state_dir)]
    if not hostile:
        return hotkey, uid, neuron("miner", argv, stdout=log, stderr=subprocess.STDOUT)
    return hotkey, uid, subprocess.Popen(
        [sys.executable, str(ROOT / "tests/hostile_miner.py"), *argv],
        env={**os.environ, "SN19_HOSTILE": hostile, "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
        stdout=log, stderr=subprocess.STDOUT)


def lone_validator(common: list[str], name: str, db: str, *flags: str,
                   **popen) -> subprocess.Popen:
    """A validator alone on its local subnet (``common``: network, wallets, period flags) with
    its database at ``db``: no peer endpoint, as it has no other validator to share reports
    with."""
    return neuron("validator", [*common, "--wallet-name", name, "--db", db, "--port", "0",
                                *flags], **popen)


def wait_healthy(port: int, proc: subprocess.Popen, deadline: float) -> None:
    """Until the neuron on ``port`` answers /health; RuntimeError if it dies or time runs out."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the neuron for port {port} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the neuron on port {port} did not answer in time")


def stop(procs) -> None:
    """Kill each neuron of ``procs`` still running and reap it (a test's clean-up)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(condition, timeout: float, what: str):
    """``condition()``'s first true value, asked every 0.2 s; AssertionError naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()):
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
