// shadowgate status page. Every string from the API goes into the page as text (textContent, attribute
// values), never as markup: model names, reasons and alert summaries come from events and may hold anything.
"use strict";

const REFRESH_MS = 15000;
const WINDOWS = ["5m", "1h", "24h", "7d", "14d"];
const TABLE_METRICS = ["sample_count", "label_count", "mean_abs_delta", "p95_abs_delta", "p99_abs_delta",
  "kl_divergence", "psi", "decision_flip_rate", "p99_latency_ms", "production_p99_latency_ms", "error_rate",
  "production_error_rate", "brier_score", "auc_roc", "precision_at_10", "calibration_slope", "orphan_rate",
  "integrity_violations"];
const COLORS = ["#1f6feb", "#8250df", "#bf3989", "#1a7f37", "#9a6700"];
const PRODUCTION_COLOR = "#6e7781";

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("data-") || key === "href" || key === "id" || key === "title" || key === "colspan") {
      node.setAttribute(key, String(value));
    } else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  if (typeof value === "number") return Number(value.toPrecision(4)).toString();
  return String(value);
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${url}: HTTP ${response.status}`);
  return body;
}

function replace(id, node) {
  const target = document.getElementById(id);
  target.classList.remove("loading");
  target.replaceChildren(node);
}

function failed(id, error) {
  replace(id, el("p", { class: "error", text: `cannot load: ${error.message}` }));
}

// -- lifecycle board --------------------------------------------------------------------------------------

function reportLink(row) {
  if (!row.proofpack_id) return "–";
  const base = `${encodeURIComponent(row.model)}/${encodeURIComponent(row.version)}`;
  return el("span", {}, el("a", { href: `/report/${base}`, text: row.proofpack_id }), " ",
    el("a", { href: `/api/proofpacks/${base}`, text: "(json)" }));
}

function renderBoard(doc) {
  document.getElementById("policy").textContent =
    `policy ${doc.policy.policy_id} ${doc.policy.version} (${doc.policy.hash.slice(0, 12)}…), audit seq ${doc.audit_seq}`;
  if (!doc.models.length) return el("p", { class: "muted", text: "no model registered yet" });
  const head = el("tr", {}, ["model", "version", "stage", "in stage", "role", "next", "blocked by", "ProofPack"]
    .map((name) => el("th", { text: name })));
  const rows = doc.models.map((row) => {
    const blocked = row.blocked_by.length
      ? el("ul", { class: "rules" }, row.blocked_by.map((rule) => el("li", { class: "rule", text: rule })))
      : el("span", { class: row.next_stage ? "ready" : "muted", text: row.next_stage ? "ready" : "–" });
    return el("tr", { class: "version-row", "data-model": row.model, "data-version": row.version },
      el("td", { class: "model", text: row.model }),
      el("td", { class: "version", text: row.version }),
      el("td", { class: `stage stage-${row.stage}`, text: row.stage }),
      el("td", { class: "in-stage", text: row.time_in_stage, title: row.entered_stage_at }),
      el("td", { class: "role", text: row.role }),
      el("td", { class: "next", text: row.next_stage || "–" }),
      el("td", { class: "blocked" }, blocked),
      el("td", { class: "proofpack" }, reportLink(row)));
  });
  const routing = Object.entries(doc.routing).map(([model, a]) => el("li", {},
    el("b", { text: model }), ": ",
    a ? `production ${a.production ?? "none"}, canary ${a.canary ? `${a.canary.version} on ${a.canary.share * 100}%`
      : "none"}, shadow ${a.shadow.length ? a.shadow.join(", ") : "none"}` : "no routing published"));
  return el("div", {}, el("table", { id: "board-table" }, el("thead", {}, head), el("tbody", {}, rows)),
    el("p", { class: "muted", text: "Serving assignment (routing):" }), el("ul", { class: "routing" }, routing));
}

// -- live windows and charts ------------------------------------------------------------------------------

function windowTable(comp) {
  const names = WINDOWS.filter((w) => comp.windows[w]);
  const head = el("tr", {}, el("th", { text: "metric" }), names.map((w) => el("th", { text: w })));
  const rows = TABLE_METRICS.map((metric) => el("tr", {}, el("th", { text: metric }), names.map((w) => {
    const value = comp.windows[w][metric];
    return el("td", { class: "num", "data-metric": metric, "data-window": w,
      "data-value": value === null || value === undefined ? "null" : JSON.stringify(value), text: fmt(value) });
  })));
  return el("table", { class: "windows" }, el("thead", {}, head), el("tbody", {}, rows));
}

function chartOf(series, chart, width) {
  const box = el("div", { class: "chart", "data-chart": chart.id });
  box.append(el("h4", { text: `${chart.title}${chart.unit ? ` (${chart.unit})` : ""}` }));
  const xs = series.t;
  const data = [xs];
  const uSeries = [{ label: "time (UTC)", value: (u, v) => (v == null ? "–" : new Date(v * 1000).toISOString().slice(11, 16)) }];
  chart.metrics.forEach((metric, i) => {
    data.push(series.metrics[metric]);
    uSeries.push({ label: metric, stroke: metric.startsWith("production_") ? PRODUCTION_COLOR : COLORS[i % COLORS.length],
      width: 2, spanGaps: false, points: { show: true, size: 5 } });
  });
  const limits = series.thresholds.filter((t) => chart.metrics.includes(t.metric));
  for (const t of limits) {
    data.push(xs.map(() => t.value));
    uSeries.push({ label: `limit ${t.value} ${t.label} (${t.section}, ${t.enforcement})`, width: 1.5,
      stroke: t.kind === "gate" ? "#d1242f" : "#8250df", dash: t.kind === "gate" ? [6, 4] : [2, 3],
      points: { show: false } });
  }
  box.setAttribute("data-thresholds", JSON.stringify(limits.map((t) => t.value)));
  const opts = { width, height: 220, series: uSeries, scales: { x: { time: true } },
    axes: [{}, { size: 60 }], legend: { live: true } };
  if (typeof uPlot === "function") {
    new uPlot(opts, data, box); // eslint-disable-line no-new
  } else {
    box.append(el("p", { class: "error", text: "chart library not loaded" }));
  }
  return box;
}

async function renderComparison(comp) {
  const step = document.getElementById("step").value;
  const span = document.getElementById("span").value;
  const section = el("div", { class: "comparison", "data-id": comp.id });
  section.append(el("h3", { class: "comparison-title",
    text: `${comp.model}: ${comp.production_version} (production) vs ${comp.candidate_version} (${comp.role})` }));
  section.append(windowTable(comp));
  const grid = el("div", { class: "charts" });
  section.append(grid);
  try {
    const query = new URLSearchParams({ id: comp.id, span, step });
    const series = await getJSON(`/api/series?${query}`);
    const width = Math.max(320, Math.floor((document.getElementById("comparisons").clientWidth - 13) / 2) - 10);
    for (const chart of series.charts) grid.append(chartOf(series, chart, width));
    section.append(el("p", { class: "muted", text: `newest event ${series.latest_event_ts}; ${series.t.length} points of ${step}` }));
  } catch (error) {
    grid.append(el("p", { class: "error", text: `series: ${error.message}` }));
  }
  return section;
}

async function refreshComparisons() {
  try {
    const doc = await getJSON("/api/comparisons");
    if (!doc.comparisons.length) {
      replace("comparisons-body", el("p", { class: "muted", text: "no comparisons yet: no paired scores in the window store" }));
      return;
    }
    const sections = [];
    for (const comp of doc.comparisons) sections.push(await renderComparison(comp));
    replace("comparisons-body", el("div", {}, sections));
  } catch (error) {
    failed("comparisons-body", error);
  }
}

// -- alerts (Server-Sent Events) --------------------------------------------------------------------------

const seenAlerts = new Set();
const alertCounts = { verified: 0, rejected: 0 };

function alertItem(item) {
  if (item.status === "verified") {
    return el("li", { class: `alert verified severity-${item.severity}`, "data-id": item.id, "data-status": "verified" },
      el("span", { class: "status", text: "✔ verified" }),
      el("span", { class: "severity", text: item.severity }), " ",
      el("b", { class: "alert-model", text: item.model }), " ",
      el("span", { class: "summary", text: item.summary }),
      el("div", { class: "muted" }, `${item.type} at ${item.ts}, signed by `, el("code", { text: item.key_id }),
        item.runbook ? ` · runbook ${item.runbook}` : "", item.dedup_key ? ` · ${item.dedup_key}` : ""));
  }
  const claims = Object.entries(item.claims || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  return el("li", { class: "alert rejected", "data-id": item.id, "data-status": "rejected" },
    el("span", { class: "status", text: "✖ REJECTED" }),
    el("span", { class: "reason", text: item.reason }),
    el("div", { class: "claims", text: claims ? `claims (unverified, not shown as an alert): ${claims}` : "no readable claims" }));
}

function addAlert(item) {
  if (seenAlerts.has(item.id)) return;
  seenAlerts.add(item.id);
  alertCounts[item.status] = (alertCounts[item.status] || 0) + 1;
  document.getElementById("alert-list").prepend(alertItem(item));
  document.getElementById("alert-counts").textContent =
    `${alertCounts.verified} verified, ${alertCounts.rejected} rejected`;
}

function followAlerts() {
  const badge = document.getElementById("alert-stream");
  const source = new EventSource("/api/alerts/stream");
  source.addEventListener("open", () => { badge.textContent = "live"; badge.dataset.state = "live"; });
  source.addEventListener("error", () => { badge.textContent = "reconnecting…"; badge.dataset.state = "down"; });
  source.addEventListener("alert", (event) => addAlert(JSON.parse(event.data)));
}

// -- audit log and ProofPacks -----------------------------------------------------------------------------

function renderAudit(doc) {
  const chain = doc.chain;
  document.getElementById("audit-chain").textContent = chain.ok
    ? `audit log verified: ${chain.entries} entries, head ${chain.head}`
    : `audit log BROKEN: ${chain.problem} (${chain.entries} entries verified before it)`;
  return doc.entries.map((entry) => el("li", { class: `entry outcome-${entry.outcome}`, "data-seq": entry.seq },
    el("div", { class: "muted", text: `${entry.at} · ${entry.status}` }),
    el("pre", { text: (entry.lines || [entry.reason]).join("\n") })));
}

function renderProofpacks(doc) {
  if (!doc.proofpacks.length) return el("p", { class: "muted", text: "no ProofPack yet (generated on promotion to PRODUCTION)" });
  return el("ul", {}, doc.proofpacks.map((p) => {
    const base = `${encodeURIComponent(p.model)}/${encodeURIComponent(p.version)}`;
    return el("li", {}, el("b", { text: p.proofpack_id }), ` ${p.model} ${p.version}, generated ${p.generated_at}: `,
      el("a", { href: `/report/${base}`, text: "evidence report" }), " · ",
      el("a", { href: `/api/proofpacks/${base}`, text: "verified JSON" }));
  }));
}

async function refresh() {
  const jobs = [
    getJSON("/api/models").then((d) => replace("board-body", renderBoard(d))).catch((e) => failed("board-body", e)),
    getJSON("/api/audit?limit=200").then((d) => document.getElementById("audit-list").replaceChildren(...renderAudit(d)))
      .catch((e) => { document.getElementById("audit-chain").textContent = `cannot load: ${e.message}`; }),
    getJSON("/api/proofpacks").then((d) => replace("proofpacks-body", renderProofpacks(d)))
      .catch((e) => failed("proofpacks-body", e)),
    refreshComparisons(),
  ];
  await Promise.all(jobs);
  document.getElementById("updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

document.addEventListener("DOMContentLoaded", () => {
  followAlerts();
  refresh();
  setInterval(refresh, REFRESH_MS);
  document.getElementById("step").addEventListener("change", refreshComparisons);
  document.getElementById("span").addEventListener("change", refreshComparisons);
});
