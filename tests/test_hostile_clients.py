"""Hostile clients against a real miner process on 127.0.0.1 (bounded in count and time): slow
headers (slowloris), slow bodies, and large unsigned bodies. The miner keeps answering signed
requests, closes what is too slow, and reads no body it would refuse."""

from __future__ import annotations

import resource
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from bittensor import http_auth

from core.protocol import CapacityRequest
from devtools.localproc import free_port, neuron, wait_healthy

pytestmark = [pytest.mark.process]

HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 2.0, 2.0
SLOW_CLIENTS = 400
UNSIGNED_BODIES, BODY_MB = 30, 15  # within /inpaint's size limit: refused on signature alone


@pytest.fixture
def miner(subnet, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # this test holds SLOW_CLIENTS sockets
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    (tmp_path / "miner.yml").write_text("tasks:\n  chat-llama-3: {capacity: 3000}\n")
    port = free_port()
    proc = neuron("miner", ["--network", f"local:{subnet.local.folder}", "--wallet-path",
                            str(tmp_path / "wallets"), "--wallet-name", "miner", "--config",
                            str(tmp_path / "miner.yml"), "--host", "127.0.0.1", "--port",
                            str(port), "--min-stake", "0", "--no-announce", "--torch-threads", "1",
                            "--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout",
                            str(BODY_TIMEOUT_S), "--max-connections", "256",
                            "--state-dir", str(tmp_path / "state")],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, proc, time.monotonic() + 120)
        yield port, proc
    finally:
        proc.kill()
        proc.wait()


def signed_capacity(subnet, port: int) -> int:
    body = CapacityRequest().model_dump_json().encode()
    headers = http_auth.sign(subnet.validator, method="POST", path="/capacity", body=body,
                             receiver_ss58=subnet.miner.hotkey.ss58_address)
    try:
        return httpx.post(f"http://127.0.0.1:{port}/capacity", content=body, headers=headers,
                          timeout=5).status_code
    except httpx.HTTPError:
        return 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_headers_are_cut_off_and_signed_requests_still_answered(miner, subnet):
    port, _ = miner
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /chat HTTP/1.1\r\nHost: miner\r\nContent-Le")  # and nothing more
            slow.append(s)
        began = time.monotonic()
        # while they hold their connections, a signed request is answered within the header
        # timeout (the slow ones are then closed) and a margin for a loaded machine
        while signed_capacity(subnet, port) != 200:
            assert time.monotonic() - began < HEADER_TIMEOUT_S + 15, "the miner stopped answering"
            time.sleep(0.2)
        closed = 0
        for s in slow:
            s.settimeout(HEADER_TIMEOUT_S + 10)
            try:
                closed += s.recv(1024) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 0
        assert closed == SLOW_CLIENTS  # the server closed every slow connection
    finally:
        for s in slow:
            s.close()


def test_a_slow_body_gets_408_and_unsigned_bodies_are_never_read(miner, subnet):
    port, proc = miner
    me = subnet.miner.hotkey.ss58_address
    body = b'{"task": "chat-llama-3", "messages": []}'
    headers = http_auth.sign(subnet.validator, method="POST", path="/chat", body=body,
                             receiver_ss58=me)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"POST /chat HTTP/1.1\r\nHost: miner\r\nContent-Length: {len(body)}\r\n"
                  f"Content-Type: application/json\r\n{head}\r\n".encode() + body[:5])
        began = time.monotonic()
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - began < BODY_TIMEOUT_S + 10

    before = rss_kib(proc.pid)
    conns = []
    try:
        for _ in range(UNSIGNED_BODIES):  # large bodies, unsigned: refused on their headers
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(f"POST /inpaint HTTP/1.1\r\nHost: miner\r\nContent-Length: "
                      f"{BODY_MB * 2**20}\r\n\r\n".encode() + b"x" * 2**20)
            conns.append(s)
        for s in conns:
            assert s.recv(4096).startswith(b"HTTP/1.1 401")
    finally:
        for s in conns:
            s.close()
    assert signed_capacity(subnet, port) == 200
    grown = rss_kib(proc.pid) - before
    assert grown < 64 * 1024, f"the miner grew by {grown / 1024:.0f} MiB"
