"""The governance consumer and its I/O: audit log on Kafka, state in Redis, lease, rollback, CLI client."""
