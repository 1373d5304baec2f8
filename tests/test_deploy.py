"""The systemd units in deploy/ start the neurons with flags the neurons have: a renamed flag
would otherwise leave an operator's service failing at every restart."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def found(pattern: str, text: str, flags: int = 0) -> re.Match[str]:
    match = re.search(pattern, text, flags)
    assert match, (pattern, text)
    return match


def exec_start(unit: Path) -> str:
    text = unit.read_text().replace("\\\n", " ")
    return found(r"^ExecStart=(.*)$", text, re.M)[1]


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_a_units_command_uses_only_flags_its_neuron_has(unit):
    command = exec_start(unit)
    script = found(r"neurons/(\w+)\.py", command)[0]
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command))
    assert flags, unit
    help_text = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120).stdout
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))
    assert flags <= known, (unit.name, flags - known)


def test_every_neuron_has_a_unit():
    started = {found(r"neurons/(\w+)\.py", exec_start(u))[1] for u in UNITS}
    assert started == {"miner", "validator", "worker"}


def sections(unit: Path) -> dict[str, set[str]]:
    """The keys set in each [Section] of a unit file."""
    out: dict[str, set[str]] = {}
    section = ""
    for line in unit.read_text().replace("\\\n", " ").splitlines():
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m[1]
        elif m := re.match(r"^(\w+)=", line):
            out.setdefault(section, set()).add(m[1])
    return out


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_start_limit_is_in_unit_where_systemd_reads_it(unit):
    keys = sections(unit)
    assert {"StartLimitIntervalSec", "StartLimitBurst"} <= keys["Unit"]
    assert not {"StartLimitIntervalSec", "StartLimitBurst", "StartLimitInterval"} & keys["Service"]
    assert {"Restart", "RestartSec"} <= keys["Service"]


def test_the_validator_unit_says_what_its_default_check_needs():
    text = (ROOT / "deploy/systemd/sn19-validator.service").read_text()
    comments = " ".join(line for line in text.splitlines() if line.startswith("#"))
    assert "--check gpu" in comments and "140 GB" in comments and "--check off" in comments
    assert "--check" not in exec_start(ROOT / "deploy/systemd/sn19-validator.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_analyze_verifies_the_unit_without_a_warning(unit, tmp_path):
    """On a copy whose paths exist here: this checkout for /opt/sn19, this Python for its
    virtual environment's, an empty file for /etc/sn19/worker.env. Everything else (sections,
    keys, values, the user) is verified as written."""
    env = tmp_path / "worker.env"
    env.write_text("SN19_WORKER_TOKEN=x\n")
    text = unit.read_text()
    local = (text.replace("/opt/sn19/.venv/bin/python", sys.executable)
             .replace("/opt/sn19", str(ROOT)).replace("/etc/sn19/worker.env", str(env)))
    # nothing but those paths changed: every other line is verified as shipped
    changed = [a for a, b in zip(text.splitlines(), local.splitlines()) if a != b]
    assert all("/opt/sn19" in line or "/etc/sn19/worker.env" in line for line in changed)
    copy = tmp_path / unit.name.replace("@.", "@0.")  # a template is verified as an instance
    copy.write_text(local)
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stderr.strip() == "" and out.stdout.strip() == "", \
        out.stdout + out.stderr
