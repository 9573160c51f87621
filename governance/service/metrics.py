"""The governance consumer's Prometheus counters (``shadowgate_governance_*``), in a registry passed in."""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Counter

from governance.contract.stages import Stage
from governance.lifecycle import audit

__all__ = ["Metrics"]


class Metrics:
    """The consumer's Prometheus counters, registered in the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.inputs = Counter("shadowgate_governance_inputs", "Messages handled, by topic", ["topic"],
                              registry=registry)
        self.rejected = Counter("shadowgate_governance_rejected", "Inputs rejected, by reason", ["reason"],
                                registry=registry)
        self.transitions = Counter("shadowgate_governance_transitions", "Stage moves applied, by target stage",
                                   ["to_stage"], registry=registry)
        self.rollbacks = Counter("shadowgate_governance_rollbacks", "Rollbacks, by status", ["status"],
                                 registry=registry)
        self.redelivered = Counter("shadowgate_governance_redelivered", "Messages skipped: offset already in the log",
                                   registry=registry)
        self.alert_failures = Counter("shadowgate_governance_alert_failures", "Alerts that could not be published",
                                      registry=registry)
        self.foreign = Counter("shadowgate_governance_foreign_records", "Records on the audit topic that are not "
                               "entries of the chain (junk, foreign-signed, duplicates), found at start",
                               registry=registry)
        self.key_reload_failures = Counter("shadowgate_governance_key_reload_failures", "Key or trust-store "
                                           "reloads refused (the last good keys stay in use)", registry=registry)
        # Every known label value starts at 0, so increase() sees the first increment (a series born at 1 has
        # no earlier sample: the first failed rollback would never fire ShadowgateRollbackFailed).
        for reason in get_args(audit.RejectReason):
            self.rejected.labels(reason=reason)
        for status in get_args(audit.RollbackStatus):
            self.rollbacks.labels(status=status)
        for stage in Stage:
            self.transitions.labels(to_stage=stage.value)
