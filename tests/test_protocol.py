import json

import pytest
from bittensor.sp_core import Keypair
from pydantic import ValidationError

from core.declaration import sign
from core.protocol import (
    MAJOR,
    PATHS,
    PROTOCOL_VERSION,
    CapacityRequest,
    CapacityResponse,
    ChatChunk,
    ChatRequest,
    ChatToken,
    ChatTokens,
    ImageResponse,
    ImageToImageRequest,
    InpaintRequest,
    TextToImageRequest,
    major_of,
    task_path,
)
from core.tasks import TASKS, Kind

MESSAGES = [
    CapacityRequest(period=1234),
    CapacityResponse(**sign(Keypair.create_from_uri("//m"), 19, 1234,
                            {"inpaint": 10.0}).model_dump()),
    ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": "héllo ✓"}],
                max_tokens=12, temperature=0.7, top_p=0.9, seed=3),
    ChatChunk.of([ChatToken(token_id=5, text="a", logprob=-0.25)]),
    ChatChunk(done=True, prompt_tokens=4, completion_tokens=9),
    TextToImageRequest(task="proteus-text-to-image", prompt="a cat", steps=10, seed=1),
    ImageToImageRequest(task="proteus-image-to-image", prompt="x", steps=5, init_image="AAAA"),
    InpaintRequest(task="inpaint", prompt="x", steps=5, init_image="AAAA", mask_image="AAAA"),
    ImageResponse(images=["AAAA"], units=10),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_keeps_every_field_and_the_version(message):
    wire = message.model_dump_json()
    back = type(message).model_validate_json(wire)
    assert back == message
    assert back.version == PROTOCOL_VERSION and major_of(back.version) == MAJOR


def test_units():
    assert ChatChunk(done=True, prompt_tokens=4, completion_tokens=9).units == 13
    req = TextToImageRequest(task="inpaint", prompt="x", steps=7, num_images=3)
    assert req.units == 21


@pytest.mark.parametrize("bad", [
    {"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"messages": []},
    {"messages": [{"role": "robot", "content": "x"}]}, {"unknown": 1},
])
def test_invalid_chat_requests_are_refused(bad):
    base = {"task": "chat-llama-3", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({**base, **bad})


def test_image_size_must_be_a_multiple_of_8():
    with pytest.raises(ValidationError):
        TextToImageRequest(task="inpaint", prompt="x", steps=1, height=100)


def test_every_task_has_an_endpoint():
    assert {task_path(t) for t in TASKS} == set(PATHS.values())
    assert PATHS[Kind.CHAT] == "/chat"


def test_major_of():
    assert major_of("4.1.2") == 4 and major_of("junk") is None and major_of("") is None


@pytest.mark.parametrize("bad", [{"period": -1}, {"period": 2**41}, {"period": "soon"},
                                 {"unknown": 1}])
def test_invalid_capacity_requests_are_refused(bad):
    with pytest.raises(ValidationError):
        CapacityRequest.model_validate(bad)


TOKENS = [ChatToken(5, "a", -0.25), ChatToken(9, "", -1.5), ChatToken(0, "ü\n", 0.0)]


def test_a_chat_line_carries_its_tokens_in_columns_and_gives_them_back():
    line = ChatChunk.of(TOKENS)
    assert (line.ids, line.logprobs, line.text, line.lengths) == ([5, 9, 0], [-0.25, -1.5, 0.0],
                                                                  "aü\n", [1, 0, 2])
    assert ChatChunk.model_validate_json(line.model_dump_json()).tokens == TOKENS


def test_chat_tokens_keep_lines_in_columns_and_read_as_tokens():
    kept = ChatTokens()
    for part in (TOKENS[:1], TOKENS[1:]):
        kept.add(ChatChunk.of(part))
    assert len(kept) == 3 and list(kept) == TOKENS and kept[-1] == TOKENS[-1]
    assert kept[1:] == TOKENS[1:]
    assert kept.span(1).tokens == TOKENS[1:] and kept.span(0, 1).tokens == TOKENS[:1]
    kept.add(ChatChunk.of([ChatToken(3, "x", -2.0)]))  # read again after a line was added
    assert len(list(kept)) == 4 and kept[-1].text == "x" and kept.span(2).text == "ü\nx"


@pytest.mark.parametrize("bad", [
    {"ids": [1, 2], "logprobs": [-1.0], "text": "ab", "lengths": [1, 1]},
    {"ids": [1], "logprobs": [-1.0], "text": "ab", "lengths": [1]},
    {"ids": [1], "logprobs": [-1.0], "text": "a", "lengths": [1, 0]},
    {"ids": [1], "logprobs": [0.5], "text": "a", "lengths": [1]},
    {"ids": [1], "logprobs": [-1.0], "text": "a" * 300, "lengths": [300]},
    {"tokens": [{"token_id": 1, "text": "a", "logprob": -1.0}]},  # protocol 7's line
])
def test_chat_lines_whose_columns_disagree_or_overflow_are_refused(bad):
    with pytest.raises(ValidationError):
        ChatChunk.model_validate_json(json.dumps(bad))


def test_a_lone_surrogate_in_a_chat_line_is_refused_by_the_parser():
    line = json.dumps({"ids": [1], "logprobs": [-1.0], "text": "\udcff", "lengths": [1]})
    with pytest.raises(ValidationError):
        ChatChunk.model_validate_json(line)
