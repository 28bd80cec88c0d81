"""A local exchange for the demo, the tests and the benchmark.

``engine`` makes deterministic trades and quotes (pure); ``dialect`` is the interface one venue's
protocol implements (``dialects/<exchange>.py``: URL shape, subscribe handshake, acks, pings,
frame formats); ``server`` serves a dialect over real WebSockets on 127.0.0.1.
"""
