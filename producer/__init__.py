"""The producer: exchange WebSockets -> raw frames in Redis Streams. It never parses prices."""
