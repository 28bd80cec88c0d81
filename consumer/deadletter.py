"""The dead-letter stream ``tickvault:dead:{<exchange>}``, and the errors kept for redelivery.

A dead letter holds the frame's original fields (one frame; a bad frame of a run is written as
a single-frame entry would be) plus ``reason``, ``origin`` (the entry id, or ``<entry id>/<index>``
inside a run) and ``stream``. It is written *before* the entry is acked, so a frame is always
either in the raw stream's pending list or in the dead-letter stream.

When a consumer stops on an error that is not a server's (a bug outside the per-frame guard),
it records that error for each entry it held in the hash ``tickvault:errors:{<exchange>}``
(kept for a day): the consumer that finally dead-letters such an entry for exceeding
``max_deliveries`` says why it kept failing.

Both keys carry the raw stream's hash tag (``{<exchange>}``), so on a Redis Cluster an exchange's
raw stream, dead letters and errors are in one slot, on one node. The pipelines here are not
transactions: over several exchanges, redis-py's cluster client splits them per node.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from common.envelope import dead_key, exchange_of_key, run_frame_fields
from common.redis_url import RedisClient

from .batching import DeadLetter
from .process import bounded

logger = logging.getLogger(__name__)

DEAD_MAXLEN = 1_000_000  # dead letters kept per exchange (about)
ERRORS_PREFIX = "tickvault:errors:"
ERRORS_TTL_S = 86_400
NO_ERROR = (
    "no error recorded (the consumers holding it stopped without one: killed? out of memory?)"
)


def errors_key(stream_key: str) -> str:
    """The errors hash of a raw stream; same hash tag, so same cluster slot."""
    return f"{ERRORS_PREFIX}{{{exchange_of_key(stream_key)}}}"


def over_budget_reason(deliveries: int, last_error: str | None) -> str:
    return bounded(f"delivered {deliveries} times: {last_error or NO_ERROR}")


class DeadLetters:
    def __init__(self, client: RedisClient) -> None:
        self.client = client

    def send(self, dead: list[DeadLetter]) -> None:
        """Add each dead letter to its exchange's dead-letter stream (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for d in dead:
            fields = dict(d.fields)
            fields[b"reason"] = d.reason.encode("utf-8", "backslashreplace")
            fields[b"origin"] = d.entry_id.encode()
            fields[b"stream"] = d.key.encode()
            exchange = exchange_of_key(d.key) if "{" in d.key else "unknown"
            pipe.xadd(dead_key(exchange), fields, maxlen=DEAD_MAXLEN, approximate=True)  # type: ignore[arg-type]
            logger.warning("dead-lettered %s %s: %s", d.key, d.entry_id, d.reason)
        pipe.execute()

    def fetch(self, key: str, frame: str) -> dict[bytes, bytes]:
        """The fields of entry ``frame``, or of frame ``<entry id>/<index>`` of a run."""
        entry_id, _, index = frame.partition("/")
        rows: Any = self.client.xrange(key, entry_id, entry_id)
        if not rows:
            return {}
        return run_frame_fields(dict(rows[0][1]), int(index or 0))

    def record_errors(self, held: Mapping[str, Iterable[str]], error: str) -> None:
        """Remember ``error`` for each held entry (best effort: called on the way out)."""
        text = bounded(error)
        pipe = self.client.pipeline(transaction=False)
        for key, ids in held.items():
            mapping = {entry_id: text for entry_id in ids}
            if mapping:
                pipe.hset(errors_key(key), mapping=mapping)  # type: ignore[arg-type]
                pipe.expire(errors_key(key), ERRORS_TTL_S)
        pipe.execute()

    def last_errors(self, key: str, ids: list[str]) -> dict[str, str]:
        """The recorded errors of ``ids`` (those that have one)."""
        if not ids:
            return {}
        values = self.client.hmget(errors_key(key), ids)
        return {
            entry_id: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for entry_id, v in zip(ids, values, strict=True)
            if v is not None
        }

    def forget_errors(self, key: str, ids: list[str]) -> None:
        if ids:
            self.client.hdel(errors_key(key), *ids)
