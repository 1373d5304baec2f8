"""The systemd units in deploy/ start the neurons with flags the neurons have: a renamed flag
would otherwise leave an operator's service failing at every restart."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def exec_start(unit: Path) -> str:
    text = unit.read_text().replace("\\\n", " ")
    return re.search(r"^ExecStart=(.*)$", text, re.M)[1]


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_a_units_command_uses_only_flags_its_neuron_has(unit):
    command = exec_start(unit)
    script = re.search(r"neurons/(\w+)\.py", command)[0]
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command))
    assert flags, unit
    help_text = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120).stdout
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))
    assert flags <= known, (unit.name, flags - known)


def test_every_neuron_has_a_unit():
    started = {re.search(r"neurons/(\w+)\.py", exec_start(u))[1] for u in UNITS}
    assert started == {"miner", "validator", "worker"}
