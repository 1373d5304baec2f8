import asyncio

import pytest

from core.chain import connect
from core.chain.local import LocalChain, LocalChainError
from devtools.localproc import make_wallet


def run(coro):
    return asyncio.run(coro)


def test_metagraph_and_blocks(subnet):
    graph = run(subnet.chain.metagraph())
    assert [n.uid for n in graph.neurons] == [0, 1, 2, 3, 4]
    assert graph.by_hotkey(subnet.validator.ss58_address).stake == 9000
    assert [n.uid for n in graph.validators(min_stake=100)] == [1, 4]
    assert graph.block >= 1000
    assert run(subnet.chain.block_time()) == 1.0 and run(subnet.chain.tempo()) == 10


def test_every_reader_agrees_on_block_hashes(subnet):
    other = connect(f"local:{subnet.chain.folder}", 19)
    assert isinstance(other, LocalChain)
    assert run(other.block_hash(1234)) == run(subnet.chain.block_hash(1234))
    assert run(other.block_hash(1234)) != run(other.block_hash(1235))


def test_serve_records_the_endpoint(subnet):
    run(subnet.chain.serve(subnet.miner, "127.0.0.1", 9999))
    graph = run(subnet.chain.metagraph())
    assert graph.by_hotkey(subnet.miner.hotkey.ss58_address).endpoint == "http://127.0.0.1:9999"


def test_set_weights_normalises_like_bittensor_and_appends(subnet, tmp_path):
    validator = make_wallet(tmp_path / "w", "v")
    subnet.chain.register(
        validator.hotkey.ss58_address, "c", stake=1, validator_permit=True, registered_at=0
    )
    run(subnet.chain.set_weights(validator, {0: 0.25, 1: 0.75, 2: 0.0}))
    run(subnet.chain.set_weights(validator, {0: 1.0}))
    log = subnet.chain.weights_log()
    assert len(log) == 2
    assert log[0]["weights"] == {"0": 21845, "1": 65535}  # max-upscaled u16, zeros dropped
    assert log[0]["hotkey"] == validator.hotkey.ss58_address and log[0]["block"] >= 1000


def test_set_weights_needs_a_permit_and_a_non_zero_vector(subnet):
    with pytest.raises(LocalChainError, match="permit"):
        run(subnet.chain.set_weights(subnet.miner, {0: 1.0}))


def test_missing_subnet_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LocalChainError, match="no local subnet"):
        LocalChain(tmp_path / "nothing")
