"""XREADGROUP, with the acks of the batches committed since the last read, in one round trip.

At low rates every batch is small and the fixed costs per batch dominate: redis-py spends
several times the cost of the network round trip on each command (its connection pool, health
check and hooks: ~60 us against ~20 us here, measured). So the worker reads on a connection of
its own and sends each committed batch's XACK in the same write as the next XREADGROUP. Acks
still follow their commits (the batch was committed before the XACK is sent); they only travel
with the next read. The server runs the XACK at once, even when the read then blocks; the
worker is not woken for the XACK's reply alone, only when the read's comes too.

Replies are read as redis-py's pipelines read them: an error reply is returned in its place (the
connection stays in step); a lost connection is closed and raised, so the next call connects
afresh.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from redis._parsers import BaseParser

from common.envelope import RUN_MAX

READ_MAX = 1_000  # entries per XREADGROUP at most (runs of up to RUN_MAX frames each)
# ... and about this many bytes of them: a stream of big frames (a venue's, or a backlog of
# them) is read a few entries at a time instead of in one reply of gigabytes.
READ_BYTES = 64 << 20
ENTRY_BYTES_GUESS = 1 << 20  # bytes per entry before a read tells (the first reads are small)


def xreadgroup_args(
    group: str, name: str, streams: Mapping[str, str], count: int, block_ms: int
) -> list[Any]:
    """XREADGROUP's arguments (without the command's name); no BLOCK when ``block_ms`` is 0."""
    args: list[Any] = ["GROUP", group, name, "COUNT", count]
    if block_ms > 0:
        args += ["BLOCK", block_ms]
    return [*args, "STREAMS", *streams, *streams.values()]


@dataclass
class ReadSize:
    """How many entries a read asks for (pure): the batch's room is in frames and an entry may
    hold a run of them, so room over the last read's frames per entry; at most ``max_entries``,
    and about ``max_bytes`` at the last read's bytes per entry. Until a read tells, entries are
    assumed full runs of ``ENTRY_BYTES_GUESS``."""

    max_entries: int = READ_MAX
    max_bytes: int = READ_BYTES
    frames_per_entry: int = RUN_MAX  # in the last read, rounded up
    bytes_per_entry: int = ENTRY_BYTES_GUESS  # in the last read (its frames')

    def count(self, room: int) -> int:
        by_bytes = self.max_bytes // self.bytes_per_entry
        return max(1, min(room // self.frames_per_entry, self.max_entries, by_bytes))

    def observe(self, entries: int, frames: int, size: int) -> None:
        """A read brought ``entries`` holding ``frames`` frames of ``size`` bytes (0: not
        measured, as for re-read history)."""
        if entries:
            self.frames_per_entry = max(1, -(-frames // entries))
            if size:
                self.bytes_per_entry = max(1, size // entries)


class GroupReads:
    def __init__(self, client: redis.Redis, group: str, name: str) -> None:
        self._pool: Any = client.connection_pool
        self.group = group
        self.name = name
        self._conn: Any = None
        self._sock: socket.socket | None = None  # the connection's socket, read directly
        self._parser = hiredis.Reader()
        self._buf = bytearray(1 << 16)

    def read(
        self,
        streams: Mapping[str, str],
        count: int,
        block_ms: int,
        acks: Sequence[tuple[str, Sequence[str]]] = (),
        on_acks: Callable[[BaseException | None], None] | None = None,
    ) -> tuple[Any, BaseException | None]:
        """XACK each (key, ids) of ``acks``, then XREADGROUP ``streams`` (key -> last id).

        Returns the raw read reply (RESP2 [[key, entries], ...] or a RESP3 map; None when
        nothing came) and the first error an XACK answered (None when all were acked).
        ``on_acks(error)`` is called with it once the XACKs' replies are read: with the read's
        reply, which the reader waits for without being woken by theirs alone
        (``SO_RCVLOWAT``, :func:`ack_lowat`): one wake-up per read instead of two. (The
        server acks at once; a quiet stream's last batch is counted when the read returns.)

        Raises:
            redis.ResponseError: the read was refused (the acks' outcome is then unknown to the
                caller, which sends them again: XACK is idempotent).
            redis.ConnectionError, redis.TimeoutError, OSError: the connection failed.
        """
        commands: list[tuple[Any, ...]] = [("XACK", key, self.group, *ids) for key, ids in acks]
        commands.append(("XREADGROUP", *xreadgroup_args(self.group, self.name, streams, count,
                                                        block_ms)))  # fmt: skip
        conn = self._conn
        if conn is None:
            conn = self._conn = self._pool.make_connection()
            conn.connect()  # the handshake (AUTH, SELECT, HELLO, TLS) is redis-py's
            sock = getattr(conn, "_sock", None)
            self._sock = sock if isinstance(sock, socket.socket) else None
            self._parser = hiredis.Reader()
        replies: list[Any] = []
        try:
            if self._sock is not None:
                # packed by hiredis itself: redis-py's packer costs 5 us more per read
                payload = b"".join([hiredis.pack_command(cmd) for cmd in commands])
                self._exchange(commands, payload, len(acks), on_acks, replies)
            else:  # a connection that is not a plain socket (fakeredis): redis-py reads it
                conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                for i in range(len(commands)):
                    if i == len(acks) and acks and on_acks is not None:
                        on_acks(_first_error(replies))
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:
                        replies.append(exc)
        except BaseException:
            self.close()  # a reply may be half read: start afresh
            raise
        read = replies.pop()
        if isinstance(read, BaseException):
            raise read
        return read, _first_error(replies)

    def _exchange(
        self,
        commands: Sequence[Any],
        payload: bytes,
        acks: int,
        on_acks: Callable[[BaseException | None], None] | None,
        replies: list[Any],
    ) -> None:
        """Send ``payload`` on the socket and parse the replies with hiredis: redis-py's
        connection layers (health checks, timeouts set per read, hooks) cost more than the
        round trip at one small batch every few ms. Error replies become redis-py's exceptions
        (``BaseParser.parse_error``: READONLY, NOPERM ... as its client raises them)."""
        sock, parser, buf = self._sock, self._parser, self._buf
        assert sock is not None
        sock.sendall(payload)
        # Not woken for the XACKs' replies alone (they come at once; the read's may take
        # block_ms): the socket is readable from the bytes they take at most, plus one.
        lowat = ack_lowat([len(cmd) - 3 for cmd in commands[:acks]]) if acks else 1
        if lowat > 1:  # (reset at the first bytes; any failure closes the connection)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        while len(replies) < len(commands):
            if len(replies) == acks and acks and on_acks is not None:
                on_acks(_first_error(replies))
                on_acks = None
            reply = parser.gets()
            if reply is False:
                n = sock.recv_into(buf)
                if not n:
                    raise redis.ConnectionError("redis closed the connection")
                if lowat > 1:  # the rest of a long reply: as it comes
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                    lowat = 1
                parser.feed(buf, 0, n)  # type: ignore[arg-type]  # (a buffer: no copy)
                continue
            if isinstance(reply, hiredis.ReplyError):
                reply = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
            replies.append(reply)

    def close(self) -> None:
        self._sock = None
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # closing a broken connection: nothing more to do
                pass


# The shortest reply an XREADGROUP can give: RESP3's null (``_\r\n``); RESP2's is ``*-1\r\n``.
READ_REPLY_MIN = 3


def ack_lowat(ids_per_xack: Sequence[int]) -> int:
    """SO_RCVLOWAT for a read sent after XACKs of these many ids each: one byte more than
    their integer replies (``:<n>\r\n``, n at most the ids sent) can take, so that they
    alone do not wake the reader; yet never more than the shortest replies (``:0\r\n``
    each) and the read's shortest reply, so that the read's reply always does. (An error
    reply is longer: it wakes the reader at once.)"""
    most = sum(len(str(n)) + 3 for n in ids_per_xack)
    return min(most + 1, 4 * len(ids_per_xack) + READ_REPLY_MIN)


def _first_error(replies: Sequence[Any]) -> BaseException | None:
    return next((r for r in replies if isinstance(r, BaseException)), None)


def fields_bytes(fields: Any) -> int:
    """About the bytes of an entry: its first field's value, the frame (or a run's frames) in
    the producer's order, which the few other small fields do not change much; from a flat
    [name, value, ...] list, or a map."""
    if isinstance(fields, list):
        return len(fields[1]) if len(fields) > 1 else 0
    if isinstance(fields, dict):
        return len(fields.get(b"f", b""))
    return 0
