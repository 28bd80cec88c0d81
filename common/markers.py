"""Coverage markers: the producer's record of each connection's life, carried by the stream.

The producer keeps no PostgreSQL connection, so what it knows about coverage travels with the
frames, in order: an entry of kind ``m`` (``common.envelope``) whose frame is a JSON
:class:`MarkerBody`. Consumers store them in ``feed_sessions`` (``consumer.ledger``).

Events:
    started     a producer run began (one per exchange stream it feeds; ``c`` is the run)
    alive       the run is still up (every ``ALIVE_S``): a run that stops saying so was killed,
                so its open sessions end there even if no later run closes them
    subscribed  a connection sent its subscriptions: its symbols are covered from now
    lost        a connection ended unasked (``reason``: closed by the venue, silent, refused...)
    rolled      a connection was closed after its replacement was subscribed (make before break)
    closed      a connection was closed because the producer stops
    stopped     the producer run ended cleanly

A run killed without ``stopped`` leaves its sessions open; the next ``started`` of the same
producer name closes them (``consumer.ledger``).
"""

from __future__ import annotations

import msgspec

from .errors import PoisonFrame

RUN_EVENTS = frozenset({"started", "alive", "stopped"})
ALIVE_S = 5.0  # a running producer says ``alive`` this often in every stream it feeds
# A run silent this long is taken for dead (consumers may lag behind the producer: generous)
ALIVE_STALE_S = 60.0
CONNECTION_EVENTS = frozenset({"subscribed", "lost", "rolled", "closed"})
EVENTS = RUN_EVENTS | CONNECTION_EVENTS
NAME_MAX = 200  # characters of a producer name, run id, symbol or channel
LIST_MAX = 5_000  # symbols in one marker
REASON_MAX = 500


class MarkerBody(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    event: str
    producer: str
    run: str
    symbols: list[str] = msgspec.field(default_factory=list)
    channels: list[str] = msgspec.field(default_factory=list)
    reason: str = ""


class Marker(msgspec.Struct, frozen=True, gc=False):
    """A marker as the consumer stores it: the body plus the entry's envelope fields."""

    exchange: str
    context: str
    conn: str  # the connection id (``started``/``stopped``: ``<producer>@<run>``)
    at_ns: int  # when the producer wrote it
    body: MarkerBody


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(MarkerBody).decode


def encode_marker(body: MarkerBody) -> bytes:
    return _encode(body)


def decode_marker(exchange: str, context: str, conn: str, at_ns: int, frame: bytes) -> Marker:
    """The marker in an entry of kind ``m``.

    Raises:
        PoisonFrame: not a marker this version knows (malformed, unknown event, oversized).
    """
    try:
        body = _decode(frame)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise PoisonFrame(f"bad marker: {exc}") from None
    if body.event not in EVENTS:
        raise PoisonFrame(f"bad marker: unknown event {body.event[:40]!r}")
    names = [body.producer, body.run, conn, *body.symbols, *body.channels]
    if len(body.symbols) > LIST_MAX or any(
        not n or len(n) > NAME_MAX or not n.isprintable() for n in names
    ):
        raise PoisonFrame("bad marker: empty, oversized or unprintable names")
    if len(body.reason) > REASON_MAX * 4:
        body = msgspec.structs.replace(body, reason=body.reason[:REASON_MAX])
    if not body.reason.isprintable():
        body = msgspec.structs.replace(body, reason=repr(body.reason)[1:-1][:REASON_MAX])
    return Marker(exchange, context, conn, at_ns, body)


def run_conn(producer: str, run: str) -> str:
    """The connection id a run's ``started``/``stopped`` markers carry."""
    return f"{producer}@{run}"


__all__ = [
    "ALIVE_S",
    "ALIVE_STALE_S",
    "CONNECTION_EVENTS",
    "EVENTS",
    "RUN_EVENTS",
    "Marker",
    "MarkerBody",
    "decode_marker",
    "encode_marker",
    "run_conn",
]
