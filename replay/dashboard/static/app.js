// The replay dashboard page: plain JavaScript over the JSON API under api/.
// Every value from the store goes into the page as text (textContent), never as HTML.
"use strict";

const STATUSES = ["pending", "running", "suspended", "completed", "failed", "cancelled"];
const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let current = null; // the run shown in the run view
let currentSteps = []; // its step spans, numbered as fork's from_step counts them
let busy = false;
let again = false; // a refresh was asked for while one ran

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(new URL(path, document.baseURI), {
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    ...options,
  });
  let body;
  try { body = await response.json(); } catch { body = { error: response.statusText }; }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

const pad = (n) => String(n).padStart(2, "0");
function when(at) {
  if (at === null || at === undefined) return "";
  const d = new Date(at * 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}
function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.round((seconds % 86400) / 3600)} h`;
}
const json = (value) => JSON.stringify(value, null, 2);
const finished = (run) => ["completed", "failed", "cancelled"].includes(run.status);

function flash(message, bad = false) {
  const box = $("flash");
  box.textContent = message;
  box.className = bad ? "bad" : "";
  box.hidden = false;
}

// -- routing: #/ (runs, with ?workflow=&status=&limit=) and #/runs/<id> --------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  if (path.startsWith("/runs/")) return { view: "run", id: decodeURIComponent(path.slice(6)) };
  return { view: "list", params: new URLSearchParams(query || "") };
}

async function refresh() {
  if (document.hidden) return;
  if (busy) { again = true; return; }
  busy = true;
  try {
    const r = route();
    $("list-view").hidden = r.view !== "list";
    $("run-view").hidden = r.view !== "run";
    if (r.view === "list") await showList(r.params);
    else await showRun(r.id);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    flash(error.message, true);
  } finally {
    busy = false;
  }
  if (again) { again = false; await refresh(); }
}

// -- the runs list ------------------------------------------------------------------

async function showList(params) {
  current = null;
  const query = new URLSearchParams();
  for (const key of ["workflow", "status", "limit"]) if (params.get(key)) query.set(key, params.get(key));
  const data = await api(`api/runs?${query}`);
  renderCounts(data.counts, data.capped, params.get("status") || "");
  renderFilters(data.workflows, params);
  const body = $("runs").tBodies[0];
  body.replaceChildren(...data.runs.map((run) => runRow(run, data.now)));
  $("runs-empty").hidden = data.runs.length > 0;
}

function renderCounts(counts, capped, active) {
  $("counts").replaceChildren(...STATUSES.map((status) => {
    const chip = el("a", { class: `count${status === active ? " active" : ""}`, href: filterHref({ status }),
      "data-status": status, title: `show ${status} runs` });
    chip.append(el("i", { class: `dot s-${status}` }), status,
      el("b", { text: `${counts[status]}${capped && counts[status] >= 1000 ? "+" : ""}` }));
    return chip;
  }));
}

function filterHref(change) {
  const params = route().params || new URLSearchParams();
  for (const [key, value] of Object.entries(change)) {
    if (value && !(key === "status" && params.get("status") === value)) params.set(key, value);
    else params.delete(key);
  }
  return `#/?${params}`;
}

function renderFilters(workflows, params) {
  const select = $("filter-workflow");
  const wanted = ["", ...workflows];
  if ([...select.options].map((o) => o.value).join() !== wanted.join()) {
    select.replaceChildren(...wanted.map((name) => el("option", { value: name, text: name || "all" })));
  }
  select.value = params.get("workflow") || "";
  const status = $("filter-status");
  if (status.options.length === 1) status.append(...STATUSES.map((s) => el("option", { value: s, text: s })));
  status.value = params.get("status") || "";
  $("filter-limit").value = params.get("limit") || "100";
}

function runRow(run, now) {
  const link = el("a", { href: `#/runs/${encodeURIComponent(run.run_id)}`, text: run.run_id });
  const end = finished(run) ? run.updated_at : now;
  let detail = "";
  if (run.error) detail = `${run.error.type}: ${run.error.message}`;
  else if (run.status === "completed") detail = JSON.stringify(run.result);
  else if (run.wake_at) detail = `wakes ${when(run.wake_at)}`;
  if (run.cancel_requested && !finished(run)) detail = `cancel requested. ${detail}`;
  return el("tr", { "data-run": run.run_id, "data-status": run.status },
    el("td", {}, link), el("td", { text: run.workflow }),
    el("td", {}, el("span", { class: `badge s-${run.status}`, text: run.status })),
    el("td", { class: "when", text: when(run.created_at) }), el("td", { text: duration(end - run.created_at) }),
    el("td", { class: "detail", text: detail, title: detail }));
}

// -- one run ------------------------------------------------------------------------

async function showRun(id) {
  const data = await api(`api/runs/${encodeURIComponent(id)}`);
  const run = data.run;
  current = run;
  $("run-title").textContent = run.run_id;
  $("run-status").textContent = run.status + (run.cancel_requested && !finished(run) ? " (cancelling)" : "");
  $("run-status").className = `badge s-${run.status}`;
  $("cancel-btn").disabled = finished(run);
  $("retry-btn").disabled = run.status !== "failed";
  $("retry-btn").title = $("retry-btn").disabled
    ? "only a failed run can be retried"
    : "run it again on the current code: a parked run resumes; one whose step failed continues as a new run";
  const facts = [["workflow", run.workflow], ["started", when(run.created_at)], ["updated", when(run.updated_at)],
    ["duration", duration((finished(run) ? run.updated_at : data.now) - run.created_at)]];
  if (run.parent_id) facts.push(["parent", run.parent_id]);
  if (run.wake_at) facts.push(["wakes", when(run.wake_at)]);
  $("run-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  renderError(run.error);
  $("run-input").textContent = json(run.args);
  $("run-output-box").hidden = run.status !== "completed";
  $("run-output").textContent = json(run.result);
  currentSteps = data.timeline.spans.filter((s) => s.kind === "step");
  $("fork-btn").disabled = currentSteps.length === 0;
  renderTimeline(data.timeline, finished(run) ? data.timeline.end : data.now);
  $("journal-count").textContent = data.journal.length;
  $("journal").tBodies[0].replaceChildren(...data.journal.map((e) => el("tr", {},
    el("td", { text: e.seq }), el("td", { text: e.kind }), el("td", { text: when(e.at) }),
    el("td", { text: JSON.stringify(e.data) }))));
}

function renderError(error) {
  $("run-error").hidden = !error;
  if (!error) return;
  let message = `${error.type}: ${error.message}`;
  if (error.type === "StepFailed") {
    message = `step ${error.step} failed after ${error.attempts} attempt(s): ${error.cause}: ${error.message}`;
  }
  $("run-error-message").textContent = message;
  $("run-error-traceback").textContent = error.traceback || "(no traceback)";
}

// -- the timeline: a row per command, a bar from issued to done ---------------------

function renderTimeline(tl, end) {
  const box = $("timeline");
  if (tl.start === null) { box.replaceChildren(el("p", { class: "muted", text: "empty journal" })); return; }
  const start = tl.start;
  const span = Math.max(end - start, 1e-6);
  const pos = (t) => `${Math.min(100, Math.max(0, ((t - start) / span) * 100))}%`;
  const width = (a, b) => `${Math.max(0, ((Math.min(b, end) - a) / span) * 100)}%`;
  const bar = (cls, a, b, title) => {
    const node = el("div", { class: `bar ${cls}`, title });
    node.style.left = pos(a);
    node.style.width = width(a, b);
    return node;
  };
  const rows = [];
  const marks = el("div", { class: "track" });
  for (const mark of tl.marks) {
    const cls = mark.kind === "workflow_failed" ? "bad" : mark.kind === "workflow_completed" ? "ok" : "";
    const node = el("div", { class: `mark ${cls}`, title: `#${mark.seq} ${mark.label} at ${when(mark.at)}` });
    node.style.left = pos(mark.at);
    marks.append(node);
  }
  rows.push(el("div", { class: "row marks" }, el("div", { class: "label" }, el("span", { class: "kind", text: "run" }),
    tl.marks.map((m) => m.label).join(", ")), marks, el("div", { class: "dur", text: duration(end - start) })));
  for (const s of tl.spans) rows.push(...spanRows(s, end, bar, pos));
  const axis = el("div", { class: "axis" }, el("span"),
    el("div", { class: "ends" }, el("span", { text: when(start) }), el("span", { text: when(end) })), el("span"));
  box.replaceChildren(...rows, axis);
}

function spanRows(s, end, bar, pos) {
  const track = el("div", { class: "track" });
  const stop = s.end ?? end;
  if (s.kind === "step") {
    for (const a of s.attempts) {
      const aEnd = a.end ?? end;
      const cls = { completed: "ok", failed: "bad", running: "live", abandoned: "abandoned" }[a.outcome];
      const why = a.error ? `: ${a.error.type}: ${a.error.message}` : "";
      track.append(bar(`${cls}${a.end === null ? " open" : ""}`, a.start, aEnd,
        `attempt ${a.attempt} ${a.outcome}${why}`));
      if (a.retry_at) track.append(bar("retry", a.end, a.retry_at, `retry at ${when(a.retry_at)}`));
    }
  } else {
    const cls = s.kind === "child" && s.state === "failed" ? "bad" : s.kind;
    track.append(bar(`${cls}${s.end === null ? " open" : ""}`, s.start, stop, `${s.kind} ${s.state}`));
  }
  if (s.due) {
    const due = el("div", { class: "due", title: `${s.kind === "wait" ? "times out" : "due"} ${when(s.due)}` });
    due.style.left = pos(s.due);
    track.append(due);
  }
  const failures = (s.attempts || []).filter((a) => a.outcome === "failed").length;
  const label = el("div", { class: "label", title: `#${s.op} ${s.kind} ${s.name}: ${s.state}` },
    el("span", { class: "kind", text: s.step ? `step ${s.step}` : s.kind }), s.name, el("span", { class: "muted",
      text: ` ${s.state}${failures ? ` (${failures} failed attempt${failures > 1 ? "s" : ""})` : ""}` }));
  const row = el("div", { class: `row span-row state-${s.state}`, "data-kind": s.kind, "data-op": s.op },
    label, track, el("div", { class: "dur", text: duration(stop - s.start) + (s.end === null ? "…" : "") }));
  row.addEventListener("click", () => toggleDetail(row, s));
  return [row];
}

function toggleDetail(row, s) {
  if (row.nextElementSibling?.classList.contains("span-detail")) { row.nextElementSibling.remove(); return; }
  const lines = [`#${s.op} ${s.kind} ${s.name}: ${s.state}, from ${when(s.start)}` +
    (s.end !== null ? ` to ${when(s.end)}` : "") + (s.due ? ` (${s.kind === "wait" ? "times out" : "due"} ${when(s.due)})` : "")];
  for (const a of s.attempts || []) {
    lines.push(`  attempt ${a.attempt}: ${a.outcome}${a.end !== null ? ` at ${when(a.end)}` : ""}` +
      (a.error ? `: ${a.error.type}: ${a.error.message}` : "") + (a.retry_at ? `; retry at ${when(a.retry_at)}` : ""));
  }
  const detail = { ...(s.detail || {}) };
  const error = detail.error;
  if (error) detail.error = `${error.type}: ${error.message}`;
  if (Object.keys(detail).length) lines.push(json(detail));
  const box = el("div", { class: "span-detail" }, el("pre", { text: lines.join("\n") }));
  if (error?.traceback) box.append(el("pre", { text: error.traceback }));
  if (s.run_id) box.prepend(el("a", { href: `#/runs/${encodeURIComponent(s.run_id)}`, text: `open ${s.run_id}` }));
  if (s.step) {
    const button = el("button", { type: "button", class: "fork-step", text: `Fork from step ${s.step}` });
    button.addEventListener("click", () => fork(s.step));
    box.prepend(button);
  }
  row.after(box);
}

// -- actions, each behind a confirmation --------------------------------------------

async function act(question, path, body, done) {
  if (!window.confirm(question)) return;
  try {
    const result = await api(path, { method: "POST", body: JSON.stringify(body) });
    flash(done(result));
  } catch (error) {
    flash(error.message, true);
  }
  await refresh();
}

function fork(step) {
  if (!current) return;
  const source = current.run_id;
  act(`Fork run ${source} from step ${step}? A new run replays its journal up to step ${step}, ` +
    "then runs that step and the rest on the current code. This run is left as it is.",
    `api/runs/${encodeURIComponent(source)}/fork`, { from_step: step }, (r) => {
      location.hash = `#/runs/${encodeURIComponent(r.run.run_id)}`;
      return `Forked ${source} from step ${step}: new run ${r.run.run_id}`;
    });
}

function askFork() {
  if (!current || currentSteps.length === 0) return;
  const failed = currentSteps.find((s) => s.state === "failed");
  const names = currentSteps.map((s) => `${s.step} ${s.name}`).join(", ");
  const answer = window.prompt(`Fork from which step? (${names})`, String(failed ? failed.step : 1));
  if (answer === null) return;
  const step = Number(answer);
  if (!Number.isInteger(step) || step < 1 || step > currentSteps.length) {
    flash(`Pick a step from 1 to ${currentSteps.length}, not ${answer}`, true);
    return;
  }
  fork(step);
}

function setup() {
  $("filters").addEventListener("change", () => {
    const params = new URLSearchParams();
    for (const key of ["workflow", "status", "limit"]) {
      const value = $(`filter-${key}`).value;
      if (value && !(key === "limit" && value === "100")) params.set(key, value);
    }
    location.hash = `#/?${params}`;
  });
  $("cancel-btn").addEventListener("click", () => current && act(
    `Cancel run ${current.run_id}? The workflow sees CancelledError at its next await.`,
    `api/runs/${encodeURIComponent(current.run_id)}/cancel`, {}, (r) => `Cancellation requested: ${r.run.run_id}`));
  $("retry-btn").addEventListener("click", () => current && act(
    `Retry run ${current.run_id}? It runs again on the current code, from its failed step; ` +
    `the steps before it are not run again.`,
    `api/runs/${encodeURIComponent(current.run_id)}/retry`, {}, (r) => {
      if (r.run.run_id !== current.run_id) location.hash = `#/runs/${encodeURIComponent(r.run.run_id)}`;
      return `Retrying ${current.run_id} as ${r.run.run_id}`;
    }));
  $("fork-btn").addEventListener("click", askFork);
  $("event-btn").addEventListener("click", () => { $("event-form").hidden = false; $("event-name").focus(); });
  $("event-close").addEventListener("click", () => { $("event-form").hidden = true; });
  $("event-form").addEventListener("submit", (e) => {
    e.preventDefault();
    let data;
    try { data = JSON.parse($("event-data").value || "{}"); } catch (error) {
      flash(`The data is not JSON: ${error.message}`, true);
      return;
    }
    const body = { name: $("event-name").value, data };
    if ($("event-id").value) body.id = $("event-id").value;
    act(`Send event ${body.name} with data ${JSON.stringify(data)}?`, "api/events", body,
      (r) => `Event ${r.name} sent (id ${r.id})`);
  });
  window.addEventListener("hashchange", () => { $("flash").hidden = true; refresh(); });
  setInterval(refresh, POLL_MS);
  refresh();
}

document.addEventListener("DOMContentLoaded", setup);
