"""The project's exchange simulator (``common.simulator``, Binance dialect) behind a start gate,
for the peer scenario: ``python -m bench.peer_sim --port P --rate R --trades N``.

It is ``tickvault simulate --serve binance=P --rate R --trades N --quote-rate 0`` with one
difference: trades start at SIGUSR2 instead of at the first subscription. Collectors connect and
subscribe while it holds (each subscription is printed: ``subscribed BTC-USDT aggTrade``), the
bench lets them settle, samples their CPU, and then signals; so a collector's start-up (imports,
connections) is outside the measured window for both. The simulator's own code serves and paces
the frames (``Simulator.run``): its pacers start at their first tick, which is after the signal.

stdout: ``ready <port>``, ``subscribed <symbol> <stream>`` per subscription, ``go <ns>`` and
``sent <trades> <ns>`` (wall-clock ns) when the last trade has been written to the sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from common.simulator.dialects import get_dialect
from common.simulator.server import Simulator, SimulatorConfig
from common.venues.base import Channel

POLL_S = 0.005


def subscriptions(sim: Simulator) -> list[tuple[str, str]]:
    """(symbol, stream kind) of each client's trade subscriptions: ("BTC-USDT", "aggTrade")."""
    return [
        (symbol, kind)
        for client in sim.clients
        for (channel, symbol), kind in client.session.subscriptions.items()
        if channel is Channel.TRADES
    ]


async def report(sim: Simulator, go: asyncio.Event, stop: asyncio.Event) -> None:
    """Print subscriptions until go, then the time the last trade was sent."""
    seen, sent = 0, False
    while not stop.is_set():
        if not go.is_set():
            subs = subscriptions(sim)
            for symbol, kind in subs[seen:]:
                print(f"subscribed {symbol} {kind}", flush=True)
            seen = max(seen, len(subs))
        elif not sent and sim.finished:
            print(f"sent {sim.sent_trades} {time.time_ns()}", flush=True)
            sent = True
        await asyncio.sleep(POLL_S)


async def serve(port: int, rate: float, trades: int) -> None:
    sim = Simulator(get_dialect("binance"), SimulatorConfig(rate=rate, trades=trades, quote_rate=0))
    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()

    def stop_now() -> None:
        stop.set()
        go.set()  # nothing waits for a go that will not come

    loop.add_signal_handler(signal.SIGUSR2, go.set)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_now)
    bound = await sim.start("127.0.0.1", port)
    print(f"ready {bound}", flush=True)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(report(sim, go, stop), name="report")
        await go.wait()
        if not stop.is_set():
            print(f"go {time.time_ns()}", flush=True)
            await sim.run(stop)
    await sim.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_sim", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="trades/s (one symbol)")
    parser.add_argument("--trades", type=int, required=True, help="then stop sending")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.rate, args.trades))


if __name__ == "__main__":
    main()
