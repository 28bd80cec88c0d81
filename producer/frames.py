"""The producer's receive fast path: whole WebSocket data frames cut out of the server's bytes.

The websockets client spends ~7 µs on every frame it receives (a generator-based parser, an
event, a queue, a future); cutting a plain frame out of the buffer here costs ~1 µs. Only the
frames a venue streams are taken: unfragmented text or binary frames, unmasked, with no RSV bit
(no compression), of at most ``max_size`` bytes. Every control frame (ping, pong, close) is handed
to websockets whole, so its protocol keeps answering pings and closing as before. The first frame
of any other kind (a fragment, a masked or compressed frame, one announcing more than
``max_size``) ends the fast path for the connection: that frame and all bytes after it go to
websockets from then on. Given the same ``max_size`` (``connect(max_size=...)``), websockets
refuses an oversized frame from its header alone (``PayloadTooBig``, close code 1009), so neither
path buffers more than the limit.

Text frames are bytes on both paths: never decoded, so a frame that is not valid UTF-8 is
recorded as received (the consumer dead-letters it) instead of closing the connection with 1007.
:class:`RawConnection` gives websockets' own path the same: ``recv_raw()`` is ``recv(decode=False)``
(which skips the UTF-8 check) plus whether the frame was binary.

:class:`FrameSplitter` is pure (no I/O); :class:`FastConnection` is the websockets connection
that uses it, given to ``websockets.asyncio.client.connect(create_connection=...)``. Both rely on
websockets internals (``data_received``, ``eof_received``, ``process_event``, the protocol's
state, size limit and ``parser_exc``): pyproject pins the majors checked, and
``.ci/websockets-bump`` runs these tests against the newest release.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, Protocol, State

_FIN = 0x80
_RSV = 0x70
_OPCODE = 0x0F
_MASK = 0x80
_TEXT, _BINARY = 0x1, 0x2
_CONTROL_MAX = 125  # RFC 6455 section 5.5: a control frame's payload is at most 125 bytes


class TruncatedFrame(EOFError):
    """The stream ended inside a frame (after ``received`` bytes of ``size``, when known)."""

    def __init__(self, message: str, *, received: int | None = None, size: int | None = None):
        super().__init__(message)
        self.received = received
        self.size = size


class FrameSplitter:
    """Cuts whole frames out of a server's byte stream (RFC 6455 section 5.2).

    An incomplete frame waits in a ``bytearray`` that grows by what each read adds, so a large
    frame costs time linear in its size (``copied`` counts the bytes it took).
    ``max_size`` (payload bytes) must be at least 125, a control frame's largest: frames with a
    7-bit length are not checked.
    """

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and max_size < _CONTROL_MAX:
            raise ValueError(f"max_size must be at least {_CONTROL_MAX}, not {max_size}")
        self.max_size = max_size
        self._pending = bytearray()  # the start of an incomplete frame
        self._need = 0  # that frame's whole size, once its header is known (else 0)
        self.copied = 0  # bytes copied into and out of the pending buffer, ever

    @property
    def pending(self) -> int:
        """Bytes held of an incomplete frame."""
        return len(self._pending)

    def feed(self, data: bytes) -> tuple[list[tuple[bytes, bool]], list[bytes], bytes]:
        """Take ``data``; return ``(messages, controls, rest)``.

        ``messages`` are the payloads of the plain data frames, each with ``True`` when the frame
        is binary. ``controls`` are whole control frames, as received. ``rest`` is empty, or the
        bytes from the first frame the fast path does not take: then this splitter is done and
        ``rest`` (with everything received later) belongs to the general parser.
        Bytes of an incomplete frame are kept for the next call.
        """
        messages: list[tuple[bytes, bool]] = []
        controls: list[bytes] = []
        pos = 0
        pending = self._pending
        if pending:
            need = self._need
            if not need:  # the header was cut: rare, and at most one read's worth is copied
                buf = bytes(pending) + data
                self.copied += len(buf)
                self._pending = bytearray()
                return self._split(buf, 0, messages, controls)
            missing = need - len(pending)
            if len(data) < missing:
                pending += data
                self.copied += len(data)
                return messages, controls, b""
            pending += memoryview(data)[:missing]
            self.copied += missing
            self._pending = bytearray()
            self._need = 0
            self.copied += need  # and once out of it
            messages, controls, rest = self._split(bytes(pending), 0, messages, controls)
            if rest:
                return messages, controls, rest + data[missing:]
            pos = missing
        return self._split(data, pos, messages, controls)

    def _split(
        self,
        buf: bytes,
        pos: int,
        messages: list[tuple[bytes, bool]],
        controls: list[bytes],
    ) -> tuple[list[tuple[bytes, bool]], list[bytes], bytes]:
        size = len(buf)
        limit = self.max_size if self.max_size is not None else 1 << 64
        small = limit < 0xFFFF  # a 16-bit length can exceed it (else: no test per frame)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                head = 4
                if size - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                if small and length > limit:
                    return messages, controls, buf[pos:]
            elif length == 127:
                head = 10
                if size - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                if length > limit:
                    return messages, controls, buf[pos:]  # from its header: nothing buffered
            if b1 & _MASK:
                head += 4
            end = pos + head + length
            opcode = b0 & _OPCODE
            plain = not (b1 & _MASK) and not (b0 & _RSV) and b0 & _FIN
            if opcode >= 0x8 and plain and length <= _CONTROL_MAX:  # never fragmented
                if end > size:
                    self._keep(buf, pos, end)
                    return messages, controls, b""
                controls.append(buf[pos:end])
            elif plain and (opcode == _TEXT or opcode == _BINARY):
                if end > size:
                    self._keep(buf, pos, end)
                    return messages, controls, b""
                messages.append((buf[pos + head : end], opcode == _BINARY))
            else:
                return messages, controls, buf[pos:]
            pos = end
        if pos < size:
            self._keep(buf, pos, 0)
        return messages, controls, b""

    def _keep(self, buf: bytes, pos: int, end: int) -> None:
        """Hold ``buf[pos:]``, the start of a frame ``end - pos`` bytes long (0: unknown yet)."""
        self._pending = bytearray(memoryview(buf)[pos:])
        self._need = end - pos if end else 0
        self.copied += len(buf) - pos

    def eof(self) -> None:
        """The stream ended. Raises :class:`TruncatedFrame` if it ended inside a frame."""
        if self._pending:
            received, size = len(self._pending), self._need or None
            of = f"of {size}" if size is not None else "of a header"
            raise TruncatedFrame(
                f"stream ended inside a frame: {received} bytes {of}", received=received, size=size
            )


OnMessage = Callable[[bytes, bool], None]


class RawConnection(ClientConnection):
    """A websockets client connection whose messages come as bytes, text frames included.

    ``recv(decode=False)`` does not check UTF-8 (websockets validates text only where it decodes
    it, in ``recv()``'s default mode, and then fails the connection with 1007); this class
    remembers each message's opcode so ``recv_raw()`` still says which were binary.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._binary: deque[bool] = deque()  # one per message queued for recv, in order
        self.cut_short: TruncatedFrame | None = None  # the stream ended inside a frame

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode in _FIRST_FRAMES:  # a message starts
            self._binary.append(event.opcode is Opcode.BINARY)
        super().process_event(event)

    async def recv_raw(self) -> tuple[bytes, bool]:
        """The next message's bytes, and True when it came in binary frames.

        Raises:
            ConnectionClosed: the connection is closed (websockets' own exception).
            TruncatedFrame: it was closed by the end of the stream inside a frame, held by the
                fast path or by websockets' parser (the ``ConnectionClosed`` is its cause).
        """
        try:
            data = await self.recv(decode=False)
        except ConnectionClosed as exc:
            cut = self.cut_short or _cut_in_parser(self.protocol)
            if cut is not None:
                raise cut from exc
            raise
        return data, self._binary.popleft()


def _cut_in_parser(protocol: Protocol) -> TruncatedFrame | None:
    """websockets' own parser met the end of the stream inside a frame: its reader raised
    ``EOFError("stream ends after N bytes, expected M bytes")`` (at a frame boundary the parser
    says "unexpected end of stream" instead)."""
    error = getattr(protocol, "parser_exc", None)
    if isinstance(error, EOFError) and "expected" in str(error):
        return TruncatedFrame(f"stream ended inside a frame: {error}")
    return None


_FIRST_FRAMES = (Opcode.TEXT, Opcode.BINARY)


def max_message_size(protocol: Protocol) -> int | None:
    """websockets' limit on a message: ``max_message_size`` since 16.0, ``max_size`` before."""
    size = getattr(protocol, "max_message_size", getattr(protocol, "max_size", None))
    return size if isinstance(size, int) else None


class FastConnection(RawConnection):
    """A websockets client connection that hands plain data frames to ``on_message`` as soon
    as they are read, instead of queueing them for ``recv()``.

    ``recv_raw()`` still returns what websockets parses itself: frames that arrived with the
    handshake, and everything after a frame the fast path does not take. Set ``on_message``
    once the connection is open; until then, and on a compressed connection, nothing changes.
    A stream that ends inside a frame the splitter holds makes ``recv_raw()`` raise
    :class:`TruncatedFrame`.
    """

    on_message: OnMessage | None = None
    _splitter: FrameSplitter | None = None
    _fast: bool = True
    _head_tail: bytes = b""

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol.state is State.CONNECTING:
            self._handshake_data(data)
            return
        if not self._fast or self.on_message is None or protocol.extensions:
            super().data_received(data)
            return
        if self._splitter is None:
            # The same limit as websockets' parser, which refuses the frames handed over.
            limit = max_message_size(protocol)
            if limit is not None and limit < _CONTROL_MAX:
                self._fast = False  # too small for the splitter: websockets checks every frame
                super().data_received(data)
                return
            self._splitter = FrameSplitter(limit)
        messages, controls, rest = self._splitter.feed(data)
        on_message = self.on_message
        for payload, binary in messages:
            on_message(payload, binary)
        for frame in controls:
            super().data_received(frame)
        if rest:
            self._fast = False
            super().data_received(rest)

    def eof_received(self) -> None:
        if self._fast and self._splitter is not None:
            try:
                self._splitter.eof()
            except TruncatedFrame as exc:
                self.cut_short = exc  # recv_raw() raises it
        super().eof_received()

    def _handshake_data(self, data: bytes) -> None:
        """Bytes of the HTTP response. Frames that came in the same read as its end go to
        websockets, which may stop inside one: then this connection stays on websockets."""
        seen = self._head_tail + data
        super().data_received(data)
        if self.protocol.state is State.CONNECTING:
            self._head_tail = seen[-3:]
            return
        end = seen.find(b"\r\n\r\n")
        if end < 0 or end + 4 < len(seen):
            self._fast = False
