"""The consumer: stream entries -> normalised rows -> PostgreSQL, acked only after COMMIT."""
