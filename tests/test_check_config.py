"""check-config's verdict agrees with its exit status, over-declared groups are refused beyond the
stated factor, and the miner's start-up finds what its flags get wrong before a model loads."""

import socket
import subprocess
import sys

import pytest

from core.backends import backend_problems
from core.miner.config import OVER_FACTOR, group_load, load_config
from devtools.localproc import ROOT, make_wallet

pytestmark = [pytest.mark.process]


def miner(*args, timeout=120):
    return subprocess.run([sys.executable, "neurons/miner.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def check(path, *flags):
    out = miner("check-config", "--config", str(path), *flags)
    lines = out.stdout.strip().splitlines()
    return out, lines[-1] if lines else ""


OVER = """\
tasks:
  chat-llama-3: {capacity: 576000, group: gpu0}
  inpaint: {capacity: 4000, group: gpu0}
groups:
  gpu0: {concurrency: 1}
"""


def test_a_group_declared_beyond_the_factor_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "over.yml"
    path.write_text(OVER)
    load = group_load(load_config(path), 300 * 12.0)["gpu0"]
    assert load > OVER_FACTOR  # the file is what the test says it is
    out, verdict = check(path)
    assert out.returncode == 1
    error = next(line for line in out.stdout.splitlines() if "error:" in line)
    assert f"{path}: line 5, column 3: groups.gpu0:" in error and f"{load:.1f}x" in error
    assert "--allow-over" in error
    assert verdict.startswith(f"{path}: NOT USABLE") and "groups.gpu0" in verdict
    allowed, verdict = check(path, "--allow-over")
    assert allowed.returncode == 0 and verdict.startswith(f"{path}: OK")
    assert "warning:" in allowed.stdout and "error:" not in allowed.stdout


def test_a_group_over_1x_but_within_the_factor_is_a_warning(tmp_path):
    path = tmp_path / "near.yml"
    path.write_text(OVER.replace("concurrency: 1", "concurrency: 3"))
    load = group_load(load_config(path), 300 * 12.0)["gpu0"]
    assert 1 < load <= OVER_FACTOR
    out, verdict = check(path)
    assert out.returncode == 0 and verdict.startswith(f"{path}: OK")
    assert "warning:" in out.stdout and "groups.gpu0" in out.stdout


needs_no_vllm = pytest.mark.skipif(not backend_problems(["vllm"]),
                                   reason="vllm and a CUDA GPU are here")


@needs_no_vllm
def test_verdict_and_exit_status_agree_where_a_back_end_cannot_load(tmp_path):
    path = tmp_path / "gpu.yml"
    path.write_text("tasks:\n  chat-llama-3:\n    capacity: 1000\n    backend: vllm\n")
    out, verdict = check(path)
    # the file is valid, but not usable here
    assert out.returncode == 1
    assert verdict.startswith(f"{path}: NOT USABLE: the file is valid, but 1 thing the back "
                              f"ends need is not on this machine")
    assert "not checked:" in verdict and "checked: keys" in verdict
    assert ": OK" not in out.stdout  # never OK, then errors
    default, verdict = check(ROOT / "miner_config/default.yml")
    assert default.returncode == 0 and verdict.endswith(")") and ": OK (" in verdict
    assert "error:" not in default.stdout


def test_a_bad_file_is_one_line_naming_file_line_and_key(tmp_path):
    path = tmp_path / "typo.yml"
    path.write_text("task:\n  inpaint: {capacity: 10}\n")
    out, _ = check(path)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == (f"error: {path}: line 1, column 1: task: unknown key; did you "
                                  f"mean 'tasks'? (allowed: tasks, groups)")


@pytest.fixture
def wallet(tmp_path):
    make_wallet(tmp_path / "w", "m")
    return ["--wallet-path", str(tmp_path / "w"), "--wallet-name", "m"]


@pytest.fixture
def unloadable(tmp_path):
    """A capacity file whose model folder holds no model: a start-up that gets to loading fails
    on it."""
    (tmp_path / "no-model").mkdir()
    path = tmp_path / "m.yml"
    path.write_text(f"tasks:\n  chat-llama-3: {{capacity: 100, model: '{tmp_path}/no-model'}}\n")
    return ["--config", str(path)]


def test_the_miner_refuses_an_unannounceable_host_before_loading_a_model(wallet, unloadable):
    out = miner(*wallet, *unloadable, "--network", "ws://127.0.0.1:9")
    assert out.returncode == 1 and "cannot be announced" in out.stderr, out.stderr
    assert "no-model" not in out.stderr and "loading" not in out.stderr


def test_the_miner_refuses_a_taken_port_before_loading_a_model(wallet, unloadable):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = miner(*wallet, *unloadable, "--host", "127.0.0.1", "--port", str(port))
    assert out.returncode == 1, out.stderr
    assert f"--host 127.0.0.1 --port {port}: cannot listen there" in out.stderr
    assert "no-model" not in out.stderr


@needs_no_vllm
def test_the_miner_refuses_a_back_end_it_cannot_load_before_the_wallet(tmp_path):
    path = tmp_path / "gpu.yml"
    path.write_text("tasks:\n  chat-llama-3: {capacity: 100, backend: vllm}\n")
    out = miner("--config", str(path), "--wallet-name", "ghost", "--wallet-path", str(tmp_path))
    assert out.returncode == 1 and out.stderr.startswith(f"error: {path}: the vllm back end")


def test_a_missing_model_folder_is_named_by_check_config_and_stops_the_start_first(tmp_path):
    path = tmp_path / "m.yml"
    path.write_text(f"tasks:\n  inpaint:\n    capacity: 20\n    model: {tmp_path}/gone\n")
    out, verdict = check(path)
    expected = f"{path}: line 4, column 5: tasks.inpaint.model: no model folder {tmp_path}/gone"
    assert out.returncode == 1 and expected in out.stdout and "NOT USABLE" in verdict
    start = miner("--config", str(path), "--wallet-name", "ghost", "--wallet-path", str(tmp_path))
    assert start.returncode == 1 and start.stderr.startswith(f"error: {expected}")
