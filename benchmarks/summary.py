"""One table of a benchmark run's figures, from the result files it wrote (``run_all.py``; the README's table).

Every row comes from a result file written since the run started, so every ratio in the table was measured in
that run: a throughput as a ratio to the raw confluent-kafka + orjson limit of the same messages (min / median
/ max over the repeats, each repeat's ratio taken within that repeat) and to the naive Faust baseline. A file
that the run did not write (a benchmark left out or failed) gives no row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["README", "main", "rows", "table", "write_readme"]

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
Row = tuple[str, str, str, str, str]


def _load(results: Path, name: str, since: float) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    if not path.exists() or path.stat().st_mtime < since:
        return None
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _spread(fig: dict[str, Any]) -> str:
    r = fig.get("ratio_to_raw")
    return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})" if r else ""


def _pipeline(p: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    by = {r["encoding"]: r for r in p["results"]}
    naive = by.get("single", {}).get("naive")
    for enc, label, target in (("envelope500", "500-event envelopes", 0.6), ("single", "single-event messages", 0.3)):
        r = by.get(enc)
        if r is None:
            continue
        raw = r["raw"]
        out.append((f"raw limit: confluent-kafka consume + orjson decode, {label} ({r['pairs']:,} pairs)",
                    f"{raw['pairs_per_s']:,} pairs/s (runs {_runs(raw)})", "1", "", ""))  # fmt: skip
        for w, fig in r["workers"].items():
            ratio = fig["ratio_to_raw"]
            if w == "1" and enc == "envelope500":
                goal = f"≥ {target} of raw in every run: {_met(ratio['min'] >= target)}"
            elif w == "1":
                goal = f"≥ {target} of raw (median): {_met(ratio['median'] >= target)}"
            else:
                one = r["workers"].get("1")
                scale = fig["pairs_per_s"] / one["pairs_per_s"] if one else float("nan")
                goal = f"{scale:.2f}x one worker"
            who = f"{w} worker{'s' if w != '1' else ''}, {label}"
            out.append((who, f"{fig['pairs_per_s']:,} pairs/s (runs {_runs(fig)})", _spread(fig),
                        f"{fig.get('ratio_to_naive', '')}x", goal))  # fmt: skip
    if naive:
        out.append(("naive baseline: one Faust agent, a dict, Redis per pair (single-event messages)",
                    f"{naive['pairs_per_s']:,} pairs/s (runs {_runs(naive)})", _spread(naive), "1x", ""))  # fmt: skip
    return out


def _runs(fig: dict[str, Any]) -> str:
    return " · ".join(f"{v:,}" for v in fig.get("runs_pairs_per_s", [fig["pairs_per_s"]]))


def _fleet(f: dict[str, Any]) -> list[Row]:
    r = f["rounds"]
    out: list[Row] = [(
        f"{r['comparisons']:,} active comparisons, one worker: evaluation round (all of them evaluated)",
        f"p50 {r['round_s']['p50']} s, p99 {r['round_s']['p99']} s ({r['rounds'] - 1} rounds; "
        f"{r['per_comparison_ms']} ms per comparison)", "", "", f"p99 < 1 s: {_met(r['round_s']['p99'] < 1.0)}",
    )]  # fmt: skip
    d = f.get("fourteen_days")
    if d:
        out.append((f"Redis memory of one comparison, 14 days of minute/hour/day slots ({d['pairs_per_minute']} "
                    "pairs/min, half labelled)",
                    f"{d['memory_usage_bytes'] / 1e6:.1f} MB (MEMORY USAGE; used_memory delta "
                    f"{d['used_memory_delta_bytes'] / 1e6:.1f} MB)", "", "", "stated"))  # fmt: skip
    return out


def _rollback(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for res in r["results"]:
        if res.get("phase") != "half":
            continue
        p99 = res["p99_s"]
        after = (f"; from the end of the breach's minute of event time: p50 {res['after_minute_end_p50_s']} s, "
                 f"p99 {res['after_minute_end_p99_s']} s" if res.get("after_minute_end_p99_s") is not None else "")
        out.append((f"breach → signed RollbackTrigger at half the highest sustained rate ({res['rate']:,.0f} of "
                    f"{r['max_sustained_rate']:,.0f} pairs/s), breaches spread over the minute",
                    f"p50 {res['p50_s']} s, p99 {p99} s ({res['trials']} trials, {res['verified']} verified){after}",
                    "", "", f"p99 ≤ 5 s: {_met(p99 is not None and p99 <= 5.0)}"))  # fmt: skip
        fresh = res.get("freshness")
        if fresh:
            ok = fresh["p99_s"] is not None and fresh["p99_s"] <= 0.25
            out.append(("window freshness at that rate: pair in Kafka (broker ack) → in `shadowgate windows`",
                        f"p50 {fresh['p50_s']} s, p99 {fresh['p99_s']} s ({fresh['probes']} probes)", "", "",
                        f"p99 ≤ 0.25 s: {_met(ok)}"))  # fmt: skip
    return out


def _memory(m: dict[str, Any]) -> list[Row]:
    names = {"half_pair": "pending half-pair", "pair_waiting_label": "pair waiting for its label",
             "label_waiting": "label waiting for its pairs"}  # fmt: skip
    per = ", ".join(f"{names[e['kind']]} {e['rss_bytes_per_entry']:,.0f} B "
                    f"({e['redis_bytes_per_entry']:,.0f} B in Redis)" for e in m["per_entry"])  # fmt: skip
    s = m["steady"]
    return [
        ("memory per entry of the joins' state (worker RSS; compressed state log in Redis)", per, "", "", "stated"),
        (f"worker RSS over a steady run of {s['seconds']:.0f} s at {s['rate_pairs_per_s']:,.0f} pairs/s, labels "
         f"{s['label_delay_s']:g} s later", f"{s['rss_mb']['first']} → {s['rss_mb']['last']} MB, slope "
         f"{s['slope_mb_per_min']} MB/min", "", "", f"flat: {_met(s['flat'])}"),
    ]  # fmt: skip


def _windows(w: dict[str, Any]) -> list[Row]:
    reads = w.get("read") or {}
    medians = [v["median_ms"] for v in reads.values() if isinstance(v, dict) and "median_ms" in v]
    if not medians:
        return []
    return [("read any rolling window (5 m … 14 d) of a full 14-day comparison",
             f"{min(medians):.1f}-{max(medians):.1f} ms (medians)", "", "",
             f"< 50 ms: {_met(max(medians) < 50)}")]  # fmt: skip


def _signing(s: dict[str, Any]) -> list[Row]:
    rows = [r for r in s.get("signatures", []) if r.get("algorithm", "").startswith("ML-DSA-65")]
    return [("ML-DSA-65 sign / verify", f"{r['sign_per_s']:,.0f}/s / {r['verify_per_s']:,.0f}/s", "", "", "")
            for r in rows[:1]]  # fmt: skip


def rows(results: Path, since: float = 0.0) -> list[Row]:
    """The table's rows from the result files in ``results`` written since ``since`` (epoch seconds)."""
    out: list[Row] = []
    for name, make in (("pipeline", _pipeline), ("fleet", _fleet), ("rollback", _rollback), ("memory", _memory),
                       ("windows", _windows), ("signing", _signing)):  # fmt: skip
        doc = _load(results, name, since)
        if doc is not None:
            out += make(doc)
    return out


def table(found: list[Row]) -> str:
    head = ("| what | figure | ratio to raw limit: median (min-max) | ratio to naive Faust | target |\n"
            "|---|---|---|---|---|")
    return "\n".join([head, *("| " + " | ".join(row) + " |" for row in found)])


def write_readme(readme: Path, text: str) -> None:
    """Replace what stands between the README's bench-table markers with ``text``."""
    doc = readme.read_text(encoding="utf-8")
    if START not in doc or END not in doc:
        raise SystemExit(f"{readme}: no {START} ... {END} markers around the benchmark table")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/summary.py [--since EPOCH] [--readme]``: the table of the result files (e.g. after
    re-running one benchmark that failed in ``make bench``: ``--since`` the run's start keeps the rest)."""
    import argparse

    parser = argparse.ArgumentParser(description="print (and write into the README) the table of result files")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--since", type=float, default=0.0, help="only files written since (epoch seconds)")
    parser.add_argument("--readme", action="store_true", help="write the table into the README")
    args = parser.parse_args(argv)
    text = table(rows(args.results, args.since))
    print(text)
    if args.readme:
        write_readme(README, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
