"""``tickvault dlq``: list, show, requeue and purge the dead letters of ``tickvault:dead:{<ex>}``.

A dead letter (written by ``consumer.deadletter``) is one frame's original entry fields
(``f k e x c n t``, and ``l`` for a run that could not be split) plus ``reason``, ``origin``
(its id in the raw stream) and ``stream`` (the raw stream it came from).

Invariants:

- ``requeue`` adds the original fields back to the raw stream (XADD, no MAXLEN: the producer's
  own XADDs trim it) and deletes the dead letter (XDEL) only after that XADD returned an id. A
  failure in between leaves the frame in both streams, so at worst it is requeued twice, which
  the idempotent inserts absorb; never in neither. The current parsers then process it like any
  new entry: a good frame is stored, a bad one comes back as a new dead letter.
- ``requeue --all`` and ``purge`` act on the dead letters counted before the confirmation only:
  each stream is read again up to the last id counted, so a dead letter added since (a requeued
  frame refused again among them) is left alone.
- nothing is changed without ``--yes`` or a ``y`` typed at a terminal.

Exit statuses: 0 done (also when there was nothing to do); 1 ``list`` found no dead letter (as
grep), ``show`` or ``requeue`` named an id that is in no dead-letter stream; 2 a usage error or
a confirmation refused (no terminal to ask and no ``--yes``, or not answered ``y``). A Redis
that cannot be reached raises redis-py's error (``common.cli`` maps it to its status).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis

from common.config import Settings, load_settings, parse_duration
from common.envelope import DEAD_PREFIX, RAW_PREFIX, dead_key, exchange_of_key, raw_key
from common.logs import setup_logging
from common.redis_url import redis_client

from .process import bounded
from .replay import before, to_stream_id

META = (b"reason", b"origin", b"stream")  # what dead-lettering added to the frame's fields
ENVELOPE = (b"f", b"k", b"e", b"x", b"c", b"n", b"t", b"l")  # the producer's field order
PAGE = 200  # entries per XRANGE (frames up to max_frame_bytes each: keep pages small)
GROUP = 50  # dead letters per pipelined XADD round trip, then one XDEL round trip
REASON_COLUMN = 100  # characters of a reason on a list line
CLASS_MAX = 60
PLAN_LINES = 20  # dead letters shown before a confirmation
PREVIEW_BYTES = 2_048  # of a frame that is not printable text
MAX_ID_SEQ = 18446744073709551615

_ID = re.compile(r"^\d+-\d+$")


# -- the pure part ------------------------------------------------------------------------------
def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def after(stream_id: str) -> str:
    """The id just after ``stream_id`` (the next page's first possible id)."""
    ms, seq = id_key(stream_id)
    return f"{ms + 1}-0" if seq >= MAX_ID_SEQ else f"{ms}-{seq + 1}"


def id_time(stream_id: str) -> str:
    """When the entry was added: its id's milliseconds, as UTC."""
    when = dt.datetime.fromtimestamp(id_key(stream_id)[0] / 1000, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def before_bound(text: str, now_s: float) -> str:
    """The last stream id strictly before ``text``: a duration (``7d``: that long before
    ``now_s``), an ISO time (UTC if no zone) or a stream id.

    Raises:
        ValueError: ``text`` is none of these.
    """
    try:
        seconds = parse_duration(text)
    except ValueError:
        try:
            start = to_stream_id(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is neither a duration (7d, 12h), an ISO time nor a stream id"
            ) from None
    else:
        start = f"{max(0, int((now_s - seconds) * 1000))}-0"
    return before(start)


def reason_class(reason: str, exchange: str) -> str:
    """The reason up to its first ``:`` (``postgres rejected (22P02)``); a venue's own reason,
    ``binance: undecodable frame: ...``, up to its second."""
    head, sep, rest = reason.partition(":")
    if sep and head == exchange:
        head = f"{head}: {rest.strip().partition(':')[0]}"
    return bounded(head.strip(), CLASS_MAX)


def matches(reason: str, pattern: str | None) -> bool:
    """``--reason``: the reason contains ``pattern``, in any case."""
    return pattern is None or pattern.casefold() in reason.casefold()


def original_fields(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The frame's entry as it was: the envelope fields in the producer's order (the order the
    consumer's fast path reads), then any other field it had; the dead-letter fields dropped."""
    out = {name: fields[name] for name in ENVELOPE if name in fields}
    out.update((k, v) for k, v in fields.items() if k not in out and k not in META)
    return out


def _printable(text: str) -> bool:
    return text.isprintable() or text.replace("\n", "").replace("\t", "").isprintable()


def describe_frame(frame: bytes) -> str:
    """The frame for a terminal: as text when it is printable UTF-8, else escaped (``\\xNN``)
    and cut at ``PREVIEW_BYTES``; never a control character that would reach the terminal."""
    try:
        text: str | None = frame.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _printable(text):
        return f"frame     {len(frame)} bytes, UTF-8 text:\n{text}"
    shown = frame[:PREVIEW_BYTES]
    cut = f", the first {len(shown)} shown" if len(shown) < len(frame) else ""
    what = "not UTF-8" if text is None else "UTF-8 with control characters"
    return f"frame     {len(frame)} bytes, {what}, escaped{cut}:\n{repr(shown)[2:-1]}"


class Row(NamedTuple):
    id: str
    exchange: str
    origin: str
    reason: str


@dataclass(frozen=True, slots=True)
class Letter:
    """One entry of a dead-letter stream."""

    exchange: str
    id: str
    fields: dict[bytes, bytes]

    def text(self, name: bytes, limit: int = 500) -> str:
        return bounded(_s(self.fields.get(name, b"")), limit)

    @property
    def reason(self) -> str:
        return self.text(b"reason")

    def target(self) -> str:
        """The raw stream to requeue into: the one it came from, else its exchange's."""
        stream = _s(self.fields.get(b"stream", b""))
        return stream if stream.startswith(RAW_PREFIX) else raw_key(self.exchange)

    def row(self) -> Row:
        return Row(self.id, bounded(self.exchange, 40), self.text(b"origin", 40), self.reason)


def table(rows: list[Row]) -> list[str]:
    """One line per dead letter, under a header."""
    wid = max([len("ID"), *(len(r.id) for r in rows)])
    wex = max([len("EXCHANGE"), *(len(r.exchange) for r in rows)])
    wor = max([len("ORIGIN"), *(len(r.origin) for r in rows)])
    lines = [f"{'ID':<{wid}}  {'TIME':<20}  {'EXCHANGE':<{wex}}  {'ORIGIN':<{wor}}  REASON"]
    for r in rows:
        reason = bounded(r.reason, REASON_COLUMN)
        lines.append(
            f"{r.id:<{wid}}  {id_time(r.id):<20}  {r.exchange:<{wex}}  {r.origin:<{wor}}  {reason}"
        )
    return lines


def describe(letter: Letter) -> str:
    """A dead letter in full, every field shown safely."""
    f = letter.fields
    lines = [
        f"id        {letter.id} (dead-lettered {id_time(letter.id)})",
        f"exchange  {bounded(letter.exchange, 40)} ({bounded(dead_key(letter.exchange))})",
        f"stream    {letter.text(b'stream')} (requeue into {letter.target()})",
        f"origin    {letter.text(b'origin')}",
        f"reason    {letter.reason}",
    ]
    for name, value in original_fields(f).items():
        if name == b"f":
            continue
        shown = bounded(_s(value))
        if name == b"t" and value.isdigit():
            when = dt.datetime.fromtimestamp(int(value) / 1e9, dt.UTC)
            shown += f" (received {when.isoformat(timespec='milliseconds')})"
        lines.append(f"{bounded(_s(name), 8):<8}  {shown}")
    lines.append(describe_frame(f[b"f"]) if b"f" in f else "frame     (no f field)")
    return "\n".join(lines)


@dataclass
class Plan:
    """The dead letters a requeue or purge acts on, counted before the confirmation."""

    count: int = 0
    last: dict[str, str] = field(default_factory=dict)  # exchange -> last id counted
    preview: list[Row] = field(default_factory=list)
    targets: Counter[str] = field(default_factory=Counter)  # raw stream -> dead letters
    letters: list[Letter] | None = None  # named by id: these (else read again up to ``last``)

    def add(self, letter: Letter) -> None:
        self.count += 1
        self.last[letter.exchange] = letter.id
        self.targets[letter.target()] += 1
        if len(self.preview) < PLAN_LINES:
            self.preview.append(letter.row())

    def lines(self, verb: str, *, into: bool) -> list[str]:
        out = [f"{verb} {self.count} dead letter{'s' if self.count != 1 else ''}, oldest first:"]
        out += table(self.preview)
        if self.count > len(self.preview):
            out.append(f"... and {self.count - len(self.preview)} more")
        if into:
            out += [f"into {key}: {n}" for key, n in sorted(self.targets.items())]
        return out


# -- Redis --------------------------------------------------------------------------------------
def dead_exchanges(client: redis.Redis, settings: Settings, chosen: list[str] | None) -> list[str]:
    """``--exchange``, else the configured exchanges, else every ``tickvault:dead:*`` stream."""
    if chosen:
        return list(dict.fromkeys(chosen))
    if settings.exchanges:
        return list(settings.exchanges)
    found = set()
    for key in client.scan_iter(match=f"{DEAD_PREFIX}*", count=1000, _type="STREAM"):
        try:
            found.add(exchange_of_key(_s(key)))
        except ValueError:  # not one of ours (no hash tag)
            continue
    return sorted(found)


def letters(
    client: redis.Redis, exchange: str, *, newest: bool = False, low: str = "-", high: str = "+"
) -> Iterator[Letter]:
    """The dead letters of ``exchange`` between ``low`` and ``high`` (ids, inclusive), a page
    of ``PAGE`` entries per round trip."""
    key = dead_key(exchange)
    while True:
        rows: Any = (
            client.xrevrange(key, max=high, min=low, count=PAGE)
            if newest
            else client.xrange(key, min=low, max=high, count=PAGE)
        )
        for entry_id, fields in rows:
            yield Letter(exchange, _s(entry_id), dict(fields))
        if len(rows) < PAGE:
            return
        last = _s(rows[-1][0])
        if newest:
            high = before(last)
        else:
            low = after(last)


def find(client: redis.Redis, exchanges: list[str], stream_id: str) -> list[Letter]:
    """The dead letters with id ``stream_id`` (one per exchange at most)."""
    found = []
    for exchange in exchanges:
        rows: Any = client.xrange(dead_key(exchange), stream_id, stream_id)
        found += [Letter(exchange, _s(i), dict(f)) for i, f in rows]
    return found


def requeue(client: redis.Redis, todo: Iterable[Letter]) -> Iterator[tuple[Letter, str | None]]:
    """Requeue ``todo`` in groups of ``GROUP``: yields each dead letter with its new id (None:
    it holds no frame field to add, and stays).

    Per group, one pipelined round trip of XADDs, then one of XDELs for the dead letters whose
    XADD returned an id. Raises the first XADD error of a group after deleting the others.
    """
    for batch in _batched(todo):
        group = []
        for letter in batch:
            if original_fields(letter.fields):
                group.append(letter)
            else:  # nothing to add (an entry without fields was dead-lettered): left in place
                yield letter, None
        if not group:
            continue
        pipe = client.pipeline(transaction=False)
        for letter in group:
            pipe.xadd(letter.target(), original_fields(letter.fields))  # type: ignore[arg-type]
        results = pipe.execute(raise_on_error=False)
        done = [(ltr, _s(r)) for ltr, r in zip(group, results, strict=True) if _is_id(r)]
        if done:
            pipe = client.pipeline(transaction=False)
            for letter, _ in done:
                pipe.xdel(dead_key(letter.exchange), letter.id)
            pipe.execute()
        yield from done
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]


def _is_id(result: Any) -> bool:
    return isinstance(result, bytes | str)


def _batched(items: Iterable[Letter]) -> Iterator[tuple[Letter, ...]]:
    it = iter(items)
    while group := tuple(itertools.islice(it, GROUP)):
        yield group


def purge(client: redis.Redis, todo: Iterable[Letter]) -> int:
    """XDEL ``todo``, ``PAGE`` ids per command; how many were deleted."""
    deleted = 0
    for group in _pages(todo):
        deleted += int(client.xdel(dead_key(group[0].exchange), *(ltr.id for ltr in group)))
    return deleted


def _pages(items: Iterable[Letter]) -> Iterator[list[Letter]]:
    page: list[Letter] = []
    for letter in items:
        if page and (len(page) >= PAGE or letter.exchange != page[0].exchange):
            yield page
            page = []
        page.append(letter)
    if page:
        yield page


# -- the commands -------------------------------------------------------------------------------
def _stream_id(text: str) -> str:
    if not _ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a stream id like 1700000000000-0")
    return text


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return int(text)


def _before(text: str) -> str:
    try:
        return before_bound(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    common.add_argument(
        "--exchange", action="append", metavar="X",
        help="this exchange's dead letters (repeatable; default: the configured exchanges, "
        "else every tickvault:dead:* stream)",
    )  # fmt: skip
    reason = argparse.ArgumentParser(add_help=False)
    reason.add_argument("--reason", metavar="R", help="only reasons containing R (any case)")
    yes = argparse.ArgumentParser(add_help=False)
    yes.add_argument("--yes", action="store_true", help="do it without asking")
    p = argparse.ArgumentParser(
        prog="tickvault dlq", description="dead letters: list, show, requeue, purge"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls = sub.add_parser(
        "list", parents=[common, reason], help="dead letters, newest first, and a summary"
    )
    ls.add_argument("--limit", type=_count, default=50, metavar="N", help="lines (0: all)")
    ls.add_argument("--oldest", action="store_true", help="oldest first")
    show = sub.add_parser("show", parents=[common], help="one dead letter in full")
    show.add_argument("id", type=_stream_id)
    rq = sub.add_parser(
        "requeue", parents=[common, reason, yes], help="back into their raw streams"
    )
    rq.add_argument("ids", nargs="*", type=_stream_id, metavar="ID", help="dead-letter ids")
    rq.add_argument("--all", action="store_true", help="every dead letter (see --reason)")
    pg = sub.add_parser("purge", parents=[common, reason, yes], help="delete dead letters")
    pg.add_argument(
        "--before", type=_before, metavar="T",
        help="only those dead-lettered before T: a duration (7d, 12h), ISO time or stream id",
    )  # fmt: skip
    return p


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error (argparse printed it)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    setup_logging()
    settings = load_settings(args.config)
    client = redis_client_for(settings)
    try:
        exchanges = dead_exchanges(client, settings, args.exchange)
        command = {"list": _list, "show": _show, "requeue": _requeue, "purge": _purge}
        return command[args.command](args, client, exchanges)
    finally:
        client.close()


def redis_client_for(settings: Settings) -> redis.Redis:
    return redis_client(settings.redis.url, socket_connect_timeout=5.0, socket_timeout=60.0)


def _usage(message: str) -> int:
    print(f"tickvault dlq: {message}", file=sys.stderr)
    return 2


def _list(args: argparse.Namespace, client: redis.Redis, exchanges: list[str]) -> int:
    newest = not args.oldest
    limit = args.limit or None
    rows: list[Row] = []
    classes: Counter[tuple[str, str]] = Counter()
    for exchange in exchanges:
        taken = 0
        for letter in letters(client, exchange, newest=newest):
            reason = letter.reason
            if not matches(reason, args.reason):
                continue
            classes[(exchange, reason_class(reason, exchange))] += 1
            if limit is None or taken < limit:
                rows.append(letter.row())
                taken += 1
    matching = f" matching {args.reason!r}" if args.reason else ""
    if not rows:
        where = ", ".join(dead_key(e) for e in exchanges) or "no tickvault:dead:* stream"
        print(f"no dead letters{matching} ({where})")
        return 1
    rows.sort(key=lambda r: (id_key(r.id), r.exchange), reverse=newest)
    rows = rows[:limit]
    total = sum(classes.values())
    print("\n".join(table(rows)))
    order = "newest" if newest else "oldest"
    print(f"\n{len(rows)} of {total} dead letters{matching} shown, {order} first")
    wex = max(len("EXCHANGE"), *(len(e) for e, _ in classes))
    print(f"{'EXCHANGE':<{wex}}  {'COUNT':>8}  REASON CLASS")
    for (exchange, cls), n in sorted(classes.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0])):
        print(f"{exchange:<{wex}}  {n:>8}  {cls}")
    return 0


def _show(args: argparse.Namespace, client: redis.Redis, exchanges: list[str]) -> int:
    found = find(client, exchanges, args.id)
    if not found:
        where = ", ".join(dead_key(e) for e in exchanges) or "no tickvault:dead:* stream"
        print(f"tickvault dlq: no dead letter {args.id} in {where}", file=sys.stderr)
        return 1
    print("\n\n".join(describe(letter) for letter in found))
    return 0


def confirm(question: str, yes: bool) -> bool | None:
    """True: ``--yes``, or ``y`` typed at the terminal; False: not ``y``; None: no terminal."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return None
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _agreed(verb: str, plan: Plan, yes: bool) -> int | None:
    """None to go ahead, else the exit status (2: no terminal to ask, or not answered y)."""
    noun = f"{plan.count} dead letter{'s' if plan.count != 1 else ''}"
    answer = confirm(f"{verb} {noun}?", yes)
    if answer is None:
        return _usage(f"refusing to {verb} {noun} without --yes (stdin is not a terminal)")
    if not answer:
        return _usage(f"not confirmed: nothing done (--yes to {verb} without asking)")
    return None


def _scan(client: redis.Redis, exchanges: list[str], reason: str | None, high: str = "+") -> Plan:
    plan = Plan()
    for exchange in exchanges:
        for letter in letters(client, exchange, high=high):
            if matches(letter.reason, reason):
                plan.add(letter)
    return plan


def _planned(client: redis.Redis, plan: Plan, reason: str | None) -> Iterator[Letter]:
    """The planned dead letters, read again (those deleted since are skipped)."""
    if plan.letters is not None:
        for letter in plan.letters:
            yield from find(client, [letter.exchange], letter.id)
        return
    for exchange, last in plan.last.items():
        for letter in letters(client, exchange, high=last):
            if matches(letter.reason, reason):
                yield letter


def _requeue(args: argparse.Namespace, client: redis.Redis, exchanges: list[str]) -> int:
    if bool(args.ids) == bool(args.all):
        return _usage("requeue: give dead-letter ids or --all, not both")
    missing: list[str] = []
    if args.all:
        plan = _scan(client, exchanges, args.reason)
    else:
        named: list[Letter] = []
        plan = Plan(letters=named)
        for stream_id in dict.fromkeys(args.ids):
            found = find(client, exchanges, stream_id)
            if not found:
                missing.append(stream_id)
            named += [ltr for ltr in found if matches(ltr.reason, args.reason)]
        for letter in named:
            plan.add(letter)
        where = ", ".join(dead_key(e) for e in exchanges) or "no tickvault:dead:* stream"
        for stream_id in missing:
            print(f"tickvault dlq: no dead letter {stream_id} in {where}", file=sys.stderr)
    status = 1 if missing else 0
    if not plan.count:
        print("nothing to requeue")
        return status
    print("\n".join(plan.lines("requeue", into=True)))
    refused = _agreed("requeue", plan, args.yes)
    if refused is not None:
        return refused
    done: Counter[str] = Counter()
    for letter, new_id in requeue(client, _planned(client, plan, args.reason)):
        if new_id is None:
            print(f"left {letter.id} ({letter.exchange}): it holds no frame fields to requeue")
            continue
        done[letter.target()] += 1
        if plan.letters is not None:
            print(f"requeued {letter.id} ({letter.exchange}) as {new_id} in {letter.target()}")
    for key, n in sorted(done.items()):
        print(f"requeued {n} dead letter{'s' if n != 1 else ''} into {key}")
    if not done:
        print("requeued nothing (the dead letters were gone: requeued or purged meanwhile?)")
    return status


def _purge(args: argparse.Namespace, client: redis.Redis, exchanges: list[str]) -> int:
    plan = _scan(client, exchanges, args.reason, high=args.before or "+")
    if not plan.count:
        print("nothing to purge")
        return 0
    print("\n".join(plan.lines("purge", into=False)))
    refused = _agreed("purge", plan, args.yes)
    if refused is not None:
        return refused
    deleted = purge(client, _planned(client, plan, args.reason))
    print(f"purged {deleted} dead letter{'s' if deleted != 1 else ''}")
    return 0


__all__ = [
    "Letter",
    "Plan",
    "after",
    "before_bound",
    "dead_exchanges",
    "describe",
    "describe_frame",
    "find",
    "letters",
    "main",
    "original_fields",
    "purge",
    "reason_class",
    "requeue",
]
