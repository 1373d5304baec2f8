"""Shared fixtures: local subnets in a temp folder with real bittensor wallets and keypairs, the
tiny engines, and stores on each database."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import bittensor as bt
import pytest
from bittensor.sp_core import Keypair
from hypothesis import settings

from core.chain import SubtensorChain
from core.localchain import LocalSubnet
from tests.chains import OWN, Net, new_net

# CI runs the property and fuzz tests on fixed examples, so a submission lands or fails on its code
# alone; local runs keep drawing new examples (and keep finding what they find).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# bittensor's Client caches the chain's token symbols under ~/.bittensor: tests (and the neurons
# they start, which inherit this) keep it in a temporary folder of their own
os.environ.setdefault("BTCLI_TOKEN_SYMBOLS_CACHE", os.path.join(
    tempfile.mkdtemp(prefix="sn19-tests-"), "token-symbols.json"))


@dataclass
class Subnet:
    local: LocalSubnet  # the admin side: register, stake, hyperparameters, what was recorded
    chain: SubtensorChain  # the production adapter over it, as a neuron has it
    miner: bt.Wallet
    validator: Keypair  # permit, big stake
    weak: Keypair  # permit, stake below the miners' minimum
    no_permit: Keypair
    stranger: Keypair  # not registered
    other: Keypair  # a second validator with a permit and stake


@pytest.fixture
def make_net(tmp_path):
    """A factory of local subnets in the test's tmp_path: ``make_net(wallets="w", **create)`` is
    ``tests.chains.new_net(tmp_path, wallets, **create)`` (the chain in tmp_path/"chain", the
    wallets in tmp_path/wallets)."""

    def make(wallets: str = "w", **create) -> Net:
        return new_net(tmp_path, wallets, **create)

    return make


@pytest.fixture
def subnet(make_net) -> Subnet:
    net = make_net("wallets", block_time=1.0, tempo=10, age_blocks=1000)
    local = net.local
    miner = net.miner(coldkey=OWN)
    keys = {name: Keypair.create_from_uri(f"//{name}")
            for name in ("Alice", "Bob", "Carol", "Dave", "Eve")}
    local.register(
        keys["Alice"].ss58_address, "cold-a", stake=9000, validator_permit=True, registered_at=0
    )
    local.register(
        keys["Bob"].ss58_address, "cold-b", stake=10, validator_permit=True, registered_at=0
    )
    local.register(
        keys["Carol"].ss58_address, "cold-c", stake=5000, validator_permit=False, registered_at=0
    )
    local.register(
        keys["Dave"].ss58_address, "cold-d", stake=3000, validator_permit=True, registered_at=0
    )
    return Subnet(
        local, local.chain(), miner, keys["Alice"], keys["Bob"], keys["Carol"], keys["Eve"],
        keys["Dave"]
    )


IMAGE_TASKS = ("proteus-text-to-image", "proteus-image-to-image", "inpaint")


@pytest.fixture(scope="session")
def tiny_chat():
    """The tiny chat-llama-3 engine (``TransformersChat.tiny(tiny_seed("chat-llama-3"))``, as
    ``load_engine`` builds it): it keeps no state between requests, so one per worker process."""
    from core.backends import load_engine

    return load_engine("chat-llama-3")


@pytest.fixture(scope="session")
def tiny_chat_reference():
    """A second copy of ``tiny_chat``, a separate object: the validator's own."""
    from core.backends import load_engine

    return load_engine("chat-llama-3")


@pytest.fixture(scope="module")
def tiny_images():
    """The tiny image engines by task (``load_engine``), one set per test module: an engine keeps
    the trajectories of the answers it made, so modules do not share them."""
    from core.backends import load_engine

    return {t: load_engine(t) for t in IMAGE_TASKS}


@pytest.fixture(scope="module")
def tiny_image_references():
    """A second set of ``tiny_images``, separate engines: the validator's own."""
    from core.backends import load_engine

    return {t: load_engine(t) for t in IMAGE_TASKS}


@pytest.fixture(scope="session")
def postgres_dsn():
    from devtools.localpg import binaries_present, postgres_server

    if not binaries_present():
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An empty Store on each database (PostgreSQL: a fresh schema on the session's server)."""
    from core.storage import open_store

    if request.param == "sqlite":
        s = open_store(str(tmp_path / "v.sqlite3"))
    else:
        import psycopg

        dsn = request.getfixturevalue("postgres_dsn")
        schema = f"t_{tmp_path.name.lower().replace('-', '_')}"[:60]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        s = open_store(f"{dsn}?options=-csearch_path%3D{schema}")
    yield s
    s.close()
