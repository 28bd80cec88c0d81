"""The producer's side of the coverage ledger: markers queued in order with the frames
(``common.markers`` lists the events). A marker goes through the publisher like a frame, so it
reaches Redis, or the spill, in its place."""

from __future__ import annotations

import time
from collections.abc import Sequence

from common.envelope import raw_key
from common.markers import MarkerBody, encode_marker, run_conn

from .publisher import Publisher
from .wire import XaddPacker


class Markers:
    def __init__(self, publisher: Publisher, producer: str, run: str | None = None) -> None:
        self.publisher = publisher
        self.producer = producer
        self.run = run or str(time.time_ns() // 1_000_000)  # ms: later runs sort after
        self._packers: dict[tuple[str, str, str], XaddPacker] = {}

    def _packer(self, exchange: str, context: str, conn: str) -> XaddPacker:
        ident = (exchange, context, conn)
        packer = self._packers.get(ident)
        if packer is None:
            if len(self._packers) > 10_000:
                self._packers.clear()
            packer = XaddPacker(raw_key(exchange), exchange, context, conn, marker=True)
            self._packers[ident] = packer
        return packer

    def connection(
        self,
        event: str,
        *,
        exchange: str,
        context: str,
        conn: str,
        symbols: Sequence[str],
        channels: Sequence[str],
        reason: str = "",
    ) -> None:
        body = MarkerBody(event, self.producer, self.run, list(symbols), list(channels), reason)
        self.publisher.mark(self._packer(exchange, context, conn), encode_marker(body))
        if event != "subscribed":
            self._packers.pop((exchange, context, conn), None)

    def run_event(
        self, event: str, exchange: str, symbols: Sequence[str], reason: str = ""
    ) -> None:
        """``started``/``stopped`` in ``exchange``'s stream."""
        body = MarkerBody(event, self.producer, self.run, list(symbols), [], reason)
        conn = run_conn(self.producer, self.run)
        self.publisher.mark(self._packer(exchange, "", conn), encode_marker(body))
