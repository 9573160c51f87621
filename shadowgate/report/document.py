"""The evidence report: one self-contained HTML file per ProofPack, for an approver to read and archive.

:func:`render_report` verifies the signed ProofPack first (nothing is rendered from a pack that does not
verify), then writes: the signature and what it was verified against; each gate with its checks (value, the
passing condition, enforcement, samples, spec section and policy key); the statistical tests; the score and |Δ|
distributions and the calibration curves of the gate windows as matplotlib SVG (from the window store, marked as
such, or why they are missing); drift per feature; the approvals, each matched to the verified audit entry that
recorded it; the artifact and document digests and the metadata; and what the report could not show.

Self-contained: inline CSS and SVG, no script, no external resource (the page's Content-Security-Policy allows
none). Every string from the pack is HTML-escaped (:func:`html.escape`), numbers are formatted here.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from governance.crypto.schedule import Phase
from governance.lifecycle.identities import Trust
from governance.lifecycle.proofpack import ProofPack, verify_proofpack
from shadowgate.report import plots
from shadowgate.report.evidence import GateWindow, approval_entries, calibration_curve, gate_windows, section_of
from streams.fold.aggregate import AggregateConfig
from streams.state.store import WindowStore

__all__ = ["render_report"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1280px;color:#1f2328;
padding:0 1rem}h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;
margin-top:2rem}h3{margin-bottom:.3rem}table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}code{font-size:.9em}.muted{color:#57606a}
.PASS,.READY,.ok{color:#1a7f37;font-weight:600}.FAIL,.BLOCKED,.bad{color:#d1242f;font-weight:600}
.WARN,.INCONCLUSIVE{color:#9a6700;font-weight:600}.box{border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem;
margin:.5rem 0}.plots{display:grid;grid-template-columns:1fr 1fr;gap:.5rem}.plots svg{width:100%;height:auto}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.5rem 1rem}
"""

_PASSING = {">=": "<", ">": "≤", "<=": ">", "<": "≥"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return _e(value)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(rows_cell for rows_cell in row) + "</tr>" for row in rows]
    return "".join(out) + "</tbody></table>"


def _td(text: object, cls: str = "") -> str:
    return f'<td class="{cls}">{text if isinstance(text, _Raw) else _e(text)}</td>'


class _Raw(str):
    """Already-escaped markup (built here from escaped parts)."""


def _condition(check: Mapping[str, Any]) -> str:
    comparator, threshold, upper = check.get("comparator"), check.get("threshold"), check.get("upper_threshold")
    if comparator in _PASSING:
        return f"{_PASSING[comparator]} {_num(threshold)}"
    if comparator == "outside":
        return f"within [{_num(threshold)}, {_num(upper)}]"
    return f"{comparator} {_num(threshold)}"


def _checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for check in checks:
        name = str(check.get("name", ""))
        section, key = section_of(name)
        outcome = str(check.get("outcome", ""))
        rows.append([_td(name), _td(outcome, outcome), _td(_Raw(_num(check.get("value"))), "num"),
                     _td(_condition(check)), _td(check.get("enforcement", "")),
                     _td(_Raw(_num(check.get("samples"))), "num"), _td(section), _td(_Raw(f"<code>{_e(key)}</code>")),
                     _td(check.get("message", ""))])
    return _table(["check", "outcome", "value", "passes when", "enforcement", "samples", "spec", "policy key",
                   "message"], rows, "checks")


def _event(gate: Mapping[str, Any]) -> dict[str, Any]:
    event = gate.get("event")
    return event if isinstance(event, dict) else {}


def _checks_of(gate: Mapping[str, Any]) -> list[dict[str, Any]]:
    evidence = _event(gate).get("evidence")
    checks = evidence.get("checks") if isinstance(evidence, dict) else None
    return [c for c in checks if isinstance(c, dict)] if isinstance(checks, list) else []


def _gate_section(stage: str, gate: Mapping[str, Any]) -> str:
    event = _event(gate)
    evidence = event.get("evidence") or {}
    verdict = "READY" if gate.get("passed") else str(event.get("verdict", "BLOCKED"))
    versions = event.get("versions") or {}
    windows = "; ".join(f"{w.get('window')} {w.get('start')} → {w.get('end')}" for w in evidence.get("windows") or [])
    head = (f"<h3>{_e(stage)}: gate <code>{_e(gate.get('gate'))}</code> <span class=\"{_e(verdict)}\">{_e(verdict)}"
            f"</span></h3><p class=\"muted\">{_e(event.get('type'))} {_e(gate.get('event_id'))} at "
            f"{_e(gate.get('ts'))}; production {_e(versions.get('production'))} vs candidate "
            f"{_e(versions.get('candidate'))} ({_e(versions.get('role'))}); window {_e(windows or '–')}; policy hash "
            f"<code>{_e(gate.get('policy_hash'))}</code></p>")
    return head + _checks_table(_checks_of(gate))


def _stats_table(tests: Sequence[Any]) -> str:
    rows = []
    for test in tests:
        if not isinstance(test, dict):
            continue
        ci = (f"[{_num(test.get('ci_low'))}, {_num(test.get('ci_high'))}] at {_num(test.get('confidence'))}"
              if test.get("ci_low") is not None else "–")
        rows.append([_td(test.get("test")), _td(_Raw(_num(test.get("n"))), "num"),
                     _td(_Raw(_num(test.get("n_other"))), "num"), _td(_Raw(_num(test.get("statistic"))), "num"),
                     _td(_Raw(_num(test.get("p_value"))), "num"), _td(ci), _td(test.get("note", ""))])
    return _table(["test", "n", "n (other)", "statistic", "p-value", "interval", "note"], rows, "stats")


def _plots(window: GateWindow, pack: ProofPack, config: AggregateConfig) -> str:
    if not window.found or window.key is None:
        return f'<p class="note">{_e(window.stage)}: no distributions: {_e(window.reason)}</p>'
    c = window.counts
    thresholds = _delta_limits(pack, window.stage)
    title = f"{window.stage}: {window.key.production_version} vs {window.key.candidate_version} ({window.key.role})"
    svgs = [plots.delta_histogram(c["a"], thresholds, f"|Δ| distribution, {title}"),
            plots.score_histograms(c["hp"], c["hc"], f"Score distributions, {title}")]
    curves = []
    for side, name in (("p", "production"), ("c", "candidate")):
        neg, pos = c[f"y{side}0"], c[f"y{side}1"]
        if int(neg.sum() + pos.sum()):
            predicted, observed = calibration_curve(neg, pos, config)
            curves.append((f"{name} (n={int(neg.sum() + pos.sum()):,} labelled)", predicted, observed))
    if curves:
        svgs.append(plots.calibration(curves, f"Calibration, {title}"))
    edges = "" if window.exact else " (edges rounded to whole hours or days: finer slots had expired)"
    caption = (f'<p class="muted">From the window store, not from the signed ProofPack: comparison '
               f"<code>{_e(window.key.as_id())}</code>, {_e(window.start)} → {_e(window.end)}{_e(edges)}, "
               f"{window.sample_count:,} pairs, {window.label_count:,} labelled.</p>")
    return caption + '<div class="plots">' + "".join(svgs) + "</div>"


def _delta_limits(pack: ProofPack, stage: str) -> list[tuple[str, float]]:
    out = []
    for check in _checks_of(pack.gate_evidence.get(stage) or {}):
        name = str(check.get("name", "")).removeprefix("metrics.")
        if name in ("mean_abs_delta", "p95_abs_delta", "p99_abs_delta") and check.get("threshold") is not None:
            out.append((f"{name} limit {check['threshold']}", float(check["threshold"])))
    return out


def _drift(pack: ProofPack) -> str:
    parts = []
    for stage, report in sorted(pack.drift_report.items()):
        checks = _checks_of({"event": {"evidence": report}})
        if not checks:
            continue
        parts.append(f"<h3>{_e(stage)}</h3>" + _checks_table(checks))
        features = [(str(c["name"])[len("feature_drift["):-1], float(c["value"]), c.get("threshold"))
                    for c in checks if str(c.get("name", "")).startswith("feature_drift[")
                    and isinstance(c.get("value"), int | float)]
        if features:
            limit = features[0][2]
            parts.append(plots.bars([f[0] for f in features], [f[1] for f in features],
                                    float(limit) if isinstance(limit, int | float) else None,
                                    f"{stage}: feature drift (PSI of the candidate against production)", "PSI"))
    return "".join(parts) or '<p class="note">The ProofPack holds no drift checks.</p>'


def _approvals(pack: ProofPack, entries: Mapping[str, Mapping[str, Any]] | None) -> str:
    rows = []
    for approval in pack.approvals:
        entry = entries.get(str(approval.get("event_id"))) if entries is not None else None
        if entries is None:
            recorded = _Raw('<span class="muted">audit log not read</span>')
        elif entry is None:
            recorded = _Raw('<span class="bad">not found in the verified audit log</span>')
        else:
            source = entry["input"]
            recorded = _Raw(f'<span class="ok">audit entry #{_e(entry["seq"])}</span> (entry signed by '
                            f"<code>{_e(entry['key_id'])}</code>, chain verified); command from "
                            f"{_e(source.get('actor'))} via {_e(source.get('topic'))}@{_e(source.get('offset'))}")
        rows.append([_td(approval.get("approver")), _td(approval.get("target")), _td(approval.get("at")),
                     _td(approval.get("event_id")), _td(recorded)])
    return _table(["approver", "target stage", "at", "event id", "recorded in"], rows, "approvals")


def _documents(pack: ProofPack) -> str:
    rows = [[_td(stage), _td(name), _td(_Raw(f"<code>{_e(digest)}</code>"))]
            for stage, docs in pack.documents.items() for name, digest in docs.items()]
    return _table(["stage", "document", "SHA-256"], rows, "documents")


def _metadata(pack: ProofPack) -> str:
    import orjson

    rows = [[_td(key), _td(_Raw(f"<code>{_e(orjson.dumps(value).decode())}</code>"))]
            for key, value in sorted(pack.metadata.items())]
    rows += [[_td(f"feature {name}"), _td(dtype)] for name, dtype in sorted(pack.features.items())]
    return _table(["field", "value"], rows, "metadata")


def render_report(signed: Mapping[str, Any], trust: Trust, store: WindowStore | None, now: datetime,
                  audit_items: Iterable[Mapping[str, Any]] | None = None, phase: Phase | None = None) -> str:
    """The report of the signed ProofPack ``signed`` (VerificationError when it does not verify).

    ``store``: where the gate windows' distributions are read (None: left out, and said so); ``audit_items``:
    the verified audit entries (:func:`shadowgate.web.feeds.judge_entry` items) the approvals are matched to.
    """
    phase = phase or trust.phase(now)
    pack = verify_proofpack(dict(signed), trust.system, now, phase)
    signature = signed.get("signature") or {}
    config = AggregateConfig()
    windows = gate_windows(pack.gate_evidence, store, now, config) if store is not None else []
    entries = approval_entries(audit_items) if audit_items is not None else None
    gaps = [
        "The ProofPack carries checks, tests and drift values, not distributions: the plots are read from the "
        "window store (unsigned) for the gate windows the signed events name, while it still holds them.",
        "The ProofPack records no per-feature distribution, only each feature's PSI check of the staging gate.",
        "Approvals are listed by the ProofPack; the signed commands themselves are not in it. Each is matched to "
        "the audit entry that recorded it (signed by the system key, hash-chained); the command's own signature "
        "was verified by the governance consumer before it wrote that entry.",
    ]
    if store is None:
        gaps.append("No window store was read: no distributions in this report.")
    if entries is None:
        gaps.append("The audit log was not read: approvals are not cross-checked.")
    body = [
        f"<h1>Evidence report: {_e(pack.model)} {_e(pack.version)}</h1>",
        f'<p class="muted">ProofPack <code>{_e(pack.proofpack_id)}</code>, generated {_e(pack.generated_at)}; '
        f"report rendered {_e(now.isoformat())}</p>",
        '<div class="box"><b class="ok">Signature verified</b>: '
        f"{_e(signature.get('alg'))} by key <code>{_e(signature.get('key_id'))}</code> (context "
        f"<code>{_e(signature.get('context'))}</code>, signed {_e(signature.get('signed_at'))}) against the system "
        f"trust store, {_e(phase.label)}. Policy hash <code>{_e(pack.policy_hash)}</code>. Artifact SHA-256 "
        f"<code>{_e(pack.artifact.get('sha256'))}</code>.</div>",
        "<h2>Gates</h2>",
        *[_gate_section(stage, gate) for stage, gate in sorted(pack.gate_evidence.items(),
                                                                key=lambda item: item[0] != "SHADOW")],
        "<h2>Statistical tests (shadow, spec 3.2 item 8)</h2>", _stats_table(pack.statistical_tests),
        "<h2>Distributions and calibration</h2>",
        *([_plots(w, pack, config) for w in windows] or ['<p class="note">Distributions not read.</p>']),
        "<h2>Drift</h2>", _drift(pack),
        "<h2>Approvals</h2>", _approvals(pack, entries),
        "<h2>Documents</h2>", _documents(pack),
        "<h2>Metadata and features</h2>", _metadata(pack),
        "<h2>What this report could not show</h2><ul>" + "".join(f"<li>{_e(g)}</li>" for g in gaps) + "</ul>",
    ]
    title = _e(f"Evidence report {pack.model} {pack.version} ({pack.proofpack_id})")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body>{''.join(body)}</body></html>\n")
