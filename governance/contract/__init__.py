"""The wire contract every process shares: events, settings, topics, Kafka I/O (no policy, no lifecycle)."""
