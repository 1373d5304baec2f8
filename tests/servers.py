"""Real HTTP servers for tests: an ASGI app served by uvicorn on 127.0.0.1, in a thread or in the
test's own event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager, contextmanager

import uvicorn


@contextmanager
def serving(app, port: int):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"test server on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@asynccontextmanager
async def serving_here(app, port: int, **options):
    """``app`` served by uvicorn in this event loop (with uvicorn ``options``: a neuron's
    ``ServerLimits.uvicorn_options()``), for tests whose clients run in the same loop."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **options))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:  # set by uvicorn once it listens
        if time.monotonic() > deadline or task.done():
            raise RuntimeError(f"test server on port {port} did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
