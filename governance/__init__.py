"""Governance: policy, gates, lifecycle, signing and the wire contract (no dependency on streams)."""
