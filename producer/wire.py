"""The producer's Redis hot path: XADD commands packed by hand, sent in pipelines over one raw
connection, replies parsed by hiredis.

redis-py builds each command in Python and sets up a timeout per reply; for the producer's one
command that costs more than the whole rest of a frame's journey. Here a connection's constant
parts (key, MAXLEN, exchange, context, connection id) are encoded once, so packing a frame is
one ``%`` format.

On a Redis Cluster (``redis+cluster://``, see ``common.redis_url``) the same packed commands are
routed by their key's hash slot: one connection per node, the slot -> node map from ``CLUSTER
SLOTS`` (asked at connect), each round trip split into one pipeline per node (sent at once), the
replies put back in the commands' order. A stream is one key, so its XADDs stay in order on its
node. A ``MOVED`` reply (the slot has moved: the command was not run) refreshes the map and the
command is sent again to the new node; ``ASK`` (a slot being migrated) sends it once to the node
named, after ``ASKING``. ``TRYAGAIN``/``CLUSTERDOWN`` are retried as ``common.errors`` says, with
the map asked again. With one server none of this runs: a round trip is one write and one read.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from dataclasses import replace

import hiredis
from redis.crc import key_slot

from common.envelope import RUN_MAX
from common.errors import Action, TransientError, classify, fatal_error
from common.redis_url import RedisOptions, redis_options

logger = logging.getLogger(__name__)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*parts: bytes) -> bytes:
    """One RESP command."""
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


class XaddPacker:
    """Packs ``XADD key * f <frame> k t|b e <ex> x <ctx> c <conn> n <seq> t <ns>``, or for a run
    of frames the same with ``l <len,len,...>`` appended (see ``common.envelope``).

    The field order is the consumer's fast path. There is no ``MAXLEN``: trimming is the
    publisher's, which never removes what a consumer group has not acknowledged
    (``producer.retention``).
    """

    def __init__(
        self, key: str, exchange: str, context: str, conn_id: str, *, marker: bool = False
    ) -> None:
        """``marker``: entries of kind ``m``, the producer's coverage markers
        (``producer.markers``), instead of ``t``/``b`` frames."""
        head = b"".join(_bulk(part) for part in (b"XADD", key.encode(), b"*", b"f"))
        self.key = key
        self.exchange, self.context, self.conn_id = exchange, context, conn_id  # for the spill
        self.marker = marker
        self.prefix = b"*17\r\n" + head
        self.run_prefix = b"*19\r\n" + head
        middle = b"".join(
            _bulk(part)
            for part in (b"e", exchange.encode(), b"x", context.encode(), b"c", conn_id.encode())
        )
        text, binary = (b"m", b"m") if marker else (b"t", b"b")
        self.text_middle = _bulk(b"k") + _bulk(text) + middle + _bulk(b"n")
        self.binary_middle = _bulk(b"k") + _bulk(binary) + middle + _bulk(b"n")
        self.t = _bulk(b"t")

    def pack(self, frame: bytes, binary: bool, seq: int, recv_ns: int) -> bytes:
        """One XADD holding one frame."""
        return self._xadd(self.prefix, frame, binary, b"%d" % seq, b"%d" % recv_ns, b"")

    def pack_run(
        self, frames: list[bytes], binary: bool, first_seq: int, times: list[int]
    ) -> bytes:
        """One XADD holding ``frames`` (numbered from ``first_seq``, received at ``times``)."""
        if len(frames) == 1:
            return self.pack(frames[0], binary, first_seq, times[0])
        lengths = b",".join([b"%d" % len(f) for f in frames])
        return self._xadd(
            self.run_prefix,
            b"".join(frames),
            binary,
            b"%d" % first_seq,
            b",".join([b"%d" % ns for ns in times]),
            _bulk(b"l") + _bulk(lengths),
        )

    def _xadd(
        self, prefix: bytes, blob: bytes, binary: bool, seq: bytes, times: bytes, tail: bytes
    ) -> bytes:
        return b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n%s" % (
            prefix,
            len(blob),
            blob,
            self.binary_middle if binary else self.text_middle,
            len(seq),
            seq,
            self.t,
            len(times),
            times,
            tail,
        )


# A frame waiting for Redis: (its connection's packer, bytes, binary?, number, receive ns)
Pending = tuple[XaddPacker, bytes, bool, int, int]


def pack_runs(
    pending: Iterable[Pending], run_max: int = RUN_MAX
) -> tuple[bytes, list[tuple[str, int]]]:
    """XADD commands for ``pending`` frames, in order: each run of back-to-back frames of one
    connection (same kind, consecutive numbers, at most ``run_max``) becomes one entry.

    Returns (the commands' bytes, each command's (stream key, frames))."""
    out: list[bytes] = []
    sizes: list[tuple[str, int]] = []
    packer: XaddPacker | None = None
    binary = False
    frames: list[bytes] = []
    times: list[int] = []
    first = last = 0
    for p, frame, b, seq, ns in pending:
        if p is packer and b is binary and seq == last + 1 and len(frames) < run_max:
            frames.append(frame)
            times.append(ns)
            last = seq
            continue
        if packer is not None:
            out.append(packer.pack_run(frames, binary, first, times))
            sizes.append((packer.key, len(frames)))
        packer, binary, frames, times, first, last = p, b, [frame], [ns], seq, seq
    if packer is not None:
        out.append(packer.pack_run(frames, binary, first, times))
        sizes.append((packer.key, len(frames)))
    return b"".join(out), sizes


def _abort(transport: asyncio.WriteTransport, expired: list[bool]) -> None:
    """A round trip's timeout: abort its connection, which ends the read waiting on it."""
    expired.append(True)
    transport.abort()


class RedisWire:
    """One connection that sends packed commands and checks their replies; for a cluster URL,
    one connection per node, each command sent to its key's node (see the module docstring).

    Its host, port, unix socket, database, ACL user, password and TLS settings are redis-py's
    reading of ``url`` (``common.redis_url``): the same as the consumer's client.

    Raises:
        ConfigError: ``url`` is not one both processes read the same, or a TLS file of it does
            not load.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        options = redis_options(url)
        self._init(options, options.ssl_context(), timeout)  # TLS files are read now, once

    def _init(self, options: RedisOptions, tls: ssl.SSLContext | None, timeout: float) -> None:
        self.options = options
        self._tls = tls
        # Sent on every new connection, as redis-py's on_connect does: AUTH, SELECT, then a PING:
        # a server that wants a password answers the PING with NOAUTH (an XADD of 20 arguments
        # would get a vague "unauthenticated multibulk" protocol error instead).
        setup = []
        auth = self.options.auth()
        if auth is not None:
            setup.append(command(b"AUTH", *(part.encode() for part in auth)))
        if self.options.db:
            setup.append(command(b"SELECT", str(self.options.db).encode()))
        setup.append(command(b"PING"))
        self._setup = b"".join(setup)
        self._setup_count = len(setup)
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()
        self._cluster = _Cluster(self) if options.cluster else None

    def _node(self, address: Address) -> RedisWire:
        """A connection of this one's settings to one node of its cluster."""
        node = RedisWire.__new__(RedisWire)
        host, port = address
        node._init(replace(self.options, host=host, port=port, cluster=()), self._tls, self.timeout)
        return node

    async def connect(self) -> None:
        """Open the connection and authenticate, select the database and PING.

        Raises:
            TransientError: the server is unreachable (refused, reset, timed out).
            FatalError: a refusal no retry can fix: a certificate that does not verify, a unix
                socket the process may not open, NOAUTH, WRONGPASS.
        """
        await self.close()
        if self._cluster is not None:
            await self._cluster.refresh()  # connects to the nodes it asks
            return
        self._parser = hiredis.Reader()
        options = self.options
        try:
            async with asyncio.timeout(self.timeout):
                if options.path is not None:
                    self._reader, self._writer = await asyncio.open_unix_connection(options.path)
                else:
                    self._reader, self._writer = await asyncio.open_connection(
                        options.host, options.port, ssl=self._tls
                    )
        except (OSError, TimeoutError) as exc:
            fatal = fatal_error(exc)  # None for an outage
            if fatal is not None:
                raise fatal from exc
            raise TransientError(f"redis at {options.where()} unreachable: {exc!r}") from exc
        try:
            await self.execute(self._setup, self._setup_count)
        except BaseException:
            await self.close()  # not left open unauthenticated, or in database 0
            raise

    @property
    def connected(self) -> bool:
        if self._cluster is not None:
            return self._cluster.table is not None
        return self._writer is not None and not self._writer.is_closing()

    async def execute(self, payload: bytes, count: int) -> list[object]:
        """Send ``count`` packed commands and return their replies.

        Raises:
            TransientError: the connection failed, or Redis answered an error worth retrying
                (OOM, READONLY, LOADING, TRYAGAIN, CLUSTERDOWN, ...: ``common.errors``): the
                caller sends the same commands again later.
            FatalError: Redis refused in a way no retry can fix (WRONGTYPE, NOPERM, NOAUTH,
                an unknown command).
        """
        if self._cluster is not None:
            replies = await self._cluster.execute(payload, count)
            errors = [r for r in replies if isinstance(r, hiredis.ReplyError)]
            if errors:
                self._cluster.table = None  # ask for the map again before the next try
        else:
            replies, errors = await self._roundtrip(payload, count)
        for error in errors:
            if classify(error) is not Action.RETRY:
                fatal = fatal_error(error)
                raise fatal if fatal is not None else error
        if errors:
            raise TransientError(f"redis refused {len(errors)} of {count} commands: {errors[0]}")
        return replies

    async def _roundtrip(
        self, payload: bytes, count: int
    ) -> tuple[list[object], list[hiredis.ReplyError]]:
        """Send ``count`` commands over this connection: their replies, and the errors among
        them.

        Raises:
            TransientError: the connection failed (it is closed).
        """
        if not self.connected:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        errors: list[hiredis.ReplyError] = []
        replies: list[object] = []
        writer = self._writer
        # The timeout aborts the connection, which ends the read: one timer handle a round trip
        # (``asyncio.timeout`` costs a context object and the task's bookkeeping, a few % of
        # the producer's CPU at one small round trip every few ms).
        expired: list[bool] = []
        timer = asyncio.get_running_loop().call_later(
            self.timeout, _abort, writer.transport, expired
        )
        try:
            writer.write(payload)
            if writer.transport.get_write_buffer_size():  # (else drain has nothing to do)
                await writer.drain()
            left = count
            while left:
                reply = self._parser.gets()
                if reply is False:
                    data = await self._reader.read(1 << 16)
                    if not data:  # (or the timeout aborted it: said below)
                        raise ConnectionResetError("redis closed the connection")
                    self._parser.feed(data)
                    continue
                left -= 1
                replies.append(reply)
                if isinstance(reply, hiredis.ReplyError):
                    errors.append(reply)
        except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
            why = TimeoutError(f"no reply within {self.timeout:g} s") if expired else exc
            await self.close()
            raise TransientError(f"redis connection lost: {why!r}") from exc
        finally:
            timer.cancel()
        return replies, errors

    async def close(self) -> None:
        if self._cluster is not None:
            await self._cluster.close()
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass


# -- Redis Cluster ---------------------------------------------------------------------------------

SLOTS = 16384
MAX_REDIRECTS = 5  # MOVED/ASK rounds in one execute: more means a resharding in progress
Address = tuple[str, int]
# Commands that name no key (sent to any node), and those whose key is their third word.
_KEYLESS = frozenset({b"PING", b"AUTH", b"SELECT", b"HELLO", b"CLUSTER", b"ASKING", b"INFO"})
_SUBCOMMANDS = frozenset({b"XINFO", b"XGROUP"})


def command_spans(payload: bytes) -> list[tuple[int, int, bytes | None]]:
    """Each RESP command packed in ``payload``: (start, end, key), key None for a keyless one.

    Raises:
        ValueError: ``payload`` is not a sequence of whole RESP commands.
    """
    spans: list[tuple[int, int, bytes | None]] = []
    find, pos, size = payload.find, 0, len(payload)
    while pos < size:
        start = pos
        if payload[pos] != 42:  # b"*"
            raise ValueError(f"not a RESP command at byte {pos}")
        eol = find(b"\r\n", pos)
        argc = int(payload[pos + 1 : eol])
        pos = eol + 2
        key: bytes | None = None
        at = 1
        for i in range(argc):
            eol = find(b"\r\n", pos)
            length = int(payload[pos + 1 : eol])
            pos = eol + 2
            if i == 0:
                name = payload[pos : pos + length].upper()
                at = 0 if name in _KEYLESS else 2 if name in _SUBCOMMANDS else 1
            elif i == at:
                key = payload[pos : pos + length]
            pos += length + 2
        if pos > size:
            raise ValueError("a RESP command cut short")
        spans.append((start, pos, key))
    return spans


def slot_table(reply: object, asked: str) -> list[Address | None]:
    """The node serving each of the 16384 slots (None: none) from a ``CLUSTER SLOTS`` reply
    (``[[first, last, [host, port, id, ...], replica, ...], ...]``) of a node at host
    ``asked``: an empty or ``?`` host means that node's own host (cluster-spec: "unknown
    endpoint")."""
    table: list[Address | None] = [None] * SLOTS
    if not isinstance(reply, list):
        raise TransientError(f"CLUSTER SLOTS answered {reply!r}")
    for row in reply:
        first, last, (raw_host, port, *_), *_ = row
        host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
        address = (host if host not in ("", "?") else asked, int(port))
        table[int(first) : int(last) + 1] = [address] * (int(last) - int(first) + 1)
    return table


def redirection(reply: object, asked: str) -> tuple[bool, int, Address] | None:
    """For a ``MOVED <slot> <host>:<port>`` or ``ASK ...`` reply of a node at host ``asked``:
    (moved?, slot, the node to ask); None for any other reply."""
    if not isinstance(reply, hiredis.ReplyError):
        return None
    words = str(reply).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    return words[0] == "MOVED", int(words[1]), (host or asked, int(port))


class _Cluster:
    """A :class:`RedisWire`'s routing over a Redis Cluster (see the module docstring)."""

    def __init__(self, wire: RedisWire) -> None:
        self.wire = wire
        self.table: list[Address | None] | None = None  # None: ask for it before sending
        self.nodes: dict[Address, RedisWire] = {}
        self._slots: dict[bytes, int] = {}  # key -> slot (a producer writes a few keys)
        self._asked: set[tuple[int, Address]] = set()  # migrations already logged

    def node(self, address: Address) -> RedisWire:
        node = self.nodes.get(address)
        if node is None:
            node = self.nodes[address] = self.wire._node(address)
        return node

    async def refresh(self) -> None:
        """The slot map from the first node that answers ``CLUSTER SLOTS``: the known ones,
        then the URL's. Without an answer the map in hand (if any) is kept.

        Raises:
            TransientError: none answered.
            FatalError: one refused (NOAUTH, NOPERM, or not a cluster node: ``ERR``).
        """
        failure: Exception | None = None
        for address in dict.fromkeys([*self.nodes, *self.wire.options.cluster]):
            try:
                replies, errors = await self.node(address)._roundtrip(CLUSTER_SLOTS, 1)
            except TransientError as exc:
                failure = exc
                continue
            if errors:
                fatal = fatal_error(errors[0])
                if fatal is None:  # a retryable refusal (LOADING, ...): try the next node
                    failure = TransientError(f"{address}: {errors[0]}")
                    continue
                raise fatal
            self.table = slot_table(replies[0], address[0])
            return
        raise TransientError(
            f"no node of the redis {self.wire.options.where()} answers: {failure!r}"
        )

    def address(self, key: bytes | None) -> Address:
        assert self.table is not None
        if key is None:
            found = next((a for a in self.table if a is not None), None)
        else:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = key_slot(key)
            found = self.table[slot]
        if found is None:
            self.table = None
            raise TransientError(f"no node serves the slot of {key!r}: cluster down?")
        return found

    async def execute(self, payload: bytes, count: int) -> list[object]:
        """The replies of the ``count`` commands in ``payload``, in their order, error replies
        included (``RedisWire.execute`` judges them); redirections followed.

        Raises:
            TransientError: a node is unreachable or the slot map cannot be had; the map is
                asked again on the next call.
        """
        if self.table is None:
            await self.refresh()
        spans = command_spans(payload)
        if len(spans) != count:
            raise ValueError(f"{len(spans)} commands in the payload, {count} expected")
        replies: list[object] = [None] * count
        todo = list(range(count))
        asks: dict[int, Address] = {}  # command -> the node an ASK named
        for _ in range(MAX_REDIRECTS):
            routes: dict[Address, list[int]] = {}
            for i in todo:
                routes.setdefault(asks.get(i) or self.address(spans[i][2]), []).append(i)
            results = await asyncio.gather(
                *(self._send(a, ids, payload, spans, asks) for a, ids in routes.items()),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    self.table = None
                    raise result
            todo, asks, moved = [], {}, False
            for (address, ids), got in zip(routes.items(), results, strict=True):
                assert isinstance(got, list)
                for i, reply in zip(ids, got, strict=True):
                    redirect = redirection(reply, address[0])
                    if redirect is None:
                        replies[i] = reply
                        continue
                    todo.append(i)
                    is_moved, slot, to = redirect
                    if is_moved:
                        if not moved:
                            logger.info("redis cluster: slot %d moved to %s:%d", slot, *to)
                        moved = True
                        assert self.table is not None
                        self.table[slot] = to  # (kept if the refresh below fails)
                    else:
                        asks[i] = to
                        if (slot, to) not in self._asked:
                            self._asked.add((slot, to))
                            logger.info("redis cluster: slot %d migrating to %s:%d", slot, *to)
            if not todo:
                return replies
            todo.sort()  # the commands of one stream stay in their order
            if moved:
                await self.refresh()
                logger.info("redis cluster: slot map asked again")
        self.table = None
        raise TransientError(f"commands still redirected after {MAX_REDIRECTS} tries: resharding?")

    async def _send(
        self,
        address: Address,
        ids: list[int],
        payload: bytes,
        spans: list[tuple[int, int, bytes | None]],
        asks: dict[int, Address],
    ) -> list[object]:
        """Commands ``ids`` of ``payload`` to one node in one pipeline: their replies."""
        parts = []
        for i in ids:
            if i in asks:
                parts.append(ASKING)  # lets the next command into a slot being imported
            start, end, _ = spans[i]
            parts.append(payload[start:end])
        replies, _ = await self.node(address)._roundtrip(b"".join(parts), len(parts))
        if len(parts) == len(ids):
            return replies
        ours, at = [], 0  # without the replies to ASKING
        for i in ids:
            at += i in asks
            ours.append(replies[at])
            at += 1
        return ours

    async def close(self) -> None:
        self.table = None
        for node in self.nodes.values():
            await node.close()


CLUSTER_SLOTS = command(b"CLUSTER", b"SLOTS")
ASKING = command(b"ASKING")
