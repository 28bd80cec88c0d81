"""``tickvault status``: is the pipeline healthy, and if not, what needs attention.

One snapshot gathers, per exchange stream, its length, memory and oldest/newest entry ages; per
consumer group its lag (entries, and seconds: the age of the first entry not yet delivered, and
of the oldest entry delivered but not acked), pending entries and each consumer's idle time; per
feed the producer's heartbeat (``producer.heartbeat``: state, connected since, last frame,
reconnects in the last hour); from PostgreSQL the trades per exchange and symbol in the last
minute and hour with the newest one's age, and the open gaps; and the dead letters with a sample
of their reasons.

- :mod:`.snapshot`: what one look holds (frozen msgspec Structs), and how its ages and sizes read;
- :mod:`.problems`: a snapshot (and the previous one, with ``--watch``) into the list of what
  needs attention; pure;
- :mod:`.view`: the rich tables and the ``--json`` document; pure;
- :mod:`.gather`: the only I/O, Redis and PostgreSQL into a snapshot;
- :mod:`.command`: ``tickvault status`` itself (once, ``--watch``, ``--json``).

Ages of stream entries are measured on Redis' clock (``TIME``), ages of trades on PostgreSQL's
(``now()``), heartbeats on this machine's clock (the producer's stamps are wall-clock ns).

Exit status: 0 healthy, 1 something needs attention. A server that cannot be reached (or that
refuses a command) is a problem like any other, reported with the rest, so also status 1; a
configuration error is status 2 (``common.cli``).
"""
