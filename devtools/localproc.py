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


def wait_for(condition, timeout: float, what: str):
    """``condition()``'s first true value, asked every 0.2 s; AssertionError naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()):
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
