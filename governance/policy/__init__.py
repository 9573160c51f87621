"""The policy files (lifecycle policy, feature catalog) and their pure evaluation: checks, gates, triggers."""
