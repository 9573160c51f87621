"""The HTML evidence report of a ProofPack: :func:`render_report` (``shadowgate report``, ``/report/...``)."""

from shadowgate.report.document import render_report

__all__ = ["render_report"]
