"""Replay: process a range still in the stream again, through a fresh consumer group.

The group is created just before ``--from`` and removed at the end; rows already stored are
skipped by their natural keys, so a replay adds only what is missing (for example rows a fixed
parser can now read).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time

from common.config import Settings
from common.redis_url import RedisClient

from .store import Store
from .worker import Worker

logger = logging.getLogger(__name__)

_ID = re.compile(r"^\d+(-\d+)?$")


def to_stream_id(text: str, *, end: bool = False) -> str:
    """A stream id from ``ID`` or an ISO-8601 time (UTC if no zone): ``1700000000000-0``."""
    if _ID.match(text):
        return text if "-" in text else f"{text}-{18446744073709551615 if end else 0}"
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a stream id (1700000000000-0) nor an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    ms = int(when.timestamp() * 1000)
    return f"{ms}-{18446744073709551615 if end else 0}"


def before(stream_id: str) -> str:
    """The id just before ``stream_id`` (XGROUP CREATE takes the last id already delivered)."""
    ms, seq = (int(x) for x in stream_id.split("-"))
    if seq > 0:
        return f"{ms}-{seq - 1}"
    if ms > 0:
        return f"{ms - 1}-18446744073709551615"
    return "0-0"


def replay(
    settings: Settings,
    streams: list[str],
    *,
    start: str,
    end: str | None,
    client: RedisClient,
    store: Store,
) -> dict[str, int]:
    group = f"tickvault-replay-{int(time.time() * 1000)}"
    for key in streams:
        client.xgroup_create(key, group, id=before(start), mkstream=False)
    try:
        worker = Worker.from_settings(
            settings,
            name="replay",
            streams=streams,
            redis_client=client,
            store=store,
            group=group,
            claim=False,
            read_pending_first=False,
            stop_when_drained=True,
            until={k: end for k in streams} if end else None,
        )
        logger.info("replaying %s from %s to %s in group %s", streams, start, end or "end", group)
        worker.run(threading.Event())
        return dict(worker.metrics.counters)
    finally:
        for key in streams:
            client.xgroup_destroy(key, group)
