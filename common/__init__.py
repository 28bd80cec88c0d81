"""Code shared by the producer and the consumer: config, the stream envelope, venue parsers."""
