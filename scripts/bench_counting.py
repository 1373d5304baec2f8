"""What it costs the validator to count the units it pays for, each figure a line
`name: value unit`, the reference measured in the same run:

- count_prompt: one chat prompt counted with the task's tokenizer (the local subnet's byte-level
  tokenizer: one token per byte, the slowest case), for a synthetic prompt and a 4,000-character
  one.
- validator_cpu_per_chat_request: the validator process's CPU time per synthetic chat request of
  300 units (a signed request, the streamed answer read within its bounds and checked, the
  record and settlement committed to SQLite), against a simulated miner in another process on
  127.0.0.1; `counting` counts the prompt, `trusting` takes the same count from a table made
  before the run (what a validator that took the miner's figure would spend), and their ratio
  (each the mean of two runs, in the order trusting, counting, counting, trusting).

    python scripts/bench_counting.py [--requests 400] [--quick]
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import parser
from core.validator.counting import PromptCounter

TASK = "chat-llama-3"


def serve_simulated_miner(port: int) -> None:
    """A miner answering every chat request at once with max_tokens tokens and honest counts."""
    from aiohttp import web

    from core.protocol import ChatChunk, ChatRequest, ChatToken

    counter = PromptCounter("tiny")

    async def chat(request: web.Request) -> web.StreamResponse:
        message = ChatRequest.model_validate_json(await request.read())
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        token = ChatToken(token_id=69, text="a", logprob=-0.5)  # what id 69 decodes to
        left = message.max_tokens
        while left:
            n = min(left, 16)
            await response.write(ChatChunk.of([token] * n).model_dump_json().encode() + b"\n")
            left -= n
        final = ChatChunk(done=True, prompt_tokens=counter.prompt_tokens(message),
                          completion_tokens=message.max_tokens)
        await response.write(final.model_dump_json().encode() + b"\n")
        return response

    async def main():
        app = web.Application(client_max_size=2**24)
        app.router.add_post("/chat", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


class TrustingCounter(PromptCounter):
    """The reference: each prompt's count looked up, as if taken from the miner's answer."""

    def __init__(self, counts: dict[str, int]):
        super().__init__("tiny")
        self.counts = counts

    def prompt_tokens(self, request) -> int:
        return self.counts[request.messages[0].content]


def count_figures(repeats: int) -> None:
    from core.protocol import ChatMessage, ChatRequest
    from core.request_shapes import prompt

    counter = PromptCounter("tiny")
    rng = random.Random(0)
    for label, text in (
        ("synthetic", prompt(rng)),
        ("4k_chars", " ".join(prompt(rng, 8) for _ in range(70))[:4000]),
    ):
        request = ChatRequest(task=TASK, messages=[ChatMessage(role="user", content=text)])
        counter.prompt_tokens(request)
        t = time.perf_counter()
        for _ in range(repeats):
            counter.prompt_tokens(request)
        print(f"count_prompt_{label}: {(time.perf_counter() - t) / repeats * 1e6:.1f} us")


async def cpu_per_request(requests: int, port: int, counter: PromptCounter, db: Path) -> float:
    from bittensor.sp_core import Keypair

    from core.chain import Neuron
    from core.storage import open_store
    from core.synthetic import synthetic_request
    from core.transport.client import SignedClient
    from core.validator.traffic import Attempt, Traffic

    store = open_store(str(db))
    client = SignedClient(Keypair.create_from_uri("//validator"))
    traffic = Traffic(client, counter, store, None)
    miner = Neuron(1, Keypair.create_from_uri("//miner").ss58_address, "c", 0, False,
                   f"http://127.0.0.1:{port}", 0)
    rng = random.Random(1)
    messages = [
        synthetic_request(TASK, 300, rng, 64, PromptCounter("tiny")) for _ in range(requests)
    ]
    await traffic.send(Attempt(miner, messages[0], *traffic.cost(messages[0]), 1))  # warm up
    started = time.process_time()
    for message in messages:
        prompt, units = traffic.cost(message)
        result = await traffic.send(Attempt(miner, message, prompt, units, 1))
        if result.answer is None:
            raise SystemExit(f"the simulated miner's answer was judged {result.record.outcome}")
    spent = time.process_time() - started
    await client.close()
    store.close()
    return spent / requests


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=400, help="chat requests per variant")
    p.add_argument("--quick", action="store_true", help="a few requests: that it runs (tests)")
    a = p.parse_args()
    requests = 20 if a.quick else a.requests
    count_figures(200 if a.quick else 5000)

    from core.synthetic import synthetic_request
    from devtools.localproc import free_port

    port = free_port()
    server = mp.get_context("spawn").Process(
        target=serve_simulated_miner, args=(port,), daemon=True
    )
    server.start()
    try:
        time.sleep(2.0)
        tiny = PromptCounter("tiny")
        rng = random.Random(1)
        counts = {m.messages[0].content: tiny.prompt_tokens(m) for m in
                  (synthetic_request(TASK, 300, rng, 64, tiny) for _ in range(requests))}
        spent = {"trusting": 0.0, "counting": 0.0}
        with tempfile.TemporaryDirectory() as tmp:
            for i, label in enumerate(("trusting", "counting", "counting", "trusting")):  # ABBA
                counter = TrustingCounter(counts) if label == "trusting" else PromptCounter("tiny")
                spent[label] += asyncio.run(cpu_per_request(requests, port, counter,
                                                            Path(tmp) / f"{i}.sqlite3")) / 2
        trusting, counting = spent["trusting"], spent["counting"]
    finally:
        server.terminate()
    print(f"chat_requests: {requests} count")
    print(f"validator_cpu_per_chat_request_trusting: {trusting * 1e3:.3f} ms")
    print(f"validator_cpu_per_chat_request_counting: {counting * 1e3:.3f} ms")
    print(f"counting_cpu_ratio: {counting / trusting:.3f} x")


if __name__ == "__main__":
    main()
