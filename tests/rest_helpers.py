"""A simulated venue's REST API on 127.0.0.1, served from a trade book the test fills."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from common.simulator.dialects import get_dialect
from common.simulator.engine import TradeBook
from common.simulator.server import Simulator, SimulatorConfig


@contextmanager
def serving_rest(
    exchange: str, book: TradeBook, *, rest_faults: int = 0
) -> Iterator[tuple[str, Simulator]]:
    """Serve ``exchange``'s simulated REST (and WebSocket) API from ``book`` in a thread;
    yields (base URL, the simulator)."""
    sim = Simulator(get_dialect(exchange), SimulatorConfig(rest_faults=rest_faults))
    sim.book = book
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        port.append(loop.run_until_complete(sim.start()))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("simulator did not start")
    try:
        yield f"http://127.0.0.1:{port[0]}", sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
