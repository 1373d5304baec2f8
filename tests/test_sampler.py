"""The protocol's sampler (core/sampler.py) and the checker's replay of it: the hash is exact
(a pure-Python reference of it agrees bit for bit), the draw follows the model's distribution,
and a miner that ignores the request's seed fails the replay where the statistical rule lets it
through."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
from pydantic import ValidationError

from core import sampler
from core.checking.chat import check_chat, evidence, statistical
from core.protocol import ChatChunk, ChatRequest, ChatToken

M32 = 0xFFFFFFFF


def fmix(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & M32
    return x ^ (x >> 16)


def reference_u(seed: int, position: int, token: int) -> float:
    """The sampler's uniform for one token, in Python's unbounded integers."""
    b = fmix(((seed >> 32) & M32) ^ fmix((position ^ 0x9E3779B9) & M32))
    k = fmix((seed & M32) ^ b)
    return (fmix((fmix(token ^ k) + b) & M32) + 0.5) / 2**32


def test_the_torch_hash_is_the_pure_python_one_for_any_seed_position_and_token():
    rng = random.Random(1)
    vocab = 128_256
    for seed in [0, 1, 2**32 - 1, 2**32, 2**63 - 1, *(rng.getrandbits(63) for _ in range(5))]:
        position = rng.randrange(4096)
        h = sampler.hashes([seed], [position], vocab)[0]
        u = (h.double() + 0.5) / 2**32
        for token in [0, 1, vocab - 1, *(rng.randrange(vocab) for _ in range(200))]:
            assert float(u[token]) == reference_u(seed, position, token)
        assert int(h.min()) >= 0 and int(h.max()) <= M32
    # rows of a batch are each their own (seed, position)
    rows = sampler.hashes([5, 5, 6], [0, 1, 0], 64)
    assert torch.equal(rows[1], sampler.hashes([5], [1], 64)[0])
    assert len({tuple(r.tolist()) for r in rows}) == 3


def test_the_same_logits_draw_the_same_token_in_float32_and_bfloat16():
    torch.manual_seed(0)
    for position in range(50):
        logits = (torch.randn(1000) * 3).to(torch.bfloat16)
        args = (7, position, 0.8, 0.9)
        assert sampler.draw(logits, *args) == sampler.draw(logits.float(), *args)


def test_draws_over_positions_follow_the_tempered_nucleus():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    counts = Counter(sampler.draw(logits, 11, position, 0.7, 0.9) for position in range(20_000))
    probs = torch.softmax(logits / 0.7, -1)
    above = sampler.nucleus_mass_above(probs)
    inside = above < 0.9
    expected = torch.where(inside, probs, torch.zeros_like(probs))
    expected = expected / expected.sum()
    for token in range(5):
        assert abs(counts[token] / 20_000 - float(expected[token])) < 0.012, (token, counts)
    assert counts[4] == 0  # outside the nucleus: never drawn


def test_temperature_zero_is_the_first_argmax_and_min_tokens_holds_back_eos():
    logits = torch.tensor([1.0, 5.0, 5.0, 0.0])
    assert sampler.draw(logits, 3, 0, 0.0, 1.0) == 1
    eos = {1, 2}
    for position in range(10):
        assert sampler.draw(logits, 3, position, 0.0, 1.0, min_tokens=10, eos=eos) == 0
        assert sampler.draw(logits, 3, position, 1.0, 1.0, min_tokens=10, eos=eos) not in eos
    assert sampler.draw(logits, 3, 10, 0.0, 1.0, min_tokens=10, eos=eos) == 1


def test_min_tokens_is_bounded_by_max_tokens_and_not_asked_with_stop_sequences():
    base = {"task": "chat-llama-3", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8}
    assert ChatRequest(**base, min_tokens=8).min_tokens == 8
    with pytest.raises(ValidationError):
        ChatRequest(**base, min_tokens=9)
    with pytest.raises(ValidationError):
        ChatRequest(**base, min_tokens=4, stop=["\n"])


@pytest.fixture(scope="module")
def chat(tiny_chat):
    return tiny_chat


@pytest.fixture(scope="module")
def reference(tiny_chat_reference):
    return tiny_chat_reference


def request(seed: int, temperature: float = 0.8, top_p: float = 0.95, min_tokens: int = 48):
    return ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": f"go {seed}"}],
                       max_tokens=48, min_tokens=min_tokens, temperature=temperature,
                       top_p=top_p, seed=seed)


def final(engine, asked, tokens):
    return ChatChunk(done=True, prompt_tokens=len(engine.prompt_ids(asked)),
                     completion_tokens=len(tokens))


def test_honest_answers_replay_exactly_and_seed_ignoring_ones_fail(chat, reference):
    rng = random.Random(3)
    ignored_caught = 0
    for seed in range(6):
        asked = request(seed)
        honest = list(chat.tokens(asked))
        assert len(honest) == 48  # min_tokens = max_tokens: no early end of sequence
        e = evidence(reference, asked, honest)
        assert max(e.gaps) == 0 and check_chat(reference, asked, honest,
                                               final(chat, asked, honest)).passed
        # the right model and temperature, another seed (an API forwarder): the logprobs and
        # the statistics are the model's, only the replay sees it
        other = list(chat.tokens(asked.model_copy(update={"seed": rng.getrandbits(62)})))
        e = evidence(reference, asked, other)
        assert statistical(e, asked).passed
        ignored_caught += not check_chat(reference, asked, other, final(chat, asked, other)).passed
    assert ignored_caught == 6


def test_sampling_hotter_than_asked_fails_the_replay(chat, reference):
    """0.5 hotter with the request's own seed draws the same token wherever the seed's noise
    dominates, so one 48-token answer tells it apart in about 60% (15 of 24 measured; it saves
    no GPU time), where an honest answer fails in none."""
    failed = 0
    for seed in range(24):
        asked = request(seed, temperature=0.7)
        hotter = list(chat.tokens(asked.model_copy(update={"temperature": 1.2})))
        failed += not check_chat(reference, asked, hotter, final(chat, asked, hotter)).passed
    assert failed >= 10


def test_an_end_of_sequence_before_min_tokens_fails(chat, reference):
    asked = request(4)
    honest = list(chat.tokens(asked))
    eos = min(reference.eos)
    logprob = float(torch.log_softmax(
        reference.completion_logits(asked, [t.token_id for t in honest[:9]])[8], -1)[eos])
    early = [*honest[:8], ChatToken(token_id=eos, text="", logprob=logprob)]
    verdict = check_chat(reference, asked, early, final(chat, asked, early))
    assert not verdict.passed and "min_tokens" in verdict.reason
    # the same answer to a request without min_tokens ends where an EOS may end it
    free = asked.model_copy(update={"min_tokens": 0})
    assert "min_tokens" not in (check_chat(reference, free, early,
                                           final(chat, free, early)).reason or "")


def test_a_token_outside_the_nucleus_has_an_infinite_gap(chat, reference):
    asked = request(5, temperature=0.5, top_p=0.5)
    honest = list(chat.tokens(asked))
    logits = reference.completion_logits(asked, [t.token_id for t in honest])
    last = int(torch.argmin(logits[0]))  # the least likely token at the first position
    swapped = [ChatToken(token_id=last, text="", logprob=0.0), *honest[1:]]
    assert math.isinf(evidence(reference, asked, swapped).gaps[0])


def test_an_answer_shorter_than_min_tokens_is_invalid_on_receipt(tmp_path):
    """The validator's dispatch, over real HTTP: a miner that answers one token is invalid for a
    request of min_tokens 2, and fine for min_tokens 1."""
    import asyncio

    from bittensor.sp_core import Keypair

    from core.metagraph import Neuron
    from core.records import Outcome
    from core.storage import open_store
    from core.transport.client import SignedClient
    from core.validator.counting import PromptCounter
    from core.validator.traffic import Attempt, Traffic
    from devtools.localproc import free_port
    from tests.servers import serving
    from tests.test_stream_end import chat_miner

    store = open_store(str(tmp_path / "v.sqlite3"))
    app, _ = chat_miner("end")  # one token, then its final line
    with serving(app, free_port()) as url:
        miner = Neuron(1, "5miner", "c", 0.0, False, url, 0)

        async def main():
            client = SignedClient(Keypair.create_from_uri("//V"))
            traffic = Traffic(client, PromptCounter("tiny"), store, None)
            outcomes = []
            for least in (2, 1):
                chat = ChatRequest(task="chat-llama-3", max_tokens=4, min_tokens=least,
                                   messages=[{"role": "user", "content": "hello"}])
                prompt, units = traffic.cost(chat)
                result = await traffic.send(Attempt(miner, chat, prompt, units, 1))
                outcomes.append(result.record.outcome)
            await client.close()
            return outcomes

        assert asyncio.run(main()) == [Outcome.INVALID, Outcome.OK]
    store.close()
