"""The producer's receive fast path: whole WebSocket data frames cut out of the server's bytes.

The websockets client spends ~7 µs on every frame it receives (a generator-based parser, an
event, a queue, a future); cutting a plain frame out of the buffer here costs ~1 µs. Only the
frames a venue streams are taken: unfragmented text or binary frames, unmasked, with no RSV bit
(no compression). Every control frame (ping, pong, close) is handed to websockets whole, so its
protocol keeps answering pings and closing as before. The first frame of any other kind (a
fragment, a masked or compressed frame) ends the fast path for the connection: that frame and all
bytes after it go to websockets from then on.

:class:`FrameSplitter` is pure (no I/O); :class:`FastConnection` is the websockets connection
that uses it, given to ``websockets.asyncio.client.connect(create_connection=...)``.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

_FIN = 0x80
_RSV = 0x70
_OPCODE = 0x0F
_MASK = 0x80
_TEXT, _BINARY = 0x1, 0x2


class FrameSplitter:
    """Cuts whole frames out of a server's byte stream (RFC 6455 section 5.2)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[list[tuple[bytes, bool]], list[bytes], bytes]:
        """Take ``data``; return ``(messages, controls, rest)``.

        ``messages`` are the payloads of the plain data frames, each with ``True`` when the frame
        is binary. ``controls`` are whole control frames, as received. ``rest`` is empty, or the
        bytes from the first frame the fast path does not take: then this splitter is done and
        ``rest`` (with everything received later) belongs to the general parser.
        Bytes of an incomplete frame are kept for the next call.
        """
        buf = self._buffer + data if self._buffer else data
        messages: list[tuple[bytes, bool]] = []
        controls: list[bytes] = []
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                head = 4
                if size - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            elif length == 127:
                head = 10
                if size - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if b1 & _MASK:
                head += 4
            end = pos + head + length
            opcode = b0 & _OPCODE
            plain = not (b1 & _MASK) and not (b0 & _RSV) and b0 & _FIN
            if opcode >= 0x8 and plain:  # control frames are never fragmented
                if end > size:
                    break
                controls.append(buf[pos:end])
            elif plain and (opcode == _TEXT or opcode == _BINARY):
                if end > size:
                    break
                messages.append((buf[pos + head : end], opcode == _BINARY))
            else:
                self._buffer = b""
                return messages, controls, buf[pos:]
            pos = end
        self._buffer = buf[pos:]
        return messages, controls, b""


OnMessage = Callable[[bytes, bool], None]


class FastConnection(ClientConnection):
    """A websockets client connection that hands plain data frames to ``on_message`` as soon
    as they are read, instead of queueing them for ``recv()``.

    ``recv()`` still returns what websockets parses itself: frames that arrived with the
    handshake, and everything after a frame the fast path does not take. Set ``on_message``
    once the connection is open; until then, and on a compressed connection, nothing changes.
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
            self._splitter = FrameSplitter()
        messages, controls, rest = self._splitter.feed(data)
        on_message = self.on_message
        for payload, binary in messages:
            on_message(payload, binary)
        for frame in controls:
            super().data_received(frame)
        if rest:
            self._fast = False
            super().data_received(rest)

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
