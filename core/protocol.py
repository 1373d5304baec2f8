"""The synapses (docs/protocol.md §7): pydantic request/response models, one endpoint each, all
versioned.

Miner and validator meet only here. A message of another major version is refused with a clear
4xx by the miner and skipped by the validator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, overload

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from core.declaration import MAX_PERIOD, SignedDeclaration
from core.tasks import TASKS, Kind

# 8: chat lines carry their tokens in columns (``ChatChunk``)
PROTOCOL_VERSION = "9.0.0"
MAJOR = int(PROTOCOL_VERSION.split(".")[0])

# One endpoint per synapse; the task kind names the endpoint of its work.
CAPACITY_PATH = "/capacity"
TRAJECTORY_PATH = "/trajectory"  # a validator opens steps of an image answer's trajectory (§8)
PATHS: dict[Kind, str] = {
    Kind.CHAT: "/chat",
    Kind.TEXT_TO_IMAGE: "/text-to-image",
    Kind.IMAGE_TO_IMAGE: "/image-to-image",
    Kind.INPAINT: "/inpaint",
}

MAX_PROMPT_CHARS = 16_000
MAX_IMAGE_B64_CHARS = 8_000_000
# Bounds on what a miner may answer (docs/protocol.md §5: nothing a peer sends is trusted before
# it is checked). Every integer on the wire is bounded, so no figure overflows a database column,
# and every answer has a size the validator reads no further than.
MAX_COUNT = 2**24  # tokens or steps in one answer: far above any honest request's
# characters of one token's text (the longest real vocabulary entries are ~128)
MAX_TOKEN_TEXT = 256
MAX_COMPLETION = 4096  # tokens a chat request may ask for
MAX_STOPS, MAX_STOP_CHARS = 4, 64  # a chat request's stop sequences
MAX_TOKENS_PER_LINE = 128  # a miner writes a larger batch as several chat lines
MAX_CHAT_LINE_BYTES = 256 * 1024  # > MAX_TOKENS_PER_LINE tokens of MAX_TOKEN_TEXT, JSON-escaped
MAX_CAPACITY_BYTES = 64 * 1024  # nine tasks' declarations take < 1 KiB


def _unicode(text: str) -> str:
    """JSON can carry lone surrogates (\\udcff) that no tokenizer or encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return text


# text a peer sends: bounded, and valid Unicode
Unicode = AfterValidator(_unicode)
TaskId = Annotated[str, Field(max_length=64), Unicode]
PromptText = Annotated[str, Field(max_length=MAX_PROMPT_CHARS), Unicode]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), Unicode]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS), Unicode]


def spread_text(text: str, n: int) -> list[str]:
    """A batch's text laid over its ``n`` tokens in pieces of at most MAX_TOKEN_TEXT characters,
    the rest on the last (engines and servers give text per batch, not per token; the joined
    text is exact)."""
    return [text[i * MAX_TOKEN_TEXT:None if i == n - 1 else (i + 1) * MAX_TOKEN_TEXT]
            for i in range(n)]


def stop_at(text: str, stop: list[str]) -> int | None:
    """Where ``text`` meets its first stop sequence (the index the sequence starts at), or None.

    The rule every engine and the checker share: a completion ends with the token that completes
    a stop sequence; the tokens (all of them charged and checked) keep it, and the validator's API
    gives its client the text before it, as OpenAI's does."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(found) if found else None


def major_of(version: str) -> int | None:
    """The major number of a version string, or None when it is not one."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def task_path(task_id: str) -> str:
    return PATHS[TASKS[task_id].kind]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    version: Annotated[str, Field(max_length=32)] = PROTOCOL_VERSION


class CapacityRequest(Message):
    """A validator opening ``period`` asks for the miner's declaration of it (None: of the
    period the miner is in)."""

    period: Annotated[int, Field(ge=0, le=MAX_PERIOD)] | None = None


class CapacityResponse(Message, SignedDeclaration):
    """A miner's declaration for the period asked, signed by its hotkey: per task, the most
    units it serves in that period, all validators together; each validator takes its stake
    share (docs/protocol.md §3.2). The same one for every validator all period
    (``core.miner.latch``)."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: PromptText


class ChatRequest(Message):
    task: TaskId
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_COMPLETION)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    # sequences that end the completion (``stop_at``): at most 4 of 1-64 characters, as OpenAI's
    stop: Annotated[list[StopText], Field(max_length=MAX_STOPS)] = []
    # tokens before which no end-of-sequence id is drawn (core/sampler.py) and the completion may
    # not end: an answer of fewer is invalid on receipt. Synthetic requests fix their length with
    # it. Not with stop sequences: a stop sequence may not end such a request early, and engines
    # differ on where a sequence straddling min_tokens ends it, so the two are not asked together.
    min_tokens: Annotated[int, Field(ge=0, le=MAX_COMPLETION)] = 0

    @model_validator(mode="after")
    def _min_tokens_fit(self) -> ChatRequest:
        if self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must be at most max_tokens")
        if self.min_tokens and self.stop:
            raise ValueError("min_tokens and stop sequences are not asked together")
        return self

    def prompt_allowance(self) -> int:
        """A generous estimate of the prompt's tokens before it is tokenized: a token per 2
        characters, plus the chat template."""
        return sum(len(m.content) for m in self.messages) // 2 + 32

    def units_allowance(self) -> int:
        """Units a miner reserves against the caller's share before the prompt is tokenized; the
        unused part is given back when the answer's count is known. A validator reserves at
        least this much too, so a miner never refuses what the validator's budget allows."""
        return self.max_tokens + self.prompt_allowance()


@dataclass(frozen=True, slots=True)
class ChatToken:
    """One token of a completion: its id and text and the model's log-probability of it. What
    engines make and the checker and the API read; on the wire tokens travel in columns
    (``ChatChunk``), which is where a miner's figures are checked."""

    token_id: int
    text: str
    logprob: float


TokenId = Annotated[int, Field(ge=0, lt=MAX_COUNT)]
Logprob = Annotated[float, Field(ge=-1e6, le=1e-3)]  # a log-probability: at most 0 (+ rounding)
TextLength = Annotated[int, Field(ge=0, le=MAX_TOKEN_TEXT)]


class ChatChunk(Message):
    """A line of the chat stream: tokens in columns, then a final line with ``done`` and the
    units charged (docs/protocol.md, "Chat lines").

    Token ``i`` is ``ids[i]`` with log-probability ``logprobs[i]`` and the next ``lengths[i]``
    characters (code points) of ``text``. Columns, not an object per token: the validator reads
    a window's worth of lines, and each column is checked element by element inside pydantic's
    parser, with no Python object per token (scripts/bench_wire.py: protocol 7's object per
    token cost 1.5x as much at 10 tokens a line, 3x at 128). ``of`` makes one from tokens,
    ``tokens`` gives them back. No ``__init__`` of its own: pydantic would then call it on every
    line parsed, which doubled the cost of reading one."""

    ids: Annotated[list[TokenId], Field(max_length=MAX_COMPLETION)] = []
    logprobs: Annotated[list[Logprob], Field(max_length=MAX_COMPLETION)] = []
    # no Unicode check: pydantic's JSON parser refuses lone surrogates itself
    text: Annotated[str, Field(max_length=MAX_COMPLETION * MAX_TOKEN_TEXT)] = ""
    lengths: Annotated[list[TextLength], Field(max_length=MAX_COMPLETION)] = []
    done: bool = False
    prompt_tokens: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    completion_tokens: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0

    @classmethod
    def of(cls, tokens: Sequence[ChatToken]) -> ChatChunk:
        """A line of ``tokens`` (an engine's batch), checked as a validator checks it."""
        return cls(ids=[t.token_id for t in tokens], logprobs=[t.logprob for t in tokens],
                   text="".join(t.text for t in tokens), lengths=[len(t.text) for t in tokens])

    @model_validator(mode="after")
    def _columns_agree(self) -> ChatChunk:
        n = len(self.ids)
        if len(self.logprobs) != n or len(self.lengths) != n:
            raise ValueError("ids, logprobs and lengths must have one entry per token")
        if sum(self.lengths) != len(self.text):
            raise ValueError("lengths must add up to the text's length")
        return self

    @property
    def tokens(self) -> list[ChatToken]:
        """The line's tokens one by one (an object each: for the checker and the API's relay,
        not for every line of a window)."""
        return list(_tokens(self.ids, self.logprobs, self.lengths, self.text))

    @property
    def units(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _tokens(ids: list[int], logprobs: list[float], lengths: list[int], text: str
            ) -> Iterator[ChatToken]:
    at = 0
    for token_id, logprob, n in zip(ids, logprobs, lengths, strict=True):
        yield ChatToken(token_id, text[at:at + n], logprob)
        at += n


class ChatTokens(Sequence[ChatToken]):
    """A chat answer's tokens as its lines arrive, kept in the lines' columns: adding a line is a
    few list extends, whatever its length. Read as a sequence of ChatToken (the checker, on the
    answers it draws), made once on first reading."""

    __slots__ = ("ids", "logprobs", "lengths", "_texts", "_made")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.lengths: list[int] = []
        self._texts: list[str] = []
        self._made: list[ChatToken] | None = None

    def add(self, chunk: ChatChunk) -> None:
        self.ids += chunk.ids
        self.logprobs += chunk.logprobs
        self.lengths += chunk.lengths
        self._texts.append(chunk.text)
        self._made = None

    def span(self, start: int, stop: int | None = None) -> ChatChunk:
        """Tokens ``start`` to ``stop`` as one line (the miner's lines of what its engine made,
        the organic API's of what its client has not had yet), checked again as a line: it
        costs less than pydantic's ``model_construct`` (2.2 against 3.6 µs)."""
        stop = len(self.ids) if stop is None else stop
        if len(self._texts) > 1:
            self._texts = ["".join(self._texts)]
        text = self._texts[0] if self._texts else ""
        at = sum(self.lengths[:start])
        lengths = self.lengths[start:stop]
        return ChatChunk(ids=self.ids[start:stop], logprobs=self.logprobs[start:stop],
                         lengths=lengths, text=text[at:at + sum(lengths)])

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> ChatToken: ...

    @overload
    def __getitem__(self, index: slice) -> list[ChatToken]: ...

    def __getitem__(self, index: int | slice) -> ChatToken | list[ChatToken]:
        return self._tokens()[index]

    def __iter__(self) -> Iterator[ChatToken]:
        return iter(self._tokens())

    def _tokens(self) -> list[ChatToken]:
        if self._made is None:
            self._made = list(_tokens(self.ids, self.logprobs, self.lengths,
                                      "".join(self._texts)))
        return self._made


class ImageRequest(Message):
    task: TaskId
    prompt: Prompt
    negative_prompt: PromptText = ""
    steps: Annotated[int, Field(ge=1, le=200)]
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    height: Annotated[int, Field(ge=64, le=2048, multiple_of=8)] = 1024
    width: Annotated[int, Field(ge=64, le=2048, multiple_of=8)] = 1024
    guidance_scale: Annotated[float, Field(ge=0.0, le=30.0)] = 7.0
    num_images: Annotated[int, Field(ge=1, le=4)] = 1

    @property
    def units(self) -> int:
        """docs/protocol.md §1: image tasks count denoising steps x images."""
        return self.steps * self.num_images


class TextToImageRequest(ImageRequest):
    pass


class ImageToImageRequest(ImageRequest):
    init_image: Annotated[str, Field(max_length=MAX_IMAGE_B64_CHARS)]
    strength: Annotated[float, Field(gt=0.0, le=1.0)] = 0.75


class InpaintRequest(ImageRequest):
    init_image: Annotated[str, Field(max_length=MAX_IMAGE_B64_CHARS)]
    mask_image: Annotated[str, Field(max_length=MAX_IMAGE_B64_CHARS)]
    strength: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0


Digest = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]  # sha256, lower-case hex
MAX_STEPS = 200  # denoising steps a request may ask for
# SD and SDXL latents are 4 x height/8 x width/8 (the tiny CPU pipeline's VAE downscales 2)
LATENT_CHANNELS, MIN_LATENT_SCALE = 4, 2
# base64 characters of one image's float32 latent: SDXL's at the largest request (2048 x 2048)
MAX_LATENT_B64_CHARS = 4 * -(-LATENT_CHANNELS * (2048 // 8) ** 2 * 4 // 3)
MAX_OPENED = 32  # latents one opening may ask for (the checker asks at most 2 x 8 + 1)


def latent_digest(raw: bytes) -> str:
    """A step's commitment: sha256 of one image's latent as contiguous little-endian float32."""
    return hashlib.sha256(raw).hexdigest()


def commitment_key(trajectory: list[list[str]]) -> str:
    """The name an answer's trajectory is kept and opened under: sha256 over its digests, image
    after image, step after step (the validator and the miner compute it alike)."""
    return hashlib.sha256("".join("".join(t) for t in trajectory).encode()).hexdigest()


def pipeline_steps(request: ImageRequest) -> int:
    """Denoising steps the pipeline runs for ``request``: all of them from noise; from an init
    image, ``steps x strength`` as diffusers counts it (``get_timesteps``)."""
    strength = getattr(request, "strength", None)
    if strength is None:
        return request.steps
    return min(int(request.steps * strength), request.steps)


# An image answer's thumbnail: the image resized (PIL, bilinear) to THUMBNAIL_PX square, RGB, as
# a PNG: 3 KiB of pixels at most, what the checker compares at 32x32 grey anyway
THUMBNAIL_PX = 32
MAX_THUMBNAIL_B64_CHARS = 8192  # an RGB 32x32 PNG stored uncompressed takes < 4,400
PngB64 = Annotated[str, Field(max_length=MAX_IMAGE_B64_CHARS)]


def png_digest(png: bytes) -> str:
    """What an answer commits of a full image: sha256 of its PNG file's bytes."""
    return hashlib.sha256(png).hexdigest()


class ImageProof(BaseModel):
    """One image of an answer by reference (docs/protocol.md §8): its PNG's ``png_digest``, its
    size (checked against the request on receipt) and a THUMBNAIL_PX thumbnail, base64 PNG."""

    model_config = ConfigDict(extra="forbid")
    sha256: Digest
    width: Annotated[int, Field(ge=1, le=2048)]
    height: Annotated[int, Field(ge=1, le=2048)]
    thumbnail: Annotated[str, Field(max_length=MAX_THUMBNAIL_B64_CHARS)]


class ImageResponse(Message):
    """An image answer, by reference: per image a bound proof (``ImageProof``) and the trajectory
    commitment; the miner keeps the full PNGs with the latents and sends them when the validator
    opens the answer (TRAJECTORY_PATH). A few KiB whatever the image's size, where the PNGs were
    1-2 MB at 1024 px (scripts/bench_image_bytes.py)."""

    proofs: Annotated[list[ImageProof], Field(max_length=4)] = []
    units: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    # per image, the digest of its latent after each denoising step (``latent_digest``), in
    # order: the miner keeps the latents and opens the steps a validator asks (TRAJECTORY_PATH)
    trajectory: Annotated[list[Annotated[list[Digest], Field(max_length=MAX_STEPS)]],
                          Field(max_length=4)] = []
    # the full PNGs, base64: never from a miner (an answer carrying any is invalid on receipt);
    # the validator fills them in once fetched and checked against the proofs, for its API
    images: Annotated[list[PngB64], Field(max_length=4)] = []

    @staticmethod
    def max_bytes(request: ImageRequest) -> int:
        """The most bytes an honest answer to ``request`` takes: read no further."""
        return request.num_images * (MAX_THUMBNAIL_B64_CHARS + 256 + 67 * MAX_STEPS) + 4096


class TrajectoryRequest(Message):
    """Open the answer whose trajectory has ``key`` (``commitment_key``): its full PNGs, and its
    latents after the listed steps (1 = after the first step, up to the step count; none: the
    PNGs alone, as for organic traffic), every image's."""

    task: TaskId
    key: Digest
    latents: Annotated[list[Annotated[int, Field(ge=1, le=MAX_STEPS)]],
                       Field(max_length=MAX_OPENED)]


class TrajectoryResponse(Message):
    """Per asked latent, in the order asked, per image: the latent as base64 of its contiguous
    little-endian float32 bytes (what its digest hashes); and per image, in the answer's order,
    its full PNG as base64 (what its proof's ``sha256`` hashes)."""

    latents: Annotated[list[Annotated[list[Annotated[str, Field(
        max_length=MAX_LATENT_B64_CHARS)]], Field(max_length=4)]], Field(max_length=MAX_OPENED)]
    images: Annotated[list[PngB64], Field(max_length=4)] = []

    @staticmethod
    def max_bytes(request: ImageRequest, opened: int) -> int:
        """The most bytes an honest opening of ``opened`` latents of ``request`` takes, its PNGs
        included."""
        raw = LATENT_CHANNELS * (request.height // MIN_LATENT_SCALE) * (
            request.width // MIN_LATENT_SCALE) * 4
        return request.num_images * (opened * (min(4 * -(-raw // 3), MAX_LATENT_B64_CHARS) + 8)
                                     + MAX_IMAGE_B64_CHARS + 8) + 4096


class ErrorResponse(Message):
    error: str


def max_request_bytes(kind: Kind) -> int:
    """The largest body a valid request of ``kind`` can have, JSON-escaped at worst (6 bytes a
    character): a miner reads no more of a body sent to that endpoint."""
    text = MAX_PROMPT_CHARS * 6
    if kind is Kind.CHAT:
        return 64 * (text + 256) + 4096
    images = {Kind.TEXT_TO_IMAGE: 0, Kind.IMAGE_TO_IMAGE: 1, Kind.INPAINT: 2}[kind]
    return 2 * text + images * MAX_IMAGE_B64_CHARS + 4096


TaskRequest = ChatRequest | ImageRequest  # a request for a task's work, of either kind

REQUEST_MODELS: dict[Kind, type[ChatRequest] | type[ImageRequest]] = {
    Kind.CHAT: ChatRequest,
    Kind.TEXT_TO_IMAGE: TextToImageRequest,
    Kind.IMAGE_TO_IMAGE: ImageToImageRequest,
    Kind.INPAINT: InpaintRequest,
}
