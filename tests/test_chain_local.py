"""The contract of ``SubtensorChain``, the one chain adapter, driven through bittensor's own
``Client`` over the local subnet's ``Substrate`` (core/localchain): every call the neurons
make, each chain rule refusing what the chain refuses, and failures injected at the Substrate
level surfacing as the project's one ``ChainError``."""

import asyncio

import pytest
from bittensor._generated.storage import SubtensorModule as st

from core.chain import ChainError, RateLimited, connect
from core.localchain import FolderSubstrate, LedgerError, LocalSubnet
from devtools.localproc import make_wallet
from tests.chains import OWN


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def net(make_net):
    """A subnet of a validator (uid 0), two miners (1, 2) and a second validator (3)."""
    net = make_net(block_time=0.25, tempo=8, age_blocks=1000)
    wallets = {name: net.validator(name, stake=100.0, coldkey=OWN) if name.startswith("v")
               else net.miner(name, coldkey=OWN) for name in ("v", "m1", "m2", "v2")}
    return net.local, wallets


def test_metagraph_reads_the_subnets_alpha_stake_permits_and_registrations(subnet):
    graph = run(subnet.chain.metagraph())
    assert [n.uid for n in graph.neurons] == [0, 1, 2, 3, 4]
    assert graph.by_hotkey(subnet.validator.ss58_address).stake == 9000  # alpha, not refused
    assert [n.uid for n in graph.validators(min_stake=100)] == [1, 4]
    assert graph.block >= 1000 and all(n.registered_at == 0 for n in graph.neurons)
    assert run(subnet.chain.block_time()) == 1.0
    assert run(subnet.chain._client.query(st.Tempo, [19])) == 10


def test_a_read_at_a_block_sees_the_subnet_as_it_was_then(net):
    local, wallets = net
    chain = local.chain()
    before = run(chain.block())
    late = make_wallet(local.folder.parent / "w", "late")
    local.register(late.hotkey.ss58_address, registered_at=before + 1)
    local.stake(wallets["v"].hotkey.ss58_address, 500.0)
    assert len(run(chain.metagraph(before)).neurons) == 4
    assert run(chain.metagraph(before)).neurons[0].stake == 100.0
    while run(chain.block()) < before + 2:
        run(asyncio.sleep(0.1))
    head = run(chain.metagraph())
    assert len(head.neurons) == 5 and head.neurons[0].stake == 500.0


def test_every_reader_agrees_on_block_hashes_cheaply(net):
    local, _ = net
    one, other = local.chain(), connect(f"local:{local.folder}", 19)
    assert run(one.block_hash(934)) == run(other.block_hash(934))
    assert run(one.block_hash(934)) != run(one.block_hash(935))
    substrate = other._client._substrate
    assert isinstance(substrate, FolderSubstrate)
    assert "get_block" not in substrate.calls  # one storage read, not a whole block


def test_serve_announces_once_and_the_rate_limit_refuses_a_change(net):
    local, wallets = net
    local.set_hyperparameters(serving_rate_limit=50)
    chain, miner = local.chain(), wallets["m1"]
    assert run(chain.serve(miner, "127.0.0.1", 9000)) is True
    assert run(chain.metagraph()).neurons[1].endpoint == "http://127.0.0.1:9000"
    assert run(chain.serve(miner, "127.0.0.1", 9000)) is False  # held already: nothing sent
    with pytest.raises(RateLimited, match="serving rate limit"):
        run(chain.serve(miner, "127.0.0.1", 9001))


def test_serve_needs_a_registered_hotkey_and_an_address(net, tmp_path):
    local, _ = net
    stranger = make_wallet(tmp_path / "w", "stranger")
    with pytest.raises(ChainError, match="not registered") as e:
        run(local.chain().serve(stranger, "127.0.0.1", 9000))
    assert e.value.name == "HotKeyNotRegisteredInSubNet"
    with pytest.raises(ChainError, match="does not appear to be an IPv4 or IPv6"):
        run(local.chain().serve(stranger, "miner.example.com", 9000))


def test_weights_are_clipped_and_quantised_as_the_chain_records_them(net):
    local, wallets = net
    local.set_hyperparameters(max_weights_limit=int(0.6 * 65535))
    sent = run(local.chain().set_weights(wallets["v"], {1: 0.01, 2: 0.99}, 0))
    assert sent.reveal_round is None
    [entry] = local.weights_log()
    assert entry["weights"] == {"1": 43691, "2": 65535} and entry["uid"] == 0


@pytest.mark.parametrize("hyper, weights, key, name", [
    ({"weights_version_key": 7}, {1: 1.0, 2: 1.0}, 6, "IncorrectWeightVersionKey"),
    ({"min_allowed_weights": 3}, {1: 1.0, 2: 1.0}, 0, None),  # refused by the SDK, before sending
])
def test_weights_the_subnets_settings_refuse(net, hyper, weights, key, name):
    local, wallets = net
    local.set_hyperparameters(**hyper)
    with pytest.raises(ChainError) as e:
        run(local.chain().set_weights(wallets["v"], weights, key))
    assert local.weights_log() == []
    if name:
        assert e.value.name == name


def test_weights_need_a_permit(net):
    local, wallets = net
    with pytest.raises(ChainError) as e:
        run(local.chain().set_weights(wallets["m1"], {2: 1.0}, 0))
    assert e.value.name == "NeuronNoValidatorPermit" and local.weights_log() == []


def test_the_weights_rate_limit_is_a_rate_limited_error(net):
    local, wallets = net
    local.set_hyperparameters(weights_rate_limit=100)
    chain = local.chain()
    run(chain.set_weights(wallets["v"], {1: 1.0}, 0))
    with pytest.raises(RateLimited, match="rate limit is 100 blocks"):
        run(chain.set_weights(wallets["v"], {2: 1.0}, 0))
    assert len(local.weights_log()) == 1
    rules = run(chain.weight_rules())
    assert rules.rate_limit == 100 and run(chain.last_update(0)) >= 1000


def test_commit_reveal_commits_then_reveals_at_its_round(net):
    local, wallets = net
    local.set_hyperparameters(commit_reveal=True, reveal_period_epochs=1)
    chain = local.chain()
    sent = run(chain.set_weights(wallets["v"], {1: 0.25, 2: 0.75}, 0))
    assert sent.reveal_round is not None
    [commit] = local.commits()
    assert local.weights_log() == [] and run(chain.weights_of(0)) == {}
    while run(chain.block()) < commit["reveal_block"]:
        run(asyncio.sleep(0.2))
    assert run(chain.weights_of(0)) == {1: 21845, 2: 65535}
    [entry] = local.weights_log()
    assert entry["committed_at"] == commit["block"]


def test_yuma_runs_at_each_tempo_on_the_weights_set(net):
    local, wallets = net
    chain = local.chain()
    local.stake(wallets["v"].hotkey.ss58_address, 300.0)  # 75% of the stake
    run(chain.set_weights(wallets["v"], {1: 1.0}, 0))
    run(chain.set_weights(wallets["v2"], {2: 1.0}, 0))  # alone: clipped to consensus, 0
    block = run(chain.block())
    epoch = local.epoch(block + 9)  # an epoch runs within tempo + 1 blocks
    assert epoch.block > block
    assert epoch.incentive[1] == pytest.approx(1.0) and epoch.incentive[2] == 0.0
    assert epoch.trust[0] == pytest.approx(1.0) and epoch.trust[3] == 0.0
    assert epoch.dividends[0] == pytest.approx(1.0)


def test_a_reregistered_uid_loses_the_weight_set_before_it(net, tmp_path):
    local, wallets = net
    chain = local.chain()
    run(chain.set_weights(wallets["v"], {1: 1.0, 2: 1.0}, 0))
    block = run(chain.block())
    newcomer = make_wallet(tmp_path / "w", "new")
    assert local.register(newcomer.hotkey.ss58_address, uid=1, registered_at=block + 1) == 1
    epoch = local.epoch(block + 20)
    assert epoch.incentive[1] == 0.0 and epoch.incentive[2] == pytest.approx(1.0)


@pytest.mark.parametrize("error, method", [("connection", "runtime_call"),
                                           ("timeout", "block_number"),
                                           ("pruned", "runtime_call")])
def test_substrate_failures_surface_as_the_projects_chain_error(net, error, method):
    local, _ = net
    chain = local.chain()
    run(chain.block())  # connected
    local.fail(method, error)
    with pytest.raises(ChainError):
        run(chain.metagraph(run_block(chain) if method == "runtime_call" else None))
    assert run(chain.metagraph()).neurons  # the next call goes through


def run_block(chain):
    return run(chain.block()) - 5


def test_an_unreachable_node_is_a_chain_error_not_a_hang(tmp_path):
    chain = connect("ws://127.0.0.1:9", 19, fallbacks=[], archives=[])
    with pytest.raises(ChainError):
        run(asyncio.wait_for(chain.block(), 120))


def test_a_missing_subnet_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ChainError, match="no local subnet"):
        connect(f"local:{tmp_path / 'nothing'}", 19)
    with pytest.raises(LedgerError, match="no local subnet"):
        LocalSubnet(tmp_path / "nothing")
