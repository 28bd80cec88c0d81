"""How much of each stream to keep, counted in frames (pure: entry ids are passed in).

``redis.maxlen`` is the replay window in frames. Each XADD also carries ``MAXLEN ~ maxlen``, but
Redis counts entries, and an entry holds one frame or a run of up to ``RUN_MAX``: under load the
stream would keep up to that many times more frames (and memory) than asked. So the publisher
counts the frames it wrote per stream in one-second buckets of entry id time, and trims older
seconds with ``XTRIM key MINID ~ <ms>`` once the newer ones hold ``max_frames``.

A slow stream would need many buckets to hold ``max_frames`` (5 frames a second: 1,000,000
seconds); past ``MAX_BUCKETS`` a stream's buckets merge pairwise into buckets twice as wide, so
memory stays bounded and the window overshoots by at most one bucket.

Trimming never removes one of the newest ``max_frames`` frames this producer wrote. Another
producer writing to the same stream only makes the window longer (its frames are not counted
here); a restarted producer counts from zero, so until it has written ``max_frames`` frames only
the entry cap trims.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_BUCKETS = 4096


@dataclass
class _Stream:
    buckets: deque[list[int]] = field(default_factory=deque)  # [start ms, frames]
    frames: int = 0
    trim_ms: int = 0  # entries with ids below this ms may go
    width_ms: int = 1000  # each bucket's span

    def coarsen(self) -> None:
        """Merge buckets pairwise: twice as wide, half as many."""
        self.width_ms *= 2
        merged: deque[list[int]] = deque()
        for start, frames in self.buckets:
            start = start // self.width_ms * self.width_ms
            if merged and merged[-1][0] == start:
                merged[-1][1] += frames
            else:
                merged.append([start, frames])
        self.buckets = merged


class FrameWindow:
    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self._streams: dict[str, _Stream] = {}
        self._moved: set[str] = set()

    def add(self, key: str, entry_id: bytes, frames: int) -> None:
        """Count an entry of ``frames`` frames that Redis stored as ``entry_id``."""
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
        start = int(entry_id.partition(b"-")[0]) // stream.width_ms * stream.width_ms
        buckets = stream.buckets
        if buckets and buckets[-1][0] >= start:
            buckets[-1][1] += frames  # same bucket (or a clock step back: keep it in the last)
        else:
            buckets.append([start, frames])
            if len(buckets) > MAX_BUCKETS:
                stream.coarsen()
                buckets = stream.buckets
        stream.frames += frames
        # Drop whole buckets from the front while the rest still holds max_frames.
        while len(buckets) > 1 and stream.frames - buckets[0][1] >= self.max_frames:
            stream.frames -= buckets.popleft()[1]
            stream.trim_ms = buckets[0][0]
            self._moved.add(key)

    def trims(self) -> list[tuple[str, int]]:
        """(key, MINID ms) for each stream whose window moved since the last call."""
        out = [(key, self._streams[key].trim_ms) for key in sorted(self._moved)]
        self._moved.clear()
        return out

    def frames(self, key: str) -> int:
        """Frames counted in ``key``'s window."""
        stream = self._streams.get(key)
        return stream.frames if stream else 0

    def buckets(self, key: str) -> int:
        stream = self._streams.get(key)
        return len(stream.buckets) if stream else 0
