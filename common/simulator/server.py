"""Serve one simulated venue over real WebSockets on 127.0.0.1, and its REST API on the same port.

Trades start for a symbol when a client first subscribes to it, at ``rate`` per second per symbol,
with consecutive ids from 1, and stop after ``trades`` per symbol (0: never). They go on while no
client is connected (a venue does not wait for us). Every subscribed connection gets every trade,
as on a real venue (so a make-before-break overlap sees duplicates). Every trade emitted is kept
in a :class:`~.engine.TradeBook`, which a plain HTTP GET (no WebSocket upgrade) on the same port
reads through the dialect's REST endpoints: a backfill fetches exactly what was streamed.
"""

from __future__ import annotations

import asyncio
import http
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..venues.base import Channel
from .dialect import Dialect, Frame, SimSession
from .engine import Pacer, TradeBook, make_quote, make_trade

logger = logging.getLogger(__name__)

_TEXT, _BINARY = 0x81, 0x82  # FIN + opcode


def raw_frames(frames: Sequence[Frame], binary: bool) -> bytes:
    """``frames`` as unmasked, unfragmented server WebSocket frames (RFC 6455 section 5.2);
    ``str`` frames are text unless ``binary``, ``bytes`` frames are binary."""
    parts: list[bytes] = []
    append = parts.append
    pack_short, pack_long = _SHORT.pack, _LONG.pack
    for frame in frames:
        if isinstance(frame, str):
            data = frame.encode()
            opcode = _BINARY if binary else _TEXT
        else:
            data, opcode = frame, _BINARY
        n = len(data)
        if n < 126:
            append(bytes((opcode, n)))
        elif n < 65536:
            append(pack_short(opcode, 126, n))
        else:
            append(pack_long(opcode, 127, n))
        append(data)
    return b"".join(parts)


_SHORT, _LONG = struct.Struct("!BBH"), struct.Struct("!BBQ")

TICK_S = 0.002


@dataclass(slots=True, kw_only=True)
class SimulatorConfig:
    rate: float = 100.0  # trades per second per symbol
    trades: int = 0  # stop after this many trades per symbol (0: run forever)
    quote_rate: float = 10.0  # quotes per second per symbol (0: none)
    max_connection_s: float = 0.0  # close each connection after this long (0: never)
    compress: bool = False  # offer permessage-deflate (RFC 7692), as some venues do
    rest_faults: int = 0  # answer this many REST requests first with 429 (Retry-After: 0)
    abnormal: bool = False  # fat fingers and flash crashes now and then (engine.make_trade)


@dataclass(slots=True)
class _Client:
    ws: ServerConnection
    session: SimSession
    opened: float
    heartbeat_at: float = 0.0


@dataclass
class Simulator:
    dialect: Dialect
    config: SimulatorConfig = field(default_factory=SimulatorConfig)
    clients: list[_Client] = field(default_factory=list)
    trade_pacers: dict[str, Pacer] = field(default_factory=dict)
    quote_pacers: dict[str, Pacer] = field(default_factory=dict)
    sent_trades: int = 0
    connections: int = 0
    book: TradeBook = field(default_factory=TradeBook)
    rest_requests: int = 0
    _server: Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.book.abnormal = self.config.abnormal
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._check_path,
            ping_interval=self.dialect.server_ping_s,
            max_queue=None,
            compression="deflate" if self.config.compress else None,
        )
        sock = next(iter(self._server.sockets))
        bound: int = sock.getsockname()[1]
        logger.info("simulating %s on ws://%s:%d", self.dialect.exchange, host, bound)
        return bound

    async def run(self, stop: asyncio.Event) -> None:
        """Emit until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            await self.tick(loop.time())
            await asyncio.sleep(TICK_S)  # (a wait_for on ``stop`` costs a task every tick)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def finished(self) -> bool:
        return bool(self.trade_pacers) and all(p.finished for p in self.trade_pacers.values())

    async def drop_all(self) -> None:
        """Close every client connection (a venue-side disconnect)."""
        for client in list(self.clients):
            await client.ws.close(1001, "simulated disconnect")

    # -- connections -------------------------------------------------------------------------
    def _check_path(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._rest(request)
        if not self.dialect.accepts(request.path):
            return conn.respond(http.HTTPStatus.NOT_FOUND, f"no such path {request.path}\n")
        return None

    def _rest(self, request: Request) -> Response:
        """A plain GET: the venue's REST API, read from the trade book."""
        self.rest_requests += 1
        headers = Headers([("Content-Type", "application/json"), ("Connection", "close")])
        if self.rest_requests <= self.config.rest_faults:
            body = b'{"code":-1003,"msg":"Too many requests (simulated)."}'
            headers["Retry-After"] = "0"
            return self._response(429, "Too Many Requests", headers, body)
        parts = urlsplit(request.path)
        lower = {k.lower(): v for k, v in request.headers.raw_items()}
        try:
            reply = self.dialect.rest(parts.path, parse_qs(parts.query), lower, self.book)
        except Exception:  # a dialect's bug is the simulator's 500, as a venue's would be
            logger.exception("REST %s failed", request.path)
            return self._response(500, "Internal Server Error", headers, b'{"error":"internal"}')
        if reply is None:
            return self._response(404, "Not Found", headers, b'{"error":"not found"}')
        for name, value in reply.headers:
            headers[name] = value
        return self._response(
            reply.status, http.HTTPStatus(reply.status).phrase, headers, reply.body.encode()
        )

    @staticmethod
    def _response(status: int, phrase: str, headers: Headers, body: bytes) -> Response:
        headers["Content-Length"] = str(len(body))
        return Response(status, phrase, headers, body)

    async def _handle(self, ws: ServerConnection) -> None:
        session = SimSession(path=ws.request.path if ws.request else "/")
        client = _Client(ws, session, asyncio.get_running_loop().time())
        self.connections += 1
        try:
            await self._send(ws, self.dialect.greeting(session))
            self.clients.append(client)
            self._start_pacers(session)
            async for message in ws:
                await self._send(ws, self.dialect.on_message(session, message))
                self._start_pacers(session)
        except ConnectionClosed:
            pass
        finally:
            if client in self.clients:
                self.clients.remove(client)

    def _start_pacers(self, session: SimSession) -> None:
        for channel, symbol in session.subscriptions:
            if channel is Channel.TRADES and symbol not in self.trade_pacers:
                self.trade_pacers[symbol] = Pacer(self.config.rate, self.config.trades)
            if (
                channel is Channel.QUOTES
                and self.config.quote_rate > 0
                and symbol not in self.quote_pacers
            ):
                self.quote_pacers[symbol] = Pacer(self.config.quote_rate)

    async def _send(self, ws: ServerConnection, frames: Sequence[Frame]) -> None:
        if len(frames) > 1:
            # Many frames, one write: websockets' own send() flushes and drains per message,
            # which would make the simulator, not the producer, the bottleneck of a benchmark.
            # send_context()/protocol are websockets internals; this is a test tool.
            binary = self.dialect.binary
            protocol = ws.protocol
            async with ws.send_context():
                if not protocol.extensions:
                    # No extension to apply: the frames are built here and written at once.
                    ws.transport.write(raw_frames(frames, binary))
                    return
                for frame in frames:
                    if isinstance(frame, str):
                        data = frame.encode()
                        if binary:
                            protocol.send_binary(data)
                        else:
                            protocol.send_text(data)
                    else:
                        protocol.send_binary(frame)
            return
        for frame in frames:
            if self.dialect.binary and isinstance(frame, str):
                await ws.send(frame.encode())
            else:
                await ws.send(frame)

    # -- emission ----------------------------------------------------------------------------
    async def tick(self, now: float) -> None:
        unit = self.dialect.ts_unit_ns
        if self.config.max_connection_s:
            for client in list(self.clients):
                if now - client.opened > self.config.max_connection_s:
                    await client.ws.close(1000, "connection lifetime reached")
        if self.dialect.heartbeat_s:
            for client in list(self.clients):
                if now - client.heartbeat_at >= self.dialect.heartbeat_s:
                    client.heartbeat_at = now
                    beats = self.dialect.heartbeat_frames(client.session, time.time_ns())
                    await self._safe_send(client, beats)
        for symbol, pacer in self.trade_pacers.items():
            count = pacer.due(now)
            if not count:
                continue
            ts = time.time_ns() // unit * unit
            first = pacer.emitted - count + 1
            self.book.record(symbol, first, count, ts)
            self.sent_trades += count
            if not any((Channel.TRADES, symbol) in c.session.subscriptions for c in self.clients):
                continue  # nobody listening: the trades happened all the same (the book has them)
            abnormal = self.config.abnormal
            trades = [make_trade(symbol, i, ts, abnormal) for i in range(first, first + count)]
            for client in list(self.clients):
                if (Channel.TRADES, symbol) not in client.session.subscriptions:
                    continue
                frames = self.dialect.trade_frames_batch(client.session, trades)
                await self._safe_send(client, frames)
        for symbol, pacer in self.quote_pacers.items():
            count = pacer.due(now)
            if not count:
                continue
            ts = time.time_ns() // unit * unit
            quote = make_quote(symbol, pacer.emitted, ts)  # only the newest of a tick matters
            for client in list(self.clients):
                if (Channel.QUOTES, symbol) in client.session.subscriptions:
                    await self._safe_send(client, self.dialect.quote_frames(client.session, quote))

    async def _safe_send(self, client: _Client, frames: Sequence[Frame]) -> None:
        try:
            await self._send(client.ws, frames)
        except ConnectionClosed:
            if client in self.clients:
                self.clients.remove(client)
