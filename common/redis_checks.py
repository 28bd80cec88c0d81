"""What a Redis server must be for the stream to be a durable buffer, checked at start.

The stream holds every frame until a consumer has stored it. A server that evicts keys of any
kind when its memory fills (``maxmemory-policy allkeys-*``) would delete a stream, and the frames
in it, without a word: the producer and the consumer refuse such a server at start (exit 4).
``noeviction`` (deploy/redis.conf) refuses writes instead, which the producer spills; a
``volatile-*`` policy only evicts keys with a TTL (the heartbeats), never a stream. A server
without AOF is only warned about: its restart loses what is not stored yet, but replication may
be the user's answer.

Read with ``INFO memory`` and ``INFO persistence`` (``+info`` in the README's ACL). A server that
cannot be asked (unreachable, the command refused) is not checked; nothing else waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis

from .errors import FatalError

logger = logging.getLogger(__name__)

FIX = "set maxmemory-policy noeviction (deploy/redis.conf), or a volatile-* policy"


def eviction_problem(info: Mapping[str, Any]) -> str | None:
    """Why this server may delete a stream (``INFO memory``), or None."""
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy.startswith("allkeys-"):
        return (
            f"maxmemory-policy is {policy}: when its memory fills, Redis deletes keys of any "
            "kind, the streams too, and their frames would be lost unseen"
        )
    return None


def persistence_warning(info: Mapping[str, Any]) -> str | None:
    """What a restart of this server loses (``INFO persistence``), or None."""
    if str(info.get("aof_enabled", "1")) in ("0", "False", "false"):
        return (
            "AOF is off (appendonly no): a restart of Redis loses every frame not yet stored "
            "in PostgreSQL; turn it on (deploy/redis.conf) unless replication covers it"
        )
    return None


def per_server(reply: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """One INFO map per server: a cluster client answers with a map per node."""
    if reply and all(isinstance(v, Mapping) for v in reply.values()):
        return list(reply.values())
    return [reply]


def eviction_problems(memory: Mapping[str, Any]) -> list[str]:
    """:func:`eviction_problem` of each server of an ``INFO memory`` reply, once each."""
    return sorted({p for info in per_server(memory) if (p := eviction_problem(info)) is not None})


def check_redis(client: Any, who: str) -> None:
    """Refuse a server that may evict the streams; warn about one without AOF.

    Raises:
        FatalError: a server's ``maxmemory-policy`` is ``allkeys-*`` (exit status 4).
    """
    try:
        memory: Mapping[str, Any] = client.info("memory")
        persistence: Mapping[str, Any] = client.info("persistence")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        logger.info("%s: redis not checked at start (%s)", who, exc)
        return
    except redis.RedisError as exc:  # NOPERM for INFO, a proxy without it, ...
        logger.warning("%s: redis not checked at start: INFO refused (%s)", who, exc)
        return
    problems = eviction_problems(memory)
    if problems:
        raise FatalError("redis", "EVICTION", problems[0], FIX)
    for info in per_server(persistence):
        warning = persistence_warning(info)
        if warning is not None:
            logger.warning("%s: %s", who, warning)
            break
