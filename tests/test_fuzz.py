"""Bad input, generated: every endpoint of the miner and of the organic API answers a 4xx with a
JSON error or a valid answer, never a 500, a hang or a crash. Bounded in examples and time."""

import json
import tempfile
from pathlib import Path

import pytest
import schemathesis
from bittensor import http_auth
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.miner.app import MinerSettings, MinerState, build_app
from core.miner.config import MinerConfig, TaskEntry
from core.miner.latch import DeclarationLatch
from core.miner.limits import Slots
from core.miner.pool import build_pools
from core.protocol import PROTOCOL_VERSION
from core.storage import open_store
from core.transport.auth import Gate
from core.validator import keys
from core.validator.api import build_api
from core.validator.loop import Settings, Validator
from tests.chains import new_net

pytestmark = [pytest.mark.property]

BOUNDED = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)

VALID = {
    "/chat": {"version": PROTOCOL_VERSION, "task": "chat-llama-3", "max_tokens": 4,
              "messages": [{"role": "user", "content": "hi"}]},
    "/text-to-image": {"version": PROTOCOL_VERSION, "task": "proteus-text-to-image", "prompt": "x",
                       "steps": 1, "height": 64, "width": 64},
    "/capacity": {"version": PROTOCOL_VERSION},
}


@pytest.fixture(scope="module")
def miner(tmp_path_factory):
    from core.backends import load_engine

    tmp = tmp_path_factory.mktemp("fuzz-miner")
    net = new_net(tmp, age_blocks=1000)
    chain, wallet = net.local, net.miner()
    validator = net.validator(stake=10).hotkey
    config = MinerConfig(tasks={"chat-llama-3": TaskEntry(capacity=10**5),
                                "proteus-text-to-image": TaskEntry(capacity=10**4)})
    engines = {t: load_engine(t, e) for t, e in config.tasks.items()}
    me = wallet.hotkey.ss58_address
    state = MinerState(
        hotkey=me,
        pools=build_pools(config, engines),
        chain=chain.chain(),
        gate=Gate(me),
        period_blocks=10**6,
        slots=Slots({}, {t: None for t in config.tasks}, 5),
        latch=DeclarationLatch(wallet.hotkey, chain.netuid, tmp / "state"),
    )
    settings = MinerSettings(sync_interval_s=3600, max_body=64_000)
    with TestClient(build_app(state, settings)) as client:
        yield client, validator, me


def signed_post(client, signer, receiver, path, body: bytes):
    headers = http_auth.sign(signer, method="POST", path=path, body=body, receiver_ss58=receiver)
    return client.post(path, content=body, headers=headers)


def assert_clean(r):
    assert r.status_code < 500, r.text[:300]
    if r.status_code >= 400:
        assert isinstance(r.json().get("error"), str)


@BOUNDED
@given(path=st.sampled_from(sorted(VALID)), field=st.sampled_from(
    ["version", "task", "max_tokens", "messages", "prompt", "steps", "height", "seed",
     "temperature", "top_p", "num_images", "guidance_scale", "stop", "extra"]), value=json_values)
def test_miner_answers_any_field_value_without_a_500(miner, path, field, value):
    client, validator, me = miner
    body = dict(VALID[path], **{field: value})
    r = signed_post(client, validator, me, path,
                    json.dumps(body, allow_nan=True).encode())
    assert_clean(r)


@BOUNDED
@given(stop=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=70), max_size=6))
def test_miner_answers_any_stop_sequences_without_a_500(miner, stop):
    """Up to 4 sequences of 1-64 characters are served (the completion ends at the first one);
    anything else is a 422 naming the field."""
    client, validator, me = miner
    body = dict(VALID["/chat"], stop=stop)
    r = signed_post(client, validator, me, "/chat", json.dumps(body).encode())
    assert_clean(r)
    ok = len(stop) <= 4 and all(1 <= len(x) <= 64 for x in stop)
    assert (r.status_code == 200) == ok, (stop, r.status_code)


@BOUNDED
@given(path=st.sampled_from(sorted(VALID)), raw=st.binary(max_size=200) | json_values.map(
    lambda v: json.dumps(v, allow_nan=True).encode()))
def test_miner_answers_any_body_without_a_500(miner, path, raw):
    client, validator, me = miner
    assert_clean(signed_post(client, validator, me, path, raw))


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's recursion limit
    json.dumps({"version": PROTOCOL_VERSION, "task": "chat-llama-3",
                "messages": [{"role": "user", "content": "\udcff\u0000" * 10}]}).encode(),
    f'{{"version": "{PROTOCOL_VERSION}", "task": "chat-llama-3", "temperature": NaN, '
    '"messages": [{"role": "user", "content": "x"}]}'.encode(),
    b'\xff\xfe\x00garbage',
])
def test_miner_answers_hostile_bodies_with_a_4xx(miner, body):
    client, validator, me = miner
    r = signed_post(client, validator, me, "/chat", body)
    assert 400 <= r.status_code < 500 and r.json()["error"]


def test_miner_refuses_huge_and_unsized_bodies(miner):
    client, validator, me = miner
    r = signed_post(client, validator, me, "/chat", b" " * 70_000)
    assert r.status_code == 413
    r = client.post("/chat", content=iter([b"{}"]))  # chunked: no Content-Length
    assert r.status_code == 411


def _api():
    """The organic API of a validator in a period with no capacity (valid requests: 503), and a
    key; built at import because schemathesis' from_fixture does not work with pytest 9."""
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-api-"))
    net = new_net(tmp, age_blocks=1000)
    chain, wallet = net.local, net.validator(stake=10)
    store = open_store(str(tmp / "v.sqlite3"))
    validator = Validator(wallet, chain.chain(), store, Settings(check="off", tokenizers="tiny"))
    validator.book.open(1, [], None, {})
    api = build_api(validator.api_services(), max_body=64_000)
    return api, keys.create(store, "fuzz", per_minute=10**9)


API, API_KEY = _api()
schema = schemathesis.openapi.from_asgi("/openapi.json", API)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_organic_api_never_answers_a_server_error(case):
    response = case.call(headers={"Authorization": f"Bearer {API_KEY}"})
    # 503: no capacity this period is the intended answer to a valid request here
    assert response.status_code < 500 or response.status_code == 503, response.text[:300]
    if response.status_code >= 400:
        assert "error" in response.json()
