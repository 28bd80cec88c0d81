"""A publisher for producer tests that keeps the frames it is given instead of writing them."""

from __future__ import annotations

from common.metrics import Metrics
from producer.publisher import Publisher
from producer.wire import RedisWire, XaddPacker


class Recorder(Publisher):
    """A publisher that keeps what it is given (no Redis)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(
            RedisWire("redis://127.0.0.1:1/0"), buffer_frames=10, pipeline_max=10, metrics=metrics
        )
        self.frames: list[tuple[bytes, bool]] = []
        self.markers: list[tuple[str, bytes]] = []  # (connection id, marker JSON)

    def put(self, packer: XaddPacker, frame: bytes, binary: bool, seq: int, recv_ns: int) -> bool:
        self.frames.append((frame, binary))
        return True

    def mark(self, packer: XaddPacker, payload: bytes) -> None:
        self.markers.append((packer.conn_id, payload))
