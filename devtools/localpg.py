"""A private PostgreSQL server for tests and benchmarks: initdb in a temp folder, listening on
127.0.0.1 only, stopped at the end. Uses the machine's binaries (as the postgres user when run
as root, since initdb refuses root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path


def binaries_present() -> bool:
    return bool(shutil.which("initdb") and shutil.which("pg_ctl"))


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server(fsync: bool = False):
    """Yields a DSN to a fresh database on a private server; ``fsync`` as in production (tests
    leave it off: faster, and nothing there must survive a power loss)."""
    folder = Path(tempfile.mkdtemp(prefix="sn19-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(_as_owner(["initdb", "-D", str(data), "-U", "postgres", "-A", "trust",
                              "--no-sync"]), check=True, capture_output=True)
    sync = "on" if fsync else "off"
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync={sync}"
    subprocess.run(_as_owner(["pg_ctl", "-D", str(data), "-o", opts, "-w", "-l",
                              str(folder / "log"), "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_owner(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
