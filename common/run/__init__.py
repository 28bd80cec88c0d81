"""``tickvault run`` / ``make run``: the collector on this machine, against the real venues.

Starts an embedded Redis-protocol server (AOF ``everysec``) and a durable PostgreSQL under
``<dir>/data/`` (unless their URLs are given: ``TICKVAULT_REDIS_URL`` / ``TICKVAULT_DATABASE_URL``,
or ``redis.url`` / ``database.url`` written in the config file), then the producer and one
consumer as supervised child processes, and shows a live table until Ctrl-C or SIGTERM.

Invariants:

- Data is never deleted: the servers' directories are kept across runs (unlike the demo's).
- One run per directory (``<dir>/run.lock``); ``<dir>/run.json`` says what runs (the URLs, the
  children's pids and restarts) and lets the next start stop what a killed run left behind.
- A child that dies unexpectedly is started again after 1, 2, 4 ... 60 s (reset once a child
  lived 60 s); its exit status is logged.
- A stop drains in order, nothing lost: the producer (SIGTERM, its stop budget + 5 s), the
  consumer once the group has no lag and nothing pending (at most 30 s; what is left stays
  pending in Redis' AOF for the next run), then the servers (PostgreSQL fast shutdown, Redis
  SIGTERM, which flushes its AOF). Exit 0 only if every process stopped cleanly.
- The servers run in a session of their own under a small keeper process (``python -m
  common.run.keeper``): a terminal's Ctrl-C reaches ``run`` alone, which stops them last, and
  if ``run`` itself is killed the keeper sees its pipe close and stops them cleanly.

The parts: :mod:`.plan` (the config and the URLs a run uses), :mod:`.children` (when a child is
started again; pure), :mod:`.keeper` (the embedded servers' keeper process), :mod:`.directory`
(the run's lock, and what a killed run left running), :mod:`.view` (the live table and the
status line), :mod:`.command` (``tickvault run`` itself: start, watch, stop in order).
"""
