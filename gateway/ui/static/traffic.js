// The traffic dashboard: what the gateway routed, drawn from the decision log through
// GET /v1/traffic (with the key typed above; the page itself holds no data).
import { barRow, callApi, colourFor, el, explain, ms, notify, percent, setUpKeyForm } from "./api.js";
import { histogram, stackedColumns } from "./charts.js";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 15000;
let timer = null;
let shown = null; // the report on screen, redrawn when the window is resized

function tile(label, value, detail = null, testid = null) {
  return el("li", { class: "tile", "data-testid": testid },
    el("div", { class: "value", text: value }), el("div", { class: "label", text: label }),
    detail ? el("div", { class: "label", text: detail }) : null);
}

function showTiles({ totals, feedback }) {
  const n = totals.requests;
  $("tiles").replaceChildren(
    tile("requests answered", String(n), null, "requests"),
    tile("route-only requests", String(totals.route_only), null, "route-only"),
    tile("fallback rate", percent(totals.fallback_rate), `${totals.fallbacks} below the threshold`),
    tile("failover rate", percent(totals.failover_rate), `${totals.failovers} answered by a fallback expert`),
    tile("client errors (4xx)", percent(totals.client_error_rate), `${totals.client_errors} requests`),
    tile("server errors (5xx)", percent(totals.server_error_rate), `${totals.server_errors} requests`),
    tile("tokens", (totals.prompt_tokens + totals.completion_tokens).toLocaleString(),
      `${totals.prompt_tokens.toLocaleString()} prompt, ${totals.completion_tokens.toLocaleString()} completion`),
    tile("feedback: good / bad", `${feedback.good} / ${feedback.bad}`, `${feedback.neutral} neutral, ${feedback.corrections} domain corrections`, "feedback"),
  );
}

function table(headers, rows, caption = null) {
  return el("table", {}, caption ? el("caption", { class: "visually-hidden", text: caption }) : null,
    el("thead", {}, el("tr", {}, ...headers.map(([text, cls]) => el("th", { scope: "col", class: cls, text })))),
    el("tbody", {}, ...rows));
}

function showOverTime(series) {
  const names = Object.keys(series.experts).sort();
  if (!names.length) {
    $("over-time").replaceChildren(el("p", { class: "muted", text: "No requests in this window." }));
    return;
  }
  const label = `Requests per expert in ${series.starts.length} buckets of ${series.bucket_s} s`;
  const legend = el("ul", { class: "legend", "aria-label": "Experts" }, ...names.map((name) => {
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = colourFor(name);
    const total = series.experts[name].reduce((a, b) => a + b, 0);
    return el("li", {}, swatch, `${name} (${total})`);
  }));
  const rows = series.starts.map((start, i) => el("tr", {}, el("td", { text: new Date(start * 1000).toLocaleString() }),
    ...names.map((name) => el("td", { class: "num", text: String(series.experts[name][i]) }))))
    .filter((row, i) => names.some((name) => series.experts[name][i]));
  const details = el("details", {}, el("summary", { text: "As a table" }),
    table([["bucket start"], ...names.map((name) => [name, "num"])], rows, label));
  const width = Math.max(320, $("over-time").clientWidth || 720);
  $("over-time").replaceChildren(stackedColumns(series, colourFor, label, width), legend, details);
}

function showExperts(experts) {
  if (!experts.length) {
    $("experts").replaceChildren(el("p", { class: "muted", text: "No expert was asked in this window." }));
    return;
  }
  const rows = experts.map((e) => {
    const share = barRow(e.expert, e.share, { colour: colourFor(e.expert), shown: percent(e.share) }).querySelector(".bar-track");
    return el("tr", { "data-expert": e.expert }, el("th", { scope: "row", text: e.expert }),
      el("td", { class: "num", text: String(e.requests) }), el("td", {}, share, el("span", { class: "visually-hidden", text: percent(e.share) })),
      el("td", { class: "num", text: ms(e.p50_ms) }), el("td", { class: "num", text: ms(e.p95_ms) }),
      el("td", { class: "num", text: percent(e.server_error_rate) }), el("td", { class: "num", text: String(e.failovers) }));
  });
  $("experts").replaceChildren(table([["expert"], ["requests", "num"], ["share"], ["p50", "num"], ["p95", "num"],
    ["5xx", "num"], ["failed over", "num"]], rows, "Requests, share, latency (answered requests) and errors per expert"));
}

function showConfidence(report) {
  const domains = report.domains.filter((d) => report.confidence.domains[d]);
  if (!domains.length) {
    $("confidence").replaceChildren(el("p", { class: "muted", text: "No routed requests in this window." }));
    return;
  }
  $("confidence").replaceChildren(...domains.map((domain) => {
    const counts = report.confidence.domains[domain];
    const total = counts.reduce((a, b) => a + b, 0);
    const under = report.threshold === null ? 0 : Math.floor(report.threshold * counts.length) / counts.length; // whole bins below it
    const below = counts.slice(0, Math.round(under * counts.length)).reduce((a, b) => a + b, 0);
    return el("figure", { "data-domain": domain },
      el("figcaption", { text: `${domain} (${total})` }),
      histogram(counts, colourFor(domain), report.threshold, `${domain}: ${total} requests; counts per tenth of confidence: ${counts.join(", ")}`),
      report.threshold === null ? null : el("div", { class: "muted", text: `${below} under ${under.toFixed(1)}` }));
  }));
}

function showLeastConfident(rows) {
  if (!rows.length) {
    $("least-confident").replaceChildren(el("p", { class: "muted", text: "No routed requests in this window." }));
    return;
  }
  const anyText = rows.some((r) => r.text);
  const body = rows.map((r) => el("tr", {},
    el("td", { text: new Date(r.time * 1000).toLocaleTimeString() }),
    el("td", { text: r.runner_up ? `${r.domain} (then ${r.runner_up})` : r.domain }),
    el("td", { class: "num", text: r.confidence.toFixed(2) }),
    el("td", { text: `${r.expert} by ${r.routed_by}` }),
    el("td", { class: "num", text: String(r.status ?? "–") }),
    el("td", { class: "request-text", text: r.text ?? "" })));
  const note = anyText ? null : el("p", { class: "muted", text: "The texts are not logged (log.store_text: false)." });
  $("least-confident").replaceChildren(...[table([["time"], ["domain"], ["confidence", "num"], ["expert"], ["status", "num"], ["text"]],
    body, "The least confident requests of the window"), note].filter(Boolean));
}

async function refresh() {
  clearTimeout(timer);
  const report = $("report");
  report.setAttribute("aria-busy", "true");
  try {
    const response = await callApi(`/v1/traffic?window=${encodeURIComponent($("window").value)}`);
    const data = await response.json();
    shown = data;
    showTiles(data);
    showOverTime(data.series);
    showExperts(data.experts);
    showConfidence(data);
    showLeastConfident(data.least_confident);
    $("scope").textContent = `${data.scope}, updated ${new Date(data.generated * 1000).toLocaleTimeString()}${data.truncated ? " (the newest 200,000 requests)" : ""}`;
    report.hidden = false;
    report.dataset.loaded = "true";
    notify(null);
  } catch (error) {
    report.hidden = true;
    report.dataset.loaded = "false";
    notify(explain(error));
  } finally {
    report.removeAttribute("aria-busy");
    if ($("auto-refresh").checked && !document.hidden) timer = setTimeout(refresh, REFRESH_MS);
  }
}

setUpKeyForm(refresh);
$("controls").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
$("window").addEventListener("change", refresh);
$("auto-refresh").addEventListener("change", refresh);
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => shown && showOverTime(shown.series), 200);
});
refresh();
