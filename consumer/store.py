"""PostgreSQL writes, one transaction per batch, two ways:

- a batch of up to ``statement_max_rows`` rows is one ``INSERT ... SELECT ... ON CONFLICT DO
  NOTHING`` statement per table (one round trip, committed by itself), its rows passed as one
  text parameter (fields split by tab, rows by newline) that the statement splits;
- a bigger batch is COPYed into session-private staging tables, then ``INSERT ... SELECT ... ON
  CONFLICT DO NOTHING`` and COMMIT go in one round trip (COPY is the cheapest per row, but its
  temporary table makes a commit cost about 0.4 ms more of the server's CPU).

Invariant: a call to :meth:`Store.write` either commits every row it was given (rows already
stored are skipped by their natural key) or commits nothing. Prices go to ``numeric`` as the
venue's decimal text and times as integer microseconds converted in SQL, so nothing passes
through a float.
"""

from __future__ import annotations

import copy
import logging
import select
from collections.abc import Sequence

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from common.errors import Action, TransientError, classify
from common.markers import Marker
from common.records import Quote, Trade

from .schema import migrate

logger = logging.getLogger(__name__)

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_trades (
    exchange text, symbol text, trade_id text, price text, amount text, side text,
    ts_us bigint, recv_us bigint, flags smallint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_quotes (
    exchange text, symbol text, update_id text, bid_price text, bid_amount text,
    ask_price text, ask_amount text, ts_us bigint, recv_us bigint, flags smallint
) ON COMMIT DELETE ROWS;
"""

_US = "'epoch'::timestamptz + {} * interval '1 microsecond'"

# The inserts read their rows from a source with the staging tables' columns (text decimals,
# integer microseconds): the staging table itself (COPY way), or a text parameter split in SQL.
_INSERT_TRADES = f"""
INSERT INTO trades (exchange, symbol, trade_id, price, amount, side, ts, recv_ts, flags)
SELECT exchange, symbol, trade_id, price::numeric, amount::numeric, side, {_US.format("ts_us")},
       {_US.format("recv_us")}, flags
FROM {{}}
ON CONFLICT DO NOTHING
"""

_INSERT_QUOTES = f"""
INSERT INTO quotes (exchange, symbol, update_id, bid_price, bid_amount, ask_price, ask_amount,
                    ts, recv_ts, flags)
SELECT exchange, symbol, update_id, bid_price::numeric, bid_amount::numeric,
       ask_price::numeric, ask_amount::numeric, {_US.format("ts_us")}, {_US.format("recv_us")},
       flags
FROM {{}}
ON CONFLICT DO NOTHING
"""

INSERT_TRADES = _INSERT_TRADES.format("stage_trades")
INSERT_QUOTES = _INSERT_QUOTES.format("stage_quotes")

# One statement, rows in one text parameter: "f1<TAB>f2...<NEWLINE>f1<TAB>...". Venue ids are
# the only free text; a batch where one holds a tab or newline goes the COPY way (escaped).
_ROWS = "unnest(string_to_array({}, E'\\n')) AS line, string_to_array(line, E'\\t') AS f"

TRADES_STATEMENT = _INSERT_TRADES.format(
    "(SELECT f[1] AS exchange, f[2] AS symbol, f[3] AS trade_id, f[4] AS price, f[5] AS amount,"
    " nullif(f[6], '') AS side, f[7]::int8 AS ts_us, f[8]::int8 AS recv_us,"
    " f[9]::int2 AS flags"
    f" FROM {_ROWS.format('%(trades)s')}) AS rows"
)

QUOTES_STATEMENT = _INSERT_QUOTES.format(
    "(SELECT f[1] AS exchange, f[2] AS symbol, f[3] AS update_id, f[4] AS bid_price,"
    " f[5] AS bid_amount, f[6] AS ask_price, f[7] AS ask_amount, f[8]::int8 AS ts_us,"
    " f[9]::int8 AS recv_us, f[10]::int2 AS flags"
    f" FROM {_ROWS.format('%(quotes)s')}) AS rows"
)

# Both tables in one statement (so in one transaction): data-modifying CTEs; RETURNING gives
# the rows each insert actually added.
BOTH_STATEMENT = (
    f"WITH t AS ({TRADES_STATEMENT} RETURNING 1), q AS ({QUOTES_STATEMENT} RETURNING 1) "
    "SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM q)"
)


# The same statements for libpq's own prepared-statement calls ($n parameters): a paced feed
# writes a small batch every few ms, and psycopg's cursor path (~100 us of Python, cold, per
# batch) cost more than the round trip. Parameters go as text, results are read directly.
_PQ = {
    "tv_trades": TRADES_STATEMENT.replace("%(trades)s", "$1").encode(),
    "tv_quotes": QUOTES_STATEMENT.replace("%(quotes)s", "$1").encode(),
    "tv_both": BOTH_STATEMENT.replace("%(trades)s", "$1").replace("%(quotes)s", "$2").encode(),
}


def _lines(lines: list[str], fields: int) -> str | None:
    """``lines`` as one parameter; None if a value holds a tab or a newline (that batch is
    COPYed, escaped, instead)."""
    text = "\n".join(lines)
    n = len(lines)
    return text if text.count("\t") == (fields - 1) * n and text.count("\n") == n - 1 else None


def trades_statement_text(trades: Sequence[Trade]) -> str | None:
    """The ``trades`` parameter of the one-statement path (see :func:`_lines`)."""
    return _lines(
        [
            f"{t.exchange}\t{t.symbol}\t{t.trade_id}\t{t.price}\t{t.amount}\t"
            f"{t.side or ''}\t{t.ts_ns // 1000}\t{t.recv_ns // 1000}\t{t.flags}"
            for t in trades
        ],
        9,
    )


def quotes_statement_text(quotes: Sequence[Quote]) -> str | None:
    return _lines(
        [
            f"{q.exchange}\t{q.symbol}\t{q.update_id}\t{q.bid_price}\t{q.bid_amount}\t"
            f"{q.ask_price}\t{q.ask_amount}\t{q.ts_ns // 1000}\t{q.recv_ns // 1000}\t{q.flags}"
            for q in quotes
        ],
        10,
    )


# COPY text format: backslash, tab, newline and carriage return must be escaped in data.
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


_NULL = "\\N"


def trades_copy_text(trades: Sequence[Trade]) -> str:
    """The COPY payload for ``stage_trades`` (prebuilt text: the fastest COPY input)."""
    return "".join(
        [
            # exchange and symbol are validated names ([A-Z0-9-]); venue ids are escaped
            f"{t.exchange}\t{t.symbol}\t{t.trade_id.translate(_ESCAPE)}\t{t.price}\t{t.amount}\t"
            f"{t.side or _NULL}\t{t.ts_ns // 1000}\t{t.recv_ns // 1000}\t{t.flags}\n"
            for t in trades
        ]
    )


def quotes_copy_text(quotes: Sequence[Quote]) -> str:
    return "".join(
        [
            f"{q.exchange}\t{q.symbol}\t{q.update_id.translate(_ESCAPE)}\t{q.bid_price}\t"
            f"{q.bid_amount}\t{q.ask_price}\t{q.ask_amount}\t{q.ts_ns // 1000}\t"
            f"{q.recv_ns // 1000}\t{q.flags}\n"
            for q in quotes
        ]
    )


# Up to here one statement costs the server less per batch; past it COPY costs less per row
# (measured on a 2-core box: 24 rows cost the server 15 instead of 36 us each, equal near
# 1,000, COPY ~10 % cheaper at 5,000).
STATEMENT_MAX_ROWS = 1_000


# libpq's TCP keepalives and user timeout: a server that vanished without closing the connection
# (its host died, a network partition) is found in about 25 s while a reply is awaited, and in
# 60 s while sent bytes go unacknowledged, instead of after the OS's 2 hours of idle keepalive
# time; the error is a lost connection (08006: retried, the batch written again).
DEAD_PEER = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def with_dead_peer_options(url: str) -> str:
    """``url`` with :data:`DEAD_PEER`, but for what it sets itself (the user's word wins)."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return url  # (libpq says what is wrong with it at the connect)
    return make_conninfo(url, **{k: v for k, v in DEAD_PEER.items() if k not in given})


class Store:
    """One PostgreSQL connection that writes batches. Not thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        synchronous_commit: bool = True,
        partition_days_ahead: int = 3,
        retention_days: int = 0,
        statement_max_rows: int | None = None,
    ) -> None:
        self.url = url
        self.synchronous_commit = synchronous_commit
        self.partition_days_ahead = partition_days_ahead
        self.retention_days = retention_days  # database.retention_days (consumer.retention)
        self.statement_max_rows = (
            STATEMENT_MAX_ROWS if statement_max_rows is None else statement_max_rows
        )
        self._conn: psycopg.Connection[object] | None = None
        self._prepared: set[str] = set()  # _PQ statements prepared on this connection
        self._sent: str | None = None  # the statement ``send`` sent, not received yet

    def connect(self, *, run_migrations: bool = True) -> None:
        """(Re)connect.

        Raises:
            TransientError: the server cannot be reached now.
            psycopg.Error: it refused for good (a missing database, a wrong password, no
                privilege to create the schema): ``classify`` calls it FATAL.
            NewerSchema: a newer tickvault migrated the database (FATAL too).
        """
        self.close()
        self._prepared = set()
        self._sent = None
        conn: psycopg.Connection[object] | None = None
        try:
            conn = psycopg.connect(
                with_dead_peer_options(self.url),
                connect_timeout=5,
                application_name="tickvault-consumer",
            )
            if run_migrations:
                migrate(
                    conn,
                    days_ahead=self.partition_days_ahead,
                    retention_days=self.retention_days,
                )
            if not self.synchronous_commit:
                conn.execute("SET synchronous_commit = off")
            conn.execute(_STAGING.encode())
            conn.commit()
            conn.autocommit = True  # one statement commits itself; COPY sends BEGIN ... COMMIT
        except Exception as exc:  # (a NewerSchema too: the connection is not kept)
            if conn is not None:
                conn.close()
            if isinstance(exc, psycopg.Error) and classify(exc) is Action.RETRY:
                raise TransientError(f"postgres unreachable: {exc}") from exc
            raise
        self._conn = conn

    def clone(self) -> Store:
        """Another store like this one (of the same class, with the same attributes: a wrapper
        that counts or fails keeps doing so) with a connection of its own (another writer)."""
        twin = copy.copy(self)
        twin._conn = None
        twin._prepared = set()
        twin._sent = None
        return twin

    def connect_again(self) -> None:
        """Connect without running migrations (another store already did)."""
        self.connect(run_migrations=False)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    @property
    def conn(self) -> psycopg.Connection[object]:
        if self._conn is None or self._conn.closed:
            self.connect()
        assert self._conn is not None
        return self._conn

    def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
        """Store ``trades`` and ``quotes`` in one transaction; return the rows newly inserted.

        Raises:
            TransientError: the connection was lost, or the server asks for a retry (nothing or
                everything was committed; the batch is safe to write again).
            psycopg.Error: a refusal: ``classify`` says DATA (a row it cannot take: the caller
                isolates it) or FATAL (privilege, read-only, missing table). Nothing was
                committed.
        """
        if not trades and not quotes:
            return 0, 0
        conn = self.conn
        try:
            statement = self._statement(trades, quotes)
            if statement is None:
                return self._write_copy(conn, trades, quotes)
            # One statement in autocommit, through libpq's prepared statements (``_PQ``): it
            # commits, or fails and commits nothing.
            name, params = statement
            return _counts(name, self._exec(conn, name, params))
        except psycopg.Error as exc:
            error = self._lost_or(exc)
            if error is not exc:
                raise error from exc
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                self._rollback()  # the COPY way's transaction is aborted
            raise

    def _statement(
        self, trades: Sequence[Trade], quotes: Sequence[Quote]
    ) -> tuple[str, list[str]] | None:
        """The prepared statement (``_PQ``) that writes these rows, and its parameters; None
        when they go by COPY instead (too many, or a value the text cannot carry)."""
        if len(trades) + len(quotes) > self.statement_max_rows:
            return None
        text = trades_statement_text(trades) if trades else ""
        qtext = quotes_statement_text(quotes) if quotes else ""
        if text is None or qtext is None:
            return None
        if trades and quotes:
            return "tv_both", [text, qtext]
        return ("tv_trades", [text]) if trades else ("tv_quotes", [qtext])

    def _exec(
        self, conn: psycopg.Connection[object], name: str, params: list[str]
    ) -> pq.abc.PGresult:
        """Run ``_PQ[name]`` (prepared on first use on this connection).

        Raises:
            psycopg.Error: the server's refusal, of the class its SQLSTATE names (as psycopg
                raises it), or ``OperationalError`` when the connection is lost.
        """
        if any("\x00" in p for p in params):
            # libpq sends text parameters as C strings: it would cut one at the NUL. psycopg's
            # own refusal, with its reason (the validator already keeps NUL out of ids).
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        self._prepare(conn, name)
        res = conn.pgconn.exec_prepared(name.encode(), [p.encode() for p in params])
        if res.status not in _OK:
            raise _failure(conn, res)
        return res

    def _prepare(self, conn: psycopg.Connection[object], name: str) -> None:
        if name not in self._prepared:
            res = conn.pgconn.prepare(name.encode(), _PQ[name], None)
            if res.status not in _OK:
                raise _failure(conn, res)
            self._prepared.add(name)

    # -- a write whose outcome is read later -------------------------------------------------
    def send(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> bool:
        """Send the statement that writes ``trades`` and ``quotes`` (one, in autocommit: it
        commits or fails whole) without waiting for its outcome; :meth:`received` reads it.
        The caller does something else meanwhile (the worker reads Redis): the commit's reply
        then wakes no one, and is read when the caller is awake anyway.

        False, with nothing sent, for a batch that :meth:`write` must take: too many rows for
        one statement, a value the statement's text cannot carry, or a store whose ``write``
        is not this class's (a wrapper that counts or fails: it sees every write).

        Raises (nothing committed): as :meth:`write` does.
        """
        if type(self).write is not Store.write or not (trades or quotes):
            return False
        statement = self._statement(trades, quotes)
        if statement is None or any("\x00" in p for p in statement[1]):
            return False  # (write COPYs it, or refuses it with its reason)
        name, params = statement
        conn = self.conn
        try:
            self._prepare(conn, name)
            conn.pgconn.send_query_prepared(name.encode(), [p.encode() for p in params])
        except psycopg.Error as exc:
            raise self._lost_or(exc) from exc
        self._sent = name
        return True

    def received(self) -> tuple[int, int]:
        """The outcome of the statement :meth:`send` sent: the rows newly inserted (trades,
        quotes). Waits for it (without the GIL) if it is not in yet.

        Raises: as :meth:`write` does; a lost connection (the statement may or may not have
        committed) is a ``TransientError``: the batch is safe to write again.
        """
        name, self._sent = self._sent, None
        assert name is not None, "received() without send()"
        conn = self._conn
        try:
            if conn is None or conn.closed:
                raise psycopg.OperationalError("postgres connection lost: closed")
            pgconn = conn.pgconn
            while pgconn.is_busy():
                _wait_readable(pgconn.socket)
                pgconn.consume_input()
            res = pgconn.get_result()
            while pgconn.get_result() is not None:  # (to the end of the statement's results)
                pass
            if res is None:
                raise psycopg.OperationalError("postgres connection lost: no result")
            if res.status not in _OK:
                raise _failure(conn, res)
        except psycopg.Error as exc:
            raise self._lost_or(exc) from exc
        except (OSError, ValueError) as exc:  # waiting on the socket failed: start afresh
            self.close()
            raise TransientError(f"postgres write failed: {exc!r}") from exc
        return _counts(name, res)

    def _lost_or(self, exc: psycopg.Error) -> Exception:
        """``exc`` as the writes raise it: a lost connection (closed here) or a refusal to retry
        as a TransientError, anything else as it is. By what the error means (its SQLSTATE), not
        by its class: a row too big for an index (54000) is an OperationalError, yet retrying
        it can never succeed."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken or classify(exc) is Action.RETRY:
            self.close()
            return TransientError(f"postgres write failed: {exc}")
        return exc

    @staticmethod
    def _write_copy(
        conn: psycopg.Connection[object], trades: Sequence[Trade], quotes: Sequence[Quote]
    ) -> tuple[int, int]:
        statements = []
        with psycopg.ClientCursor(conn) as cur:
            # Three round trips: BEGIN, the COPY(s) into this session's staging tables, then
            # the inserts and the COMMIT as one simple-query string. The staging tables empty
            # themselves at commit (ON COMMIT DELETE ROWS).
            cur.execute("BEGIN")
            if trades:
                with cur.copy("COPY stage_trades FROM STDIN") as copy:
                    copy.write(trades_copy_text(trades))
                statements.append(INSERT_TRADES)
            if quotes:
                with cur.copy("COPY stage_quotes FROM STDIN") as copy:
                    copy.write(quotes_copy_text(quotes))
                statements.append(INSERT_QUOTES)
            statements.append("COMMIT")
            cur.execute(";".join(statements).encode())
            counts = [cur.rowcount]
            while cur.nextset():
                counts.append(cur.rowcount)
        new_trades = counts[0] if trades else 0
        new_quotes = counts[1 if trades else 0] if quotes else 0
        return new_trades, new_quotes

    def write_markers(self, markers: Sequence[Marker]) -> None:
        """Store coverage markers in ``feed_sessions`` (``consumer.ledger``), in one transaction.

        Raises:
            TransientError: as :meth:`write` (safe to write again: idempotent).
            psycopg.Error: a refusal (``classify``).
        """
        from .ledger import write_markers

        conn = self.conn
        try:
            write_markers(conn, markers)
        except psycopg.Error as exc:
            if conn.closed or conn.broken or classify(exc) is Action.RETRY:
                self.close()
                raise TransientError(f"postgres write failed: {exc}") from exc
            raise

    def _rollback(self) -> None:
        """After a failed write: end the aborted transaction (the staging rows go with it)."""
        try:
            self.conn.execute("ROLLBACK")
        except psycopg.Error:
            self.close()  # a fresh session starts clean

    def refresh_partitions(self) -> None:
        from .schema import ensure_partitions

        try:
            ensure_partitions(
                self.conn, days_ahead=self.partition_days_ahead, retention_days=self.retention_days
            )
        except psycopg.Error as exc:
            if classify(exc) is not Action.RETRY:
                raise
            self.close()
            raise TransientError(f"postgres unreachable: {exc}") from exc


_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)


def _counts(name: str, res: pq.abc.PGresult) -> tuple[int, int]:
    """The rows newly inserted (trades, quotes) by the ``_PQ`` statement ``name``."""
    if name == "tv_both":
        return int(res.get_value(0, 0) or 0), int(res.get_value(0, 1) or 0)
    count = int(res.command_tuples or 0)
    return (count, 0) if name == "tv_trades" else (0, count)


def _wait_readable(fd: int) -> None:
    """Until ``fd`` can be read (without the GIL): poll where there is one (select cannot
    take a descriptor past FD_SETSIZE), select elsewhere (Windows)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()
    else:
        select.select([fd], [], [])


def _failure(conn: psycopg.Connection[object], res: pq.abc.PGresult) -> psycopg.Error:
    """The error a failed libpq call means: the server's (by its SQLSTATE), or a lost
    connection (no SQLSTATE: ``classify`` retries it)."""
    if conn.pgconn.status == pq.ConnStatus.BAD or not res.error_field(pq.DiagnosticField.SQLSTATE):
        message = (res.error_message or conn.pgconn.error_message).decode(errors="replace")
        return psycopg.OperationalError(f"postgres connection lost: {message.strip()}")
    return psycopg.errors.error_from_result(res, encoding=conn.info.encoding)
