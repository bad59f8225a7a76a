// The playground: a chat that streams the routed expert's answer, with the routing decision
// beside it as it arrives (expert, scores, confidence against the threshold, fallback,
// failover, latency, tokens; each expert's answer in a fan-out), a route-only mode that routes
// the draft as one types, and a multi-turn conversation that shows when the domain switched.
import { ApiError, barRow, callApi, colourFor, el, explain, ms, notify, setUpKeyForm, sseData } from "./api.js";

const $ = (id) => document.getElementById(id);
const ROUTE_DELAY_MS = 300; // route-only: wait for a pause in typing

const state = {
  messages: [], // the conversation sent to the gateway: {role, content}
  lastDomain: null, // the previous answer's domain, to show a switch
  controller: null, // aborts the answer being streamed
  routeTimer: null,
  routeController: null,
};

// --- the decision panel -----------------------------------------------------------------------

function fact(term, ...description) {
  return [el("dt", { text: term }), el("dd", {}, ...description)];
}

const ROUTED_BY = {
  router: "the router",
  fallback: "the fallback (confidence below the threshold)",
  explicit: "the request (a named expert)",
};

/** Show a decision: `meta` is the response's `expertmesh` field (or /v1/route's answer). */
function showDecision(meta, { preview = false, timing = null, usage = null } = {}) {
  $("decision-empty").hidden = true;
  $("decision").hidden = false;
  $("decision-kind").textContent = preview ? "(route only: no expert asked)" : "";
  const asked = meta.fanout?.asked;
  const facts = asked
    ? [...fact("Experts", el("strong", { text: `fan-out to ${asked.join(", ")}`, "data-testid": "expert" })),
      ...fact("Combined", meta.fanout.strategy === "synthesize" ? `written by ${meta.fanout.aggregator || "the aggregator"} from their answers`
        : `by the "${meta.fanout.strategy}" strategy`)]
    : [...fact("Expert", el("strong", { text: meta.expert, "data-testid": "expert" })),
      ...fact("Routed by", ROUTED_BY[meta.routed_by] || meta.routed_by)];
  if (meta.domain) facts.push(...fact("Domain", meta.domain));
  if (meta.conversation) {
    const switched = meta.conversation === "switched";
    facts.push(...fact("Conversation", el("span", { class: `badge ${meta.conversation}`, "data-testid": "conversation",
      text: switched ? "domain switched" : "domain kept" })));
  }
  if (meta.answered_by && meta.answered_by !== meta.expert) {
    const failed = (meta.failover || []).map((f) => `${f.expert} (${f.error})`).join(", ");
    facts.push(...fact("Failed over", `${meta.answered_by} answered after ${failed || meta.expert} failed`));
  }
  if (meta.router) facts.push(...fact("Route latency", `${ms(meta.latency_ms)} (${meta.router} router)`));
  if (timing) facts.push(...fact("Expert latency", timing));
  if (usage) facts.push(...fact("Tokens", `${usage.prompt_tokens ?? "?"} prompt + ${usage.completion_tokens ?? "?"} completion`));
  $("facts").replaceChildren(...facts);
  showConfidence(meta);
  showScores(meta.scores || {});
  showFanout(meta.fanout);
}

function showConfidence(meta) {
  const known = typeof meta.confidence === "number";
  $("confidence-section").hidden = !known;
  if (!known) return;
  const threshold = meta.threshold ?? null;
  $("confidence").replaceChildren(barRow(meta.domain, meta.confidence, {
    colour: colourFor(meta.domain), threshold, shown: meta.confidence.toFixed(2),
  }));
  $("confidence-caption").textContent = threshold === null ? "" : meta.confidence >= threshold
    ? `${meta.confidence.toFixed(2)} \u2265 threshold ${threshold.toFixed(2)}: the router's choice stands.`
    : `${meta.confidence.toFixed(2)} < threshold ${threshold.toFixed(2)}: the fallback expert answers.`;
}

function showScores(scores) {
  const entries = Object.entries(scores);
  $("scores-section").hidden = entries.length === 0;
  const top = entries.reduce((best, entry) => (best === null || entry[1] > best[1] ? entry : best), null);
  $("scores").replaceChildren(...entries.map(([domain, score]) => {
    const row = barRow(domain, score, { colour: colourFor(domain) });
    row.dataset.domain = domain;
    row.dataset.score = String(score);
    if (top && domain === top[0]) row.classList.add("leading");
    return row;
  }));
}

function showFanout(fanout) {
  $("fanout-section").hidden = !fanout;
  if (!fanout) return;
  const list = $("fanout-answers");
  if (!fanout.experts) { // the first chunk: who is being asked
    list.replaceChildren(...(fanout.asked || []).map((name) => el("li", { text: `${name}: asking\u2026` })));
    return;
  }
  list.replaceChildren(...fanout.experts.map((answer) => el("li", { "data-expert": answer.expert },
    el("strong", { text: answer.expert }),
    ` ${answer.status}, score ${answer.score.toFixed(2)}, ${ms(answer.latency_ms)}`,
    answer.reason ? ` (${answer.reason})` : null,
    answer.sub_question ? el("div", { class: "muted", text: `asked: ${answer.sub_question}` }) : null,
    answer.text ? el("p", { class: "text", text: answer.text }) : null)));
  if (fanout.aggregator) list.append(el("li", { text: `The answer is ${fanout.strategy === "synthesize" ? `written by ${fanout.aggregator} from these` : fanout.strategy}.` }));
}

// --- the conversation -------------------------------------------------------------------------

function addTurn(role, text) {
  const body = el("div", { class: "text", text });
  const who = el("div", { class: "who" }, el("span", { text: role === "user" ? "You" : "Assistant" }));
  const turn = el("li", { class: `turn ${role}`, "data-role": role }, who, body);
  $("conversation").append(turn);
  turn.scrollIntoView({ block: "nearest" });
  return { turn, who, body };
}

function labelTurn(view, meta) {
  const asked = meta.fanout?.asked;
  const answeredBy = asked ? "fan-out" : meta.answered_by || meta.expert;
  const badges = [el("span", { class: "badge", text: asked ? `fan-out: ${asked.join(" + ")}` : answeredBy })];
  if (meta.conversation === "switched" && state.lastDomain) {
    badges.push(el("span", { class: "badge switched", text: `switched: ${state.lastDomain} \u2192 ${meta.domain}` }));
  } else if (meta.conversation === "kept") {
    badges.push(el("span", { class: "badge kept", text: `kept: ${meta.domain}` }));
  } else if (meta.domain && meta.domain !== answeredBy) {
    badges.push(el("span", { class: "badge", text: `domain: ${meta.domain}` }));
  }
  view.who.append(...badges);
  view.turn.dataset.expert = answeredBy;
  if (meta.domain) view.turn.dataset.domain = meta.domain;
  if (meta.conversation) view.turn.dataset.conversation = meta.conversation;
}

function requestBody(messages) {
  const body = { model: $("model").value, messages, stream: true, stream_options: { include_usage: true } };
  const maxTokens = Number.parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  if ($("fanout").checked && body.model === "auto") body.expertmesh = { fanout: true, include_answers: true };
  return body;
}

async function ask(text) {
  const messages = [...state.messages, { role: "user", content: text }];
  addTurn("user", text);
  const view = addTurn("assistant", "");
  view.turn.dataset.state = "streaming";
  view.turn.setAttribute("aria-busy", "true");
  state.controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let firstToken = null;
  let answer = "";
  let meta = null;
  let usage = null;
  let chunks = 0;
  const timing = () => (firstToken === null ? "waiting\u2026"
    : `first token ${ms(firstToken)}, answer ${ms(performance.now() - started)} (seen from this page)`);
  try {
    const response = await callApi("/v1/chat/completions", { method: "POST", body: requestBody(messages), signal: state.controller.signal });
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(502, chunk.error.message, chunk.error.code);
      if (chunk.expertmesh) {
        const first = meta === null;
        meta = { ...meta, ...chunk.expertmesh, fanout: { ...meta?.fanout, ...chunk.expertmesh.fanout } };
        if (!chunk.expertmesh.fanout && !meta.fanout.asked) delete meta.fanout;
        if (first) labelTurn(view, meta);
        showDecision(meta, { timing: timing(), usage });
      }
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        if (firstToken === null) firstToken = performance.now() - started;
        answer += delta;
        view.body.textContent = answer;
        view.turn.dataset.chunks = String(++chunks);
      }
    }
    state.messages = [...messages, { role: "assistant", content: answer }];
    if (meta?.domain) state.lastDomain = meta.domain;
    view.turn.dataset.state = "done";
    if (meta) showDecision(meta, { timing: timing(), usage });
    notify(null);
  } catch (error) {
    view.turn.dataset.state = "failed";
    view.turn.classList.add("failed");
    if (error.name === "AbortError") {
      view.body.textContent = answer ? `${answer}\n[stopped]` : "[stopped]";
    } else {
      view.body.textContent = answer ? `${answer}\n[${explain(error)}]` : explain(error);
      notify(explain(error));
    }
  } finally {
    view.turn.removeAttribute("aria-busy");
    state.controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

// --- route only ------------------------------------------------------------------------------

async function routeDraft() {
  const text = $("message").value.trim();
  if (!text) return;
  state.routeController?.abort();
  state.routeController = new AbortController();
  try {
    const response = await callApi("/v1/route", { method: "POST", signal: state.routeController.signal,
      body: { messages: [...state.messages, { role: "user", content: text }] } });
    showDecision(await response.json(), { preview: true });
    notify(null);
  } catch (error) {
    if (error.name !== "AbortError") notify(explain(error));
  }
}

function scheduleRoute() {
  clearTimeout(state.routeTimer);
  if ($("route-only").checked) state.routeTimer = setTimeout(routeDraft, ROUTE_DELAY_MS);
}

// --- start ------------------------------------------------------------------------------------

async function loadModels() {
  try {
    const response = await callApi("/v1/models");
    const { data } = await response.json();
    const chosen = $("model").value;
    $("model").replaceChildren(...data.map((model) => el("option", { value: model.id,
      text: model.id === "auto" ? "auto (routed)" : model.id })));
    if (data.some((model) => model.id === chosen)) $("model").value = chosen;
    notify(null);
    return true;
  } catch (error) {
    notify(explain(error));
    return false;
  }
}

function submit(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || state.controller) return;
  if ($("route-only").checked) {
    routeDraft();
    return;
  }
  $("message").value = "";
  ask(text);
}

setUpKeyForm(async () => {
  if (await loadModels()) notify("Key accepted.", "info");
});
$("ask").addEventListener("submit", submit);
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submit(event);
});
$("message").addEventListener("input", scheduleRoute);
$("route-only").addEventListener("change", scheduleRoute);
$("stop").addEventListener("click", () => state.controller?.abort());
$("reset").addEventListener("click", () => {
  state.controller?.abort();
  state.messages = [];
  state.lastDomain = null;
  $("conversation").replaceChildren();
  $("decision").hidden = true;
  $("decision-empty").hidden = false;
  $("message").focus();
});
loadModels();
