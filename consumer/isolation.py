"""Finding the frames PostgreSQL refuses in a batch it refused (pure: the write is passed in).

A batch is one transaction: one bad row and nothing commits. The batch is split in halves, each
half written again, and only a half that is refused again is split further, down to single
frames. With ``k`` bad frames among ``n`` that is at most about ``2 k log2 n`` writes instead
of ``n`` (a 5,000-frame batch with one bad frame: ~25 writes, not 5,000), and every good frame
is committed on the way. Writes are idempotent, so writing a half again is harmless.

Only a *data* refusal (``classify(exc) is Action.DATA``) splits; any other error propagates to
the caller, who retries it or stops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from common.errors import Action, classify

S = TypeVar("S")


def isolate(
    parts: Sequence[S], write: Callable[[Sequence[S]], object]
) -> list[tuple[S, BaseException]]:
    """Write ``parts`` (which were refused together) in halves; return the single parts that
    are refused alone, each with its refusal. Everything else has been written."""
    refused: list[tuple[S, BaseException]] = []
    if len(parts) <= 1:
        return refused if not parts else _alone(parts[0], write)
    stack: list[Sequence[S]] = [parts[len(parts) // 2 :], parts[: len(parts) // 2]]
    while stack:
        part = stack.pop()
        if len(part) == 1:
            refused += _alone(part[0], write)
            continue
        try:
            write(part)
        except Exception as exc:
            if classify(exc) is not Action.DATA:
                raise
            middle = len(part) // 2
            stack.append(part[middle:])
            stack.append(part[:middle])
    return refused


def _alone(part: S, write: Callable[[Sequence[S]], object]) -> list[tuple[S, BaseException]]:
    try:
        write([part])
    except Exception as exc:
        if classify(exc) is not Action.DATA:
            raise
        return [(part, exc)]
    return []
