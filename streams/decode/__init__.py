"""Decoding: raw Kafka records into native blocks or contract events; dead letters as data."""
