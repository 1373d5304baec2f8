"""The entry points: --help explains every flag; start-up problems are one clear line, status 1."""

import signal
import subprocess
import sys

import pytest

from devtools.localproc import make_wallet

pytestmark = [pytest.mark.process]


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script, flags", [
    ("neurons/miner.py", ["--config", "--check-config", "--network", "--netuid", "--wallet-name",
                          "--wallet-hotkey", "--wallet-path", "--host", "--port",
                          "--external-host", "--no-announce", "--period-blocks", "--min-stake",
                          "--queue-wait", "--max-waiting", "--sync-interval", "--torch-threads",
                          "--log-level", "--chain-fallback", "--chain-archive"]),
    ("neurons/validator.py", ["--network", "--netuid", "--chain-fallback", "--chain-archive",
                              "--wallet-name", "--wallet-hotkey",
                              "--wallet-path", "--db", "--status", "--period-blocks",
                              "--capacity-timeout", "--max-concurrency", "--image-size",
                              "--retention-periods", "--periods", "--log-level", "--check",
                              "--check-rate", "--check-queue", "--api-port", "--api-host",
                              "--api-max-body", "--host", "--port", "--external-host",
                              "--no-announce", "--no-share-reports", "--report-timeout"]),
    ("scripts/localnet.py", ["--periods", "--dir", "--period-blocks", "--block-time",
                             "--startup-timeout", "--api-port", "--log-level",
                             "--commit-reveal"]),
])
def test_help_explains_every_flag(script, flags):
    out = run(script, "--help")
    assert out.returncode == 0
    for flag in flags:
        assert f"  {flag}" in out.stdout, flag


def test_missing_wallet_is_one_clear_line(tmp_path):
    out = run("neurons/miner.py", "--wallet-name", "ghost", "--wallet-path", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr.startswith("error: cannot load the hotkey of wallet ghost/default")
    assert "Traceback" not in out.stderr


def test_bittensors_dotted_flag_names_are_accepted(tmp_path):
    out = run("neurons/miner.py", "--wallet.name", "ghost", "--wallet.hotkey", "hk",
              "--wallet.path", str(tmp_path), "--subtensor.network", "finney")
    assert out.returncode == 1  # the dotted names reached the same settings: that wallet
    assert out.stderr.startswith("error: cannot load the hotkey of wallet ghost/hk")


def test_a_mistyped_db_is_refused_not_created_and_sn19_db_names_one(tmp_path):
    import os

    missing = tmp_path / "typo" / "v.sqlite3"
    out = run("neurons/validator.py", "--status", "--db", str(missing))
    assert out.returncode == 1 and "no such database" in out.stderr and not missing.exists()
    from core.storage import open_store

    open_store(str(tmp_path / "v.sqlite3")).close()
    env = dict(os.environ, SN19_DB=str(tmp_path / "v.sqlite3"))
    ok = subprocess.run([sys.executable, "neurons/validator.py", "--status"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "no period recorded yet" in ok.stdout


def test_unknown_network_and_missing_local_subnet(tmp_path):
    make_wallet(tmp_path / "w", "v")
    common = ["--wallet-path", str(tmp_path / "w"), "--wallet-name", "v", "--check", "off",
              "--tokenizers", "tiny", "--db", str(tmp_path / "v.sqlite3"), "--no-announce"]
    out = run("neurons/validator.py", "--network", "mars", *common)
    assert out.returncode == 1 and "Unknown network 'mars'" in out.stderr
    out = run("neurons/validator.py", "--network", f"local:{tmp_path}/none", *common)
    assert out.returncode == 1 and "no local subnet here" in out.stderr


def test_gpu_checking_without_a_gpu_says_what_to_do(tmp_path):
    make_wallet(tmp_path / "w", "v")
    out = run("neurons/validator.py", "--wallet-path", str(tmp_path / "w"), "--wallet-name", "v",
              "--db", str(tmp_path / "v.sqlite3"), "--no-announce")
    assert out.returncode == 1 and "--check gpu" in out.stderr and "--check off" in out.stderr


def test_a_hotkey_readable_by_others_is_refused(tmp_path):
    make_wallet(tmp_path / "w", "v")
    hotkey = tmp_path / "w" / "v" / "hotkeys" / "default"
    assert hotkey.stat().st_mode & 0o777 == 0o600  # as bittensor writes it
    hotkey.chmod(0o644)
    out = run("neurons/validator.py", "--wallet-path", str(tmp_path / "w"), "--wallet-name", "v",
              "--check", "off", "--tokenizers", "tiny", "--db", str(tmp_path / "v.sqlite3"))
    assert out.returncode == 1 and "can be read by other users (mode 644)" in out.stderr
    assert f"chmod 600 {hotkey}" in out.stderr


@pytest.mark.parametrize("script", ["neurons/miner.py", "neurons/validator.py", "neurons/worker.py",
                                    "scripts/localnet.py", "scripts/simulate.py"])
def test_help_shows_each_default_once_and_never_an_empty_one(script):
    out = run(script, "--help").stdout
    assert "(default: None)" not in out and "(default: False)" not in out
    if script.startswith("neurons/miner") or script.startswith("neurons/validator"):
        assert out.count("(default: --host)") == 1  # --external-host, said in its help only


def test_abbreviated_flags_and_unknown_log_levels_are_refused(tmp_path):
    out = run("neurons/miner.py", "--period", "30", "--check-config")  # not --period-blocks
    assert out.returncode == 2 and "unrecognized arguments: --period 30" in out.stderr
    out = run("neurons/miner.py", "--log-level", "verbose")
    assert out.returncode == 2 and "invalid choice: 'VERBOSE'" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_miner_s_actions_may_be_named_as_a_first_word():
    word = run("neurons/miner.py", "check-config", "--config", "miner_config/default.yml")
    flag = run("neurons/miner.py", "--check-config", "--config", "miner_config/default.yml")
    assert word.returncode == flag.returncode == 0 and word.stdout == flag.stdout
    assert "chat-llama-3" in word.stdout
    wrong = run("neurons/miner.py", "calibrat")  # a word that is no action is refused, named
    assert wrong.returncode == 2 and "unrecognized arguments: calibrat" in wrong.stderr


def test_a_wildcard_address_is_not_announced(tmp_path, make_net):
    net = make_net()
    chain = net.local
    net.validator("v", stake=1)
    out = run("neurons/validator.py", "--network", f"local:{chain.folder}", "--wallet-path",
              str(tmp_path / "w"), "--wallet-name", "v", "--check", "gpu", "--tokenizers",
              "production", "--db", str(tmp_path / "v.sqlite3"))
    # said first: before the GPU check and the production tokenizers (not on this machine)
    assert out.returncode == 1 and "cannot be announced" in out.stderr
    assert "--external-host" in out.stderr


def test_localnet_deletes_only_a_folder_it_made(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    out = run("scripts/localnet.py", "--dir", str(tmp_path / "mine"))
    assert out.returncode == 1 and "was not made by localnet" in out.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_an_announced_host_name_is_resolved_or_refused_at_parse_time(tmp_path):
    from core.cli import ip_address

    assert ip_address("localhost") in ("127.0.0.1", "::1")
    assert ip_address("10.0.0.7") == "10.0.0.7"
    make_wallet(tmp_path / "w", "v")
    out = run("neurons/miner.py", "--external-host", "miner.invalid", "--wallet-path",
              str(tmp_path / "w"), "--wallet-name", "v")
    assert out.returncode == 2 and "--external-host" in out.stderr
    assert "does not resolve" in out.stderr and "Traceback" not in out.stderr


def test_an_unreachable_chain_is_a_line_a_retry_and_never_the_end(tmp_path):
    """No node at the endpoint: the validator serves on, its loop logs one line per attempt
    (bittensor's connection error as the project's ChainError) and backs off."""
    make_wallet(tmp_path / "w", "v")
    proc = subprocess.Popen(
        [sys.executable, "neurons/validator.py", "--network", "ws://127.0.0.1:9",
         "--wallet-path", str(tmp_path / "w"), "--wallet-name", "v", "--check", "off",
         "--tokenizers", "tiny", "--db", str(tmp_path / "v.sqlite3"), "--port", "0"],
        stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if sum("retrying in" in seen for seen in lines) == 2:
                break
        assert proc.poll() is None, "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    text = "".join(lines) + rest
    assert proc.returncode == 0 and "ChainError" in text and "could not connect" in text
    assert "Traceback" not in text


def test_bittensors_axon_subtensor_and_logging_flags_mean_the_project_s_own(monkeypatch):
    import core.chain
    from core.cli import add_common_args, add_endpoint_args, chain_of, parser

    p = parser("test")
    add_common_args(p)
    add_endpoint_args(p, 8091, "test")
    dotted = p.parse_args(["--axon.port", "9001", "--axon.external_ip", "10.0.0.7",
                           "--axon.ip", "127.0.0.1", "--logging.debug",
                           "--subtensor.chain_endpoint", "ws://node:9944",
                           "--subtensor.network", "test"])
    own = p.parse_args(["--port", "9001", "--external-host", "10.0.0.7", "--host", "127.0.0.1",
                        "--log-level", "debug", "--network", "test"])
    assert (dotted.port, dotted.external_host, dotted.host, dotted.log_level) == \
        (own.port, own.external_host, own.host, own.log_level) == (9001, "10.0.0.7",
                                                                   "127.0.0.1", "DEBUG")
    assert p.parse_args([]).log_level == "INFO"  # the dotted switches leave the default alone
    asked = []
    monkeypatch.setattr(core.chain, "connect", lambda network, *a, **k: asked.append(network))
    chain_of(dotted)  # as in bittensor, the endpoint wins over the network's name
    chain_of(own)
    assert asked == ["ws://node:9944", "test"]
    with pytest.raises(SystemExit):
        p.parse_args(["--subtensor.chain_endpoint", "finney"])  # an endpoint, not a name


@pytest.mark.parametrize("script", ["neurons/miner.py", "neurons/validator.py"])
def test_help_explains_every_flag_once_with_its_bittensor_name(script):
    import re

    out = run(script, "--help").stdout
    entries = re.findall(r"^  (-[^\n]*?)(?:  +(\S[^\n]*))?$", out, re.M)
    flags = [f for names, _ in entries for f in re.findall(r"(--?[\w.-]+)", names.split("  ")[0])
             if f.startswith("-")]
    assert len(flags) == len(set(flags)), [f for f in flags if flags.count(f) > 1]
    for alias in ("--axon.port", "--axon.external_ip", "--axon.ip", "--subtensor.network",
                  "--subtensor.chain_endpoint", "--logging.debug", "--wallet.name"):
        assert alias in flags, alias
