"""Talking to a miner: asking for its capacities, and one request's exchange read within its
bounds and judged (docs/protocol.md §6 outcomes). Nothing a miner says is taken on its word:
every answer is read up to the size its message allows and no longer than its time, and the
units are the ones the validator counts (``core.validator.counting``); a miner's figure that
differs is invalid.

Recording and settling each request is ``core.validator.traffic``'s: this module only talks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from functools import cache, partial

import aiohttp
from pydantic import ValidationError

from core.chain import Neuron
from core.checking.images import png_size
from core.declaration import SignedDeclaration, problem
from core.errors import PeerFault
from core.protocol import (
    CAPACITY_PATH,
    MAJOR,
    MAX_CAPACITY_BYTES,
    MAX_CHAT_LINE_BYTES,
    THUMBNAIL_PX,
    CapacityRequest,
    CapacityResponse,
    ChatChunk,
    ChatRequest,
    ChatTokens,
    ImageRequest,
    ImageResponse,
    major_of,
    task_path,
)
from core.records import Outcome
from core.tasks import TASKS
from core.transport.client import Lines, SignedClient

log = logging.getLogger("validator.dispatch")
CHAT_STALL_S = 10.0  # after its first tokens, a chat stream silent this long has stalled
PAUSE_MAX_S = 1.0  # the longest a synthetic answer's reader waits between reads (``pause``)
PAUSE_MIN_S = 0.05  # a shorter wait is not worth a timer
DRAIN_S = 0.1  # after the final line, the end of the answer is awaited this long: read to its
#                end, the connection goes back to the pool; dropped, every request costs a new one


def shown(text: str, limit: int = 40) -> str:
    """Text a peer chose, safe for a log line: escaped (no newlines or terminal escapes), cut."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


async def fetch_capacities(client: SignedClient, neurons: list[Neuron], timeout: float,
                           netuid: int, period: int) -> dict[str, SignedDeclaration]:
    """Every serving neuron's declaration of ``period``, signed by its hotkey, asked
    concurrently, each answer read up to MAX_CAPACITY_BYTES. Silent, oversized or mismatched
    miners, and declarations that are not its own hotkey's signature of this netuid and period,
    are left out (logged): such a miner declared nothing to this validator this period. Refusals
    of this validator's signature are where a broken clock, hotkey or registration shows: their
    miners declare 0 to it (and are sent nothing), and when most miners refuse it the log says
    so."""
    refused: list[int] = []
    ask = CapacityRequest(period=period)

    async def one(n: Neuron) -> SignedDeclaration | None:
        try:
            reply = await client.post(n.endpoint, CAPACITY_PATH, n.hotkey, ask, timeout,
                                      MAX_CAPACITY_BYTES)
            if reply.status != 200:
                log.info("uid %d: capacity answered %d", n.uid, reply.status)
                if reply.status in (401, 403):
                    refused.append(n.uid)
                return None
            answer = CapacityResponse.model_validate_json(reply.body)
        except Exception as e:  # a miner's answer can fail in any way: it only leaves it out
            log.info("uid %d: no capacity (%s)", n.uid, type(e).__name__)
            return None
        if major_of(answer.version) != MAJOR:
            log.info("uid %d: skipped (version %s)", n.uid, shown(answer.version))
            return None
        if (why := problem(answer, netuid, period, n.hotkey)) is not None:
            log.warning("uid %d: its declaration does not count (%s): it declares nothing to this "
                     "validator this period", n.uid, shown(why, 120))
            return None
        return answer.declaration()

    results = await asyncio.gather(*(one(n) for n in neurons if n.endpoint))
    declared = {d.hotkey: d for d in results if d}
    if refused and len(refused) >= len(declared):
        log.error("%d miners refused this validator's signed capacity call (401/403), %d "
                  "answered: check its clock, hotkey, registration and permit", len(refused),
                  len(declared))
    return declared


def timeout_for(task_id: str, units: float) -> float:
    """Past twice the expected time the speed factor is 0: waiting longer earns nothing."""
    return 2 * TASKS[task_id].expected_seconds(units) + 2.0


class MinerFailed(PeerFault):
    """A miner's answer that cannot be used; ``outcome`` says how it failed."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.value)
        self.outcome = outcome


def status_outcome(status: int) -> Outcome:
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (401, 403):
        return Outcome.UNAUTHORIZED
    return Outcome.SERVER_ERROR if status >= 500 else Outcome.INVALID


def failure_outcome(error: BaseException) -> Outcome:
    """How an exchange that raised ended: a miner's own verdict, a timeout, a connection that
    failed (5xx), or anything else its answer did (oversized, malformed): invalid."""
    if isinstance(error, MinerFailed):
        return error.outcome
    if isinstance(error, TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(error, (aiohttp.ClientConnectionError, ConnectionError)):
        return Outcome.SERVER_ERROR
    return Outcome.INVALID


class ChatLines:
    """A chat answer's lines judged one by one as they arrive: ``read`` raises MinerFailed for a
    malformed line (columns that disagree in length or with the text, a figure out of its
    bounds: ``ChatChunk``), more tokens than asked (or more lines than tokens and the final
    one), a final line whose counts differ from the validator's (``prompt_tokens`` as counted
    here, the completion as received) or that ends before ``message.min_tokens`` (nothing may
    end such a request early: no end of sequence, and no stop sequence, which it cannot
    carry). A line's text is checked against its ids by ``ChatText`` (``ChatAnswer`` reads
    each line through both)."""

    __slots__ = ("message", "prompt_tokens", "tokens", "lines")

    def __init__(self, message: ChatRequest, prompt_tokens: int):
        self.message, self.prompt_tokens = message, prompt_tokens
        self.tokens = self.lines = 0

    def read(self, line: bytes) -> ChatChunk:
        try:
            chunk = ChatChunk.model_validate_json(line)
        except ValidationError:
            raise MinerFailed(Outcome.INVALID) from None
        self.tokens += len(chunk.ids)
        self.lines += 1
        message = self.message
        if self.tokens > message.max_tokens or self.lines > message.max_tokens + 1:
            raise MinerFailed(Outcome.INVALID)  # more than asked, or lines that carry nothing
        if chunk.done and (chunk.completion_tokens != self.tokens
                           or chunk.prompt_tokens != self.prompt_tokens
                           or self.tokens < message.min_tokens):
            raise MinerFailed(Outcome.INVALID)
        return chunk


class ChatText:
    """A chat answer's text bound to its token ids (docs/protocol.md §5): the validator decodes
    the ids itself, line by line, with the task's tokenizer (the one it counts prompts with),
    and ``read`` raises MinerFailed (invalid) for a line whose text is not what its ids decode
    to, before anything of that line is kept or relayed.

    The decode is vLLM's incremental one at line granularity, without the tokenizer's clean-up
    of spaces: each line decodes a window from the last committed offset (with context before
    it, so a tokenizer that strips a leading space decodes it in place) and commits the new
    text unless it ends in an incomplete character (U+FFFD: a multi-byte character split over
    tokens), held back until the tokens that complete it arrive. After each line the miner's
    text so far must be the committed text, and may go on into the held-back text (an engine
    holds a step back while it ends in an incomplete character; its steps need not be the
    lines'), never past it: text that is not the ids' is never accepted, however it is split.
    So the client's text, and the stop sequences the API finds in it, are the ids'. A decoder
    that strips the completion's first space without context may leave it out (once)."""

    __slots__ = ("decode", "ids", "prefix", "read_at", "unsaid", "pending", "into", "began")

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "_tokenizer", None)  # a fast tokenizer's own (Rust) decoder:
        if backend is not None:  # no clean-up of spaces, less than half the cost of ``decode``
            self.decode = partial(backend.decode, skip_special_tokens=True)
        else:
            self.decode = partial(tokenizer.decode, skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)
        self.ids: list[int] = list(_context(tokenizer))
        self.prefix, self.read_at = 0, len(self.ids)
        self.unsaid = ""  # committed text the miner has not sent yet
        self.pending = ""  # held back: the text after the committed, ending incomplete
        self.into = ""  # what of ``pending`` the miner has sent already
        self.began = False  # the miner has sent text

    def read(self, chunk: ChatChunk) -> ChatChunk:
        if chunk.ids:
            self.ids += chunk.ids
            window = self.ids[self.prefix:]
            before = self.decode(window[:self.read_at - self.prefix])
            new = self.decode(window)[len(before):]
            if not new.startswith(self.into):
                self._lie(chunk.text, new)
            if new.endswith("\ufffd"):
                self.pending = new
            else:
                self.unsaid += new[len(self.into):]
                self.pending = self.into = ""
                self.prefix, self.read_at = self.read_at, len(self.ids)
        said = chunk.text
        if said and not self.began:
            self.began = True
            if self.unsaid[:1] == " " and said[:1] != " ":
                self.unsaid = self.unsaid[1:]
        unsaid = self.unsaid
        if len(said) <= len(unsaid):
            if not unsaid.startswith(said):
                self._lie(said, unsaid)
            self.unsaid = unsaid[len(said):]
        else:
            if not said.startswith(unsaid) or not self.pending.startswith(
                    said[len(unsaid):], len(self.into)):
                self._lie(said, unsaid + self.pending[len(self.into):])
            self.into += said[len(unsaid):]
            self.unsaid = ""
        if self.unsaid:  # an engine never holds back complete text
            self._lie(said, self.unsaid)
        return chunk

    @staticmethod
    def _lie(said: str, decoded: str):
        log.info("a chat line's text is not its ids' (%s; decoded %s)", shown(said),
                 shown(decoded))
        raise MinerFailed(Outcome.INVALID)


@cache
def _context(tokenizer) -> tuple[int, ...]:
    """The ids ``ChatText`` decodes a completion after (a tokenizer that strips a leading space
    keeps it there): encoded once per tokenizer, not per answer (a quarter of a millisecond)."""
    return tuple(tokenizer.encode(".", add_special_tokens=False))


class ChatAnswer:
    """A chat answer judged as its bytes arrive (docs/protocol.md §5): split into lines of at
    most MAX_CHAT_LINE_BYTES, each judged (``ChatLines``) and its text checked against its ids
    (``ChatText``) before its tokens are kept in ``tokens``; ``final`` is the final line once it
    came, and nothing after it is read. Synchronous: the lines a block brings are handled in
    one step, with no await per line (a window's reading is most of the validator's CPU,
    ``scripts/bench_window.py``)."""

    __slots__ = ("lines", "judge", "text", "tokens", "final")

    def __init__(self, message: ChatRequest, prompt_tokens: int, tokenizer, tokens: ChatTokens):
        self.lines = Lines(MAX_CHAT_LINE_BYTES)
        self.judge = ChatLines(message, prompt_tokens)
        self.text = ChatText(tokenizer)
        self.tokens = tokens
        self.final: ChatChunk | None = None

    def feed(self, block: bytes) -> bool:
        """Read ``block``; whether it brought tokens. Raises MinerFailed for a line that fails."""
        return self._read(self.lines.feed(block))

    def end(self) -> None:
        """The answer ended: raises MinerFailed unless its final line came."""
        self._read(self.lines.end())
        if self.final is None:
            raise MinerFailed(Outcome.INVALID)

    def _read(self, lines: Iterable[bytes]) -> bool:
        before = len(self.tokens)
        if self.final is None:
            for line in lines:
                chunk = self.text.read(self.judge.read(line))
                self.tokens.add(chunk)
                if chunk.done:
                    self.final = chunk
                    break  # what follows is not read
        return len(self.tokens) > before


@contextlib.asynccontextmanager
async def chat_answer(client: SignedClient, neuron: Neuron, message: ChatRequest
                      ) -> AsyncIterator[aiohttp.StreamReader]:
    """The miner's chat answer to ``message``, its body to be read (``ChatAnswer``) within its
    time limit; raises MinerFailed for an error status."""
    async with client.opened(neuron.endpoint, task_path(message.task), neuron.hotkey, message,
                             timeout_for(message.task, message.max_tokens)) as r:
        if r.status != 200:
            raise MinerFailed(status_outcome(r.status))  # the status says it all
        yield r.content


def pause(message: ChatRequest, tokens: int, until_expected: float) -> float:
    """Seconds a reader of a synthetic answer may wait before reading on, given the ``tokens``
    it has and the seconds left ``until_expected``, the request's expected time (its speed
    factor's, ``core.scoring``): half the time the rest of ``message.min_tokens`` takes at the
    task's expected pace, at most PAUSE_MAX_S, never past the expected time, 0 under
    PAUSE_MIN_S (docs/protocol.md §5). The bytes that come meanwhile wait in the connection's
    buffer and are read together, so a window's reader wakes a few times per answer, not at
    every line. An answer seen to end at the end of a pause ended before its expected time, so
    the pause costs it nothing; past its expected time, and for an answer that may end any time
    (stop sequences: no ``min_tokens``), the reader reads line by line."""
    left = message.min_tokens - tokens
    if tokens == 0 or left <= 0:
        return 0.0
    wait = min(PAUSE_MAX_S, 0.5 * left * TASKS[message.task].seconds_per_unit, until_expected)
    return wait if wait >= PAUSE_MIN_S else 0.0


async def drain(body: aiohttp.StreamReader) -> None:
    """After the final line: the rest of the answer read within DRAIN_S, so that its
    connection is reused (an honest miner's answer ends with its final line). Whatever a miner
    does then changes nothing of the request's outcome."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_S):
            while await body.readany():
                pass


async def image(client: SignedClient, neuron: Neuron, message: ImageRequest) -> ImageResponse:
    """The miner's answer by reference (docs/protocol.md §8), read up to what ``message``
    allows; raises MinerFailed unless it proves the requested number of images of the requested
    width and height, each with a THUMBNAIL_PX PNG thumbnail (its header, read before any pixel),
    for the requested steps, and carries no PNGs of its own (those are fetched: ``openings``)."""
    reply = await client.post(neuron.endpoint, task_path(message.task), neuron.hotkey, message,
                              timeout_for(message.task, message.units),
                              ImageResponse.max_bytes(message))
    if reply.status != 200:
        raise MinerFailed(status_outcome(reply.status))
    thumbnail = (THUMBNAIL_PX, THUMBNAIL_PX)
    try:
        answer = ImageResponse.model_validate_json(reply.body)
        thumbnails = [png_size(base64.b64decode(p.thumbnail, validate=True))
                      for p in answer.proofs]
    except (ValidationError, ValueError):  # binascii.Error is a ValueError
        raise MinerFailed(Outcome.INVALID) from None
    if (answer.units != message.units or len(answer.proofs) != message.num_images
            or answer.images or any(size != thumbnail for size in thumbnails)
            or any((p.width, p.height) != (message.width, message.height)
                   for p in answer.proofs)):
        raise MinerFailed(Outcome.INVALID)
    return answer
