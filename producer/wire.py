"""The producer's Redis hot path: XADD commands packed by hand, sent in pipelines over one raw
connection, replies parsed by hiredis.

redis-py builds each command in Python and sets up a timeout per reply; for the producer's one
command that costs more than the whole rest of a frame's journey. Here a connection's constant
parts (key, MAXLEN, exchange, context, connection id) are encoded once, so packing a frame is
one ``%`` format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import hiredis

from common.envelope import RUN_MAX
from common.errors import Action, TransientError, classify, fatal_error
from common.redis_url import redis_options


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


class RedisWire:
    """One connection that sends packed commands and checks their replies.

    Its host, port, unix socket, database, ACL user, password and TLS settings are redis-py's
    reading of ``url`` (``common.redis_url``): the same as the consumer's client.

    Raises:
        ConfigError: ``url`` is not one both processes read the same, or a TLS file of it does
            not load.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.options = redis_options(url)
        self._tls = self.options.ssl_context()  # built once: its files are read now
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

    async def connect(self) -> None:
        """Open the connection and authenticate, select the database and PING.

        Raises:
            TransientError: the server is unreachable (refused, reset, timed out).
            FatalError: a refusal no retry can fix: a certificate that does not verify, a unix
                socket the process may not open, NOAUTH, WRONGPASS.
        """
        await self.close()
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
        return self._writer is not None and not self._writer.is_closing()

    async def execute(self, payload: bytes, count: int) -> list[object]:
        """Send ``count`` packed commands and return their replies.

        Raises:
            TransientError: the connection failed, or Redis answered an error worth retrying
                (OOM, READONLY, LOADING, ...: ``common.errors``): the caller sends the same
                commands again later.
            FatalError: Redis refused in a way no retry can fix (WRONGTYPE, NOPERM, NOAUTH,
                an unknown command).
        """
        if not self.connected:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        errors: list[hiredis.ReplyError] = []
        replies: list[object] = []
        try:
            async with asyncio.timeout(self.timeout):
                self._writer.write(payload)
                await self._writer.drain()
                left = count
                while left:
                    reply = self._parser.gets()
                    if reply is False:
                        data = await self._reader.read(1 << 16)
                        if not data:
                            raise ConnectionResetError("redis closed the connection")
                        self._parser.feed(data)
                        continue
                    left -= 1
                    replies.append(reply)
                    if isinstance(reply, hiredis.ReplyError):
                        errors.append(reply)
        except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
            await self.close()
            raise TransientError(f"redis connection lost: {exc!r}") from exc
        for error in errors:
            if classify(error) is not Action.RETRY:
                fatal = fatal_error(error)
                raise fatal if fatal is not None else error
        if errors:
            raise TransientError(f"redis refused {len(errors)} of {count} commands: {errors[0]}")
        return replies

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass
