"""``tickvault coverage``, ``tickvault gaps`` and ``tickvault backfill``: the completeness ledgers
from the command line (plain text, one line per interval or gap; exit 1 when something is
missing, so cron and CI can use them)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging

from common.config import Settings, load_settings
from common.errors import ConfigError
from common.logs import setup_logging
from common.metrics import Metrics

from .backfill import Backfiller, as_time
from .gaps import STATUSES, checked_exchanges, find_gaps, read_gaps
from .ledger import blind_intervals, read_sessions
from .store import Store


def _since(text: str | None, default: str) -> dt.datetime:
    try:
        return as_time(text or default)
    except ValueError:
        raise ConfigError("--since", f"{text!r} is not a duration (2h) or an ISO time") from None


def _common(parser: argparse.ArgumentParser, default_since: str) -> None:
    parser.add_argument("--config")
    parser.add_argument(
        "--since",
        help=f"a duration back from now (2h, 30m) or an ISO time (default {default_since})",
    )
    parser.add_argument("--exchange", action="append", help="only this exchange (repeatable)")
    parser.add_argument("--symbol", help="only this canonical symbol (BTC-USDT)")


def _store(settings: Settings) -> Store:
    store = Store(settings.database.url)
    store.connect()  # migrations: a fresh database has empty ledgers, not missing tables
    return store


def coverage(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickvault coverage",
        description="every interval in which a feed was blind, per exchange and symbol",
    )
    _common(parser, "24h")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    since = _since(args.since, "24h")
    now = dt.datetime.now(dt.UTC)
    exchanges = args.exchange or list(settings.exchanges)
    store = _store(settings)
    try:
        sessions = read_sessions(store.conn, since=since, exchanges=exchanges or None)
    finally:
        store.close()
    pairs = sorted({(s.exchange, sym) for s in sessions for sym in s.symbols})
    if args.symbol:
        pairs = [p for p in pairs if p[1] == args.symbol]
    blind_total = 0
    print(f"coverage since {since.isoformat(timespec='seconds')}: {len(sessions)} connection(s)")
    for exchange, symbol in pairs:
        mine = [s for s in sessions if s.exchange == exchange and symbol in s.symbols]
        blinds = blind_intervals(sessions, exchange, symbol, since=since, now=now)
        blind_total += len(blinds)
        state = "complete" if not blinds else f"{len(blinds)} blind interval(s)"
        print(f"{exchange:<16} {symbol:<16} {len(mine)} connection(s), {state}")
        for b in blinds:
            end = b.end.isoformat(timespec="milliseconds") if b.end else "now (still blind)"
            length = f"{b.seconds:.1f} s" if b.seconds is not None else "ongoing"
            print(f"    blind {b.start.isoformat(timespec='milliseconds')} .. {end} ({length}): "
                  f"{b.reason}")  # fmt: skip
    return 1 if blind_total else 0


def gaps(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickvault gaps",
        description="the gap ledger: what is missing, and what backfill made of it",
    )
    _common(parser, "24h")
    parser.add_argument("--status", action="append", choices=STATUSES)
    parser.add_argument(
        "--scan",
        action="store_true",
        help="scan the stored trade ids instead of reading the ledger (consecutive-id venues)",
    )
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    since = _since(args.since, "24h")
    store = _store(settings)
    try:
        if args.scan:
            exchanges = checked_exchanges(args.exchange or list(settings.exchanges) or None)
            found = find_gaps(store.conn, since=since, exchanges=exchanges)
            print(f"checked {', '.join(exchanges) or 'nothing'} since {since.isoformat()}: "
                  f"{len(found)} gap(s), {sum(g.missing for g in found)} missing")  # fmt: skip
            for g in found:
                where = f"{g.exchange:<16} {g.symbol:<16} ids {g.ids}"
                print(f"  {where} ({g.missing}) between {g.after.isoformat()} and "
                      f"{g.before.isoformat()}")  # fmt: skip
            return 1 if found else 0
        rows = read_gaps(
            store.conn, since=since, exchanges=args.exchange, symbol=args.symbol,
            statuses=args.status,
        )  # fmt: skip
    finally:
        store.close()
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none"
    print(f"gaps since {since.isoformat(timespec='seconds')}: {summary}")
    for row in rows:
        what = (
            f"ids {row.ids} ({row.missing})"
            if row.first_missing is not None
            else f"{row.after.isoformat(timespec='milliseconds')}.."
            f"{row.before.isoformat(timespec='milliseconds')}"
        )
        print(f"{row.id:>6} {row.exchange:<16} {row.symbol:<14} {row.status:<13} {what} "
              f"recovered {row.rows_recovered}: {row.note}")  # fmt: skip
    unsettled = [r for r in rows if r.status not in ("filled", "exchange-hole")]
    return 1 if unsettled else 0


def backfill(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickvault backfill",
        description="find gaps in the stored trades and fetch them from the venues' REST APIs",
    )
    _common(parser, "24h")
    parser.add_argument("--no-detect", action="store_true", help="only settle gaps already found")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = load_settings(args.config)
    since = _since(args.since, "24h")
    backfiller = Backfiller(settings, _store(settings), Metrics("backfill"))
    try:
        found = 0 if args.no_detect else backfiller.detect()
        outcomes = backfiller.backfill(
            exchanges=args.exchange, symbol=args.symbol, since=since, now=True
        )
    finally:
        backfiller.close()
    print(f"{found} new gap(s) found; {len(outcomes)} gap(s) worked on")
    for o in outcomes:
        g = o.gap
        what = f"ids {g.ids}" if g.first_missing is not None else (
            f"{g.after.isoformat(timespec='milliseconds')}..{g.before.isoformat(timespec='milliseconds')}"
        )  # fmt: skip
        print(f"{g.id:>6} {g.exchange:<16} {g.symbol:<14} {o.status:<13} {what}: {o.note}")
    return 1 if any(o.status in ("open", "unfillable") for o in outcomes) else 0
