// rein's dashboard: a client of the documented /v1 API, nothing more. Pages are built with DOM
// calls (never HTML from data), the token lives in an HttpOnly cookie the server sets, and every
// change carries `x-rein-dashboard: 1`, which no other site can make a browser send.

const main = document.getElementById("main");
let session = null;
let stops = [];
// Each render has a number; a view that finishes after the next render began draws nothing.
let generation = 0;
let drawing = 0;

// ---- helpers ----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { "x-rein-dashboard": "1" }, ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, init);
  if (response.status === 401 && path !== "/v1/session") {
    session = null;
    render();
    throw new ApiError(401, "signed out");
  }
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, (body && body.detail) || response.statusText);
  return body;
}

function may(scope) {
  return session && (session.scopes.includes(scope) || session.scopes.includes("admin"));
}

function status(run) {
  return typeof run.status === "string" ? run.status : String(run.status);
}

function badge(text) {
  return el("span", { class: `badge ${text}` }, text.replaceAll("_", " "));
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function age(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function money(micros) {
  return `$${(micros / 1e6).toFixed(micros < 10000 ? 6 : 2)}`;
}

function every(ms, fn) {
  if (drawing !== generation) return;
  const id = setInterval(fn, ms);
  stops.push(() => clearInterval(id));
}

function problem(error) {
  return el("p", { class: "error", role: "alert" }, error.message);
}

function page(title, ...content) {
  if (drawing !== generation) return false;
  main.replaceChildren(el("h1", {}, title), ...content);
  document.title = `${title} · rein`;
  return true;
}

// ---- sign in ----------------------------------------------------------------------------

function signIn(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").replaceChildren();
  const input = el("input", { id: "token", type: "password", autocomplete: "off", required: true,
    placeholder: "rein_…", "aria-describedby": "token-help" });
  const error = el("p", { class: "error", role: "alert" }, message || "");
  const form = el("form", { class: "panel signin", onsubmit: async (e) => {
    e.preventDefault();
    try {
      session = await api("/v1/session", { json: { token: input.value } });
      input.value = "";
      render();
    } catch (err) {
      error.textContent = err.message;
    }
  } },
  el("h1", {}, "Sign in to rein"),
  el("label", { for: "token" }, "API token"), input,
  el("p", { id: "token-help", class: "muted" }, "A token from `rein tokens create`. It is kept in a cookie the page's scripts cannot read."),
  el("button", { type: "submit" }, "Sign in"), error);
  main.replaceChildren(form);
  document.title = "Sign in · rein";
  input.focus();
}

async function signOut() {
  await fetch("/v1/session", { method: "DELETE", credentials: "same-origin", headers: { "x-rein-dashboard": "1" } });
  session = null;
  render();
}

// ---- runs -------------------------------------------------------------------------------

async function runsPage() {
  const filters = { status: el("select", { id: "f-status" }, el("option", { value: "" }, "any"),
      ...["running", "awaiting_approval", "completed", "failed", "denied", "cancelled", "budget_exhausted", "interrupted", "needs_reconciliation"]
        .map((s) => el("option", { value: s }, s.replaceAll("_", " ")))),
    agent: el("input", { id: "f-agent", placeholder: "any" }),
    user: el("input", { id: "f-user", placeholder: "any" }),
    since: el("select", { id: "f-since" }, el("option", { value: "" }, "any time"),
      el("option", { value: "3600000" }, "last hour"), el("option", { value: "86400000" }, "last day"),
      el("option", { value: "604800000" }, "last week")) };
  const body = el("tbody");
  const note = el("p", { class: "muted", "aria-live": "polite" });
  const table = el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Run"), el("th", {}, "Status"), el("th", {}, "Agent"),
      el("th", { class: "wide" }, "User"), el("th", {}, "Task"), el("th", { class: "wide" }, "Steps"), el("th", { class: "wide" }, "Started"))),
    body));
  let runs = [];
  const draw = () => {
    const shown = runs.filter((r) => (!filters.status.value || status(r) === filters.status.value)
      && (!filters.agent.value || r.agent.includes(filters.agent.value))
      && (!filters.user.value || r.user.includes(filters.user.value))
      && (!filters.since.value || Date.now() - r.created_ms < Number(filters.since.value)));
    body.replaceChildren(...shown.map((r) => el("tr", {},
      el("td", {}, el("a", { href: `#/runs/${r.id}`, class: "mono" }, r.id.slice(0, 12))),
      el("td", {}, badge(status(r))), el("td", {}, r.agent), el("td", { class: "wide" }, r.user),
      el("td", { class: "task" }, r.task), el("td", { class: "wide" }, r.steps),
      el("td", { class: "wide" }, when(r.created_ms)))));
    note.textContent = `${shown.length} of ${runs.length} runs · updated ${new Date().toLocaleTimeString()}`;
  };
  const load = async () => {
    try {
      runs = await api("/v1/runs?limit=200");
      draw();
    } catch (err) {
      note.textContent = err.message;
    }
  };
  for (const f of Object.values(filters)) f.addEventListener("input", draw);
  const parts = [el("div", { class: "panel row", role: "search" },
    el("label", {}, "Status", filters.status), el("label", {}, "Agent", filters.agent),
    el("label", {}, "User", filters.user), el("label", {}, "Started", filters.since))];
  if (may("runs:write")) parts.unshift(await startForm());
  page("Runs", ...parts, note, table);
  await load();
  every(2000, load);
}

async function startForm() {
  const agents = await api("/v1/agents");
  const agent = el("select", { id: "start-agent" }, ...agents.map((a) => el("option", { value: a.name }, a.name)));
  const task = el("input", { id: "start-task", placeholder: "the agent's default task" });
  const error = el("span", { class: "error", role: "alert" });
  return el("form", { class: "panel row", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const body = { agent: agent.value };
      if (task.value.trim()) body.task = task.value.trim();
      const started = await api("/v1/runs", { json: body });
      location.hash = `#/runs/${started.run_id}`;
    } catch (err) {
      error.textContent = err.message;
    }
  } }, el("label", {}, "Agent", agent), el("label", { class: "grow" }, "Task", task),
  el("button", { type: "submit" }, "Start a run"), error);
}

const KINDS = ["run_started", "run_resumed", "model_requested", "model_replied", "model_failed", "tool_rejected",
  "tool_intent", "tool_judged", "approval_requested", "approval_decided", "run_suspended", "model_judged",
  "tool_outcome", "tool_in_doubt", "call_reconciled", "grants_fixed", "answer_judged", "notice",
  "client_results", "tool_handed_off", "run_ended"];

function describe(e) {
  const json = (v) => el("code", {}, JSON.stringify(v));
  switch (e.type) {
    case "run_started": return [el("strong", {}, "started "), `${e.agent} for ${e.user} (${e.tenant}): `, e.task];
    case "model_judged": return ["model ", el("code", {}, e.model), " ", badge(e.verdict), " ", (e.policies || []).join(", ")];
    case "model_replied": return [el("strong", {}, `step ${e.step} `), `${e.model}: ${e.usage.input_tokens} in / ${e.usage.output_tokens} out tokens, ${money(e.cost_micros || 0)}`,
      e.text ? el("pre", {}, e.text) : null, ...(e.tool_calls || []).map((c) => el("div", {}, "→ ", el("code", {}, c.name), " ", json(c.arguments)))];
    case "tool_judged": return ["judged ", el("code", {}, e.tool), " ", badge(e.verdict), " ", (e.policies || []).join(", "),
      (e.reasons || []).length ? el("div", { class: "muted" }, e.reasons.join("; ")) : null];
    case "tool_intent": return ["running ", el("code", {}, e.tool), " ", json(e.args)];
    case "tool_outcome": return [e.ok ? badge("ok") : badge("failed"), " ", el("pre", {}, JSON.stringify(e.output).slice(0, 600))];
    case "tool_rejected": return ["refused ", el("code", {}, e.tool), ": ", e.reason];
    case "approval_requested": return [badge("pending"), " approval ", el("a", { href: "#/approvals" }, e.approval_id.slice(0, 12)), " for ", el("code", {}, e.tool), " ", json(e.args)];
    case "approval_decided": return [badge(e.approved ? "allow" : "deny"), ` by ${e.by}`, e.note ? `: ${e.note}` : ""];
    case "run_suspended": return ["waiting for a person"];
    case "answer_judged": return ["answer ", badge(e.verdict)];
    case "notice": return [el("span", { class: "muted" }, `${e.kind.replaceAll("_", " ")} · ${e.subject}: ${e.detail}`)];
    case "run_ended": return [el("strong", {}, "ended "), badge(e.status), e.reason ? ` ${e.reason}` : "", e.output ? el("pre", {}, e.output) : null];
    default: return [e.type.replaceAll("_", " ")];
  }
}

// The run's records in the audit trail, on request: what an auditor would check.
function auditRecords(id) {
  const out = el("div", { id: "audit-records" });
  const show = async () => {
    try {
      const response = await fetch(`/v1/audit/export?run=${encodeURIComponent(id)}`, { credentials: "same-origin" });
      if (!response.ok) throw new ApiError(response.status, (await response.json()).detail);
      const records = (await response.text()).split("\n").filter(Boolean).map((l) => JSON.parse(l));
      out.replaceChildren(el("p", { class: "muted" }, `${records.length} records in the signed log`),
        el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Record"), el("th", {}, "Event"), el("th", {}, "Kind"), el("th", { class: "wide" }, "At"))),
          el("tbody", {}, ...records.map((r) => el("tr", {}, el("td", {}, r.seq), el("td", {}, r.event ?? ""), el("td", {}, r.kind), el("td", { class: "wide" }, when(r.at_ms))))))));
    } catch (err) {
      out.replaceChildren(problem(err));
    }
  };
  return el("section", {}, el("h2", {}, "Audit records"),
    el("button", { class: "secondary", id: "show-audit", onclick: show }, "Show this run's audit records"), out);
}

async function runPage(id) {
  let detail;
  try {
    detail = await api(`/v1/runs/${encodeURIComponent(id)}`);
  } catch (err) {
    page("Run", problem(err));
    return;
  }
  const started = detail.events.length ? detail.events[0].at_ms : 0;
  const list = el("ol", { class: "timeline", "aria-live": "polite" });
  const state = el("span");
  let last = 0;
  const actions = el("div", { class: "row" });
  const now = status(detail.run);
  const ended = !["running", "interrupted", "awaiting_approval"].includes(now);
  // What each tool call came to, as `rein runs show` sums it up: done, failed, refused.
  const calls = el("ul", { id: "calls" });
  const outcome = new Map();
  const approvalCall = new Map();
  const note = (e) => {
    switch (e.type) {
      case "model_replied": for (const c of e.tool_calls || []) outcome.set(c.id, [c.name, "proposed"]); break;
      case "tool_outcome": if (outcome.has(e.call_id)) outcome.get(e.call_id)[1] = e.ok ? "completed" : "failed"; break;
      case "tool_handed_off": if (outcome.has(e.call_id)) outcome.get(e.call_id)[1] = "handed to the client"; break;
      case "tool_rejected": if (outcome.has(e.call_id)) outcome.get(e.call_id)[1] = "rejected"; break;
      case "tool_judged": if (e.verdict === "deny" && outcome.has(e.call_id)) outcome.get(e.call_id)[1] = "denied"; break;
      case "approval_requested": approvalCall.set(e.approval_id, e.call_id); if (outcome.has(e.call_id)) outcome.get(e.call_id)[1] = "awaiting approval"; break;
      case "approval_decided": { const c = outcome.get(approvalCall.get(e.approval_id)); if (c && !e.approved) c[1] = "not approved"; break; }
      default: return;
    }
    calls.replaceChildren(...[...outcome.entries()].map(([callId, [tool, how]]) => el("li", {},
      el("code", {}, tool), " ", badge(how.replaceAll(" ", "_")), " ", el("span", { class: "muted mono" }, callId))));
    if (!outcome.size) calls.replaceChildren(el("li", { class: "muted" }, "none"));
  };
  const add = (record) => {
    if (record.seq <= last) return;
    last = record.seq;
    note(record.event);
    list.append(el("li", { "data-kind": record.event.type },
      el("span", { class: "at" }, `+${Math.round((record.at_ms - started) / 10) / 100} s`),
      el("div", { class: "what" }, describe(record.event))));
    // The buttons follow the run: none once it has ended, no resume while it is driven.
    if (record.event.type === "run_ended") {
      state.replaceChildren(badge(record.event.status));
      actions.replaceChildren();
    }
    if (record.event.type === "run_suspended") state.replaceChildren(badge("awaiting_approval"));
    if (record.event.type === "run_resumed" || record.event.type === "run_suspended") actions.querySelector(".resume")?.remove();
  };
  state.replaceChildren(badge(status(detail.run)));
  if (may("runs:write") && !ended) {
    actions.append(el("button", { class: "danger", onclick: async () => {
      try { await api(`/v1/runs/${id}/cancel`, { method: "POST" }); } catch (err) { actions.append(problem(err)); }
    } }, "Cancel"));
    if (now === "interrupted") {
      actions.append(el("button", { class: "secondary resume", onclick: async () => {
        try { await api(`/v1/runs/${id}/resume`, { method: "POST" }); } catch (err) { actions.append(problem(err)); }
      } }, "Resume"));
    }
  }
  const totals = detail.totals;
  page(`Run ${id.slice(0, 12)}`,
    el("dl", { class: "facts panel" }, el("dt", {}, "Status"), el("dd", { id: "run-status" }, state),
      el("dt", {}, "Agent"), el("dd", {}, detail.run.agent), el("dt", {}, "User"), el("dd", {}, `${detail.run.user} (${detail.run.tenant})`),
      el("dt", {}, "Task"), el("dd", {}, detail.run.task),
      totals ? [el("dt", {}, "Used"), el("dd", {}, `${totals.steps} steps, ${totals.tool_calls} tool calls, ${totals.usage.input_tokens + totals.usage.output_tokens} tokens`)] : null),
    actions, el("h2", {}, "Timeline"), list, el("h2", {}, "Tool calls"), calls,
    may("audit:read") ? auditRecords(id) : null);
  detail.events.forEach(add);
  if (ended || drawing !== generation) return;
  // Live: the run's events as they become durable, from where the page left off, until it
  // ends (a stream of an ended run closes, and a browser would otherwise reconnect to it).
  const source = new EventSource(`/v1/runs/${encodeURIComponent(id)}/events?from=${last}`);
  for (const kind of KINDS) {
    source.addEventListener(kind, (m) => {
      add(JSON.parse(m.data));
      if (kind === "run_ended") source.close();
    });
  }
  stops.push(() => source.close());
}

// ---- approvals --------------------------------------------------------------------------

async function approvalsPage() {
  const cards = el("div", { class: "cards", "aria-live": "polite" });
  const note = el("p", { class: "muted" });
  const open = new Map();
  let loading = false;
  const load = async () => {
    if (loading) return;
    loading = true;
    try { await loadOnce(); } finally { loading = false; }
  };
  const loadOnce = async () => {
    let pending;
    try {
      pending = await api("/v1/approvals");
    } catch (err) {
      note.textContent = err.message;
      return;
    }
    pending.sort((a, b) => b.created_ms - a.created_ms);
    note.textContent = pending.length ? `${pending.length} waiting` : "Nothing waits for a decision.";
    const ids = new Set(pending.map((a) => a.id));
    for (const [id, node] of open) if (!ids.has(id)) { node.remove(); open.delete(id); }
    for (const a of pending) {
      if (open.has(a.id)) {
        open.get(a.id).querySelector(".age").textContent = `waiting ${age(a.created_ms)}`;
        continue;
      }
      try {
        const card = await approvalCard(a.id);
        open.set(a.id, card);
        cards.prepend(card);
      } catch (err) {
        note.textContent = err.message;
      }
    }
  };
  if (!page("Approvals", note, cards)) return;
  every(2000, load);
  await load();
}

async function approvalCard(id) {
  const c = await api(`/v1/approvals/${id}`);
  const a = c.approval;
  const noteInput = el("textarea", { id: `note-${id}`, "aria-label": "Note" });
  const result = el("p", { role: "status" });
  const decide = (approved) => async () => {
    try {
      await api(`/v1/approvals/${id}`, { json: { approved, note: noteInput.value || null } });
      result.textContent = approved ? "Approved." : "Denied.";
    } catch (err) {
      result.textContent = err.message;
    }
  };
  // The card shows the arguments as recorded, never text the model wrote about them.
  return el("article", { class: "card", "data-approval": id },
    el("h3", {}, el("code", {}, a.tool), " ", badge("pending")),
    el("p", { class: "muted" }, el("span", { class: "age" }, `waiting ${age(a.created_ms)}`),
      a.expires_ms ? ` · expires ${when(a.expires_ms)}` : ""),
    el("dl", { class: "facts" },
      el("dt", {}, "Task"), el("dd", {}, c.task || ""),
      el("dt", {}, "Run"), el("dd", {}, el("a", { href: `#/runs/${a.run_id}`, class: "mono" }, a.run_id.slice(0, 12))),
      el("dt", {}, "For"), el("dd", {}, `${c.user || ""} (${a.tenant})`),
      el("dt", {}, "Policies"), el("dd", {}, (c.policies || []).join(", ")),
      el("dt", {}, "Why"), el("dd", {}, (c.reasons || []).join("; ")),
      el("dt", {}, "Labels"), el("dd", {}, (c.labels || []).join(", ") || "none")),
    el("h4", {}, "Arguments"), el("pre", {}, JSON.stringify(c.arguments, null, 2)),
    (c.provenance_text || []).length ? el("ul", {}, ...c.provenance_text.map((t) => el("li", { class: "muted" }, t))) : null,
    may("approvals:decide") ? [el("label", { for: `note-${id}` }, "Note"), noteInput,
      el("div", { class: "row" }, el("button", { onclick: decide(true) }, "Approve"),
        el("button", { class: "danger", onclick: decide(false) }, "Deny"))] : el("p", { class: "muted" }, "This token may not decide approvals."),
    result);
}

// ---- costs ------------------------------------------------------------------------------

// A bar per row against the largest value, with each row's limit marked. Widths are set
// through the CSSOM, which the page's Content-Security-Policy allows (inline styles it does not).
function bars(rows) {
  const max = Math.max(...rows.map((r) => Math.max(r.value, r.limit || 0))) || 1;
  const pct = (v) => `${Math.min(100, (100 * v) / max)}%`;
  return el("div", { class: "bars", role: "img", "aria-label": rows.map((r) => `${r.label}: ${r.text}`).join("; ") },
    ...rows.map((r) => {
      const fill = el("span", { class: r.limit && r.value > r.limit ? "fill over" : "fill" });
      fill.style.width = pct(r.value);
      const track = el("span", { class: "track" }, fill);
      if (r.limit) {
        const mark = el("span", { class: "mark", title: "limit" });
        mark.style.left = pct(r.limit);
        track.append(mark);
      }
      return el("div", { class: "bar-row" }, el("span", { class: "bar-label mono" }, r.label), track,
        el("span", { class: "bar-text" }, r.text));
    }));
}

async function costsPage() {
  let rows, runs, spend;
  try {
    [rows, runs, spend] = await Promise.all([api("/v1/usage"), api("/v1/runs?limit=1000"), api("/v1/spend?days=14")]);
  } catch (err) {
    page("Costs", problem(err));
    return;
  }
  const usd = (v) => `$${v.toFixed(v < 0.01 ? 6 : 2)}`;
  // Totals of the last 14 days' model calls by one of their dimensions, largest first.
  const sum = (key) => {
    const totals = new Map();
    for (const r of spend) totals.set(key(r), (totals.get(key(r)) || 0) + r.cost_usd);
    return [...totals.entries()].sort((a, b) => b[1] - a[1]);
  };
  const chart = (title, entries) => el("section", { class: "panel" }, el("h2", {}, title),
    entries.length ? bars(entries.map(([label, v]) => ({ label, value: v, text: usd(v) })))
      : el("p", { class: "muted" }, "Nothing spent yet."));
  const byDay = sum((r) => r.day).sort((a, b) => b[0].localeCompare(a[0]));
  const top = [...runs].filter((r) => r.cost_usd > 0).sort((a, b) => b.cost_usd - a.cost_usd).slice(0, 10);
  const byPeriod = new Map();
  for (const r of rows) {
    if (!byPeriod.has(r.period)) byPeriod.set(r.period, []);
    byPeriod.get(r.period).push(r);
  }
  const budgets = [...byPeriod.entries()].sort((a, b) => b[0].localeCompare(a[0])).map(([period, lines]) => el("section", { class: "panel" },
    el("h2", {}, `Budgets, ${period}`),
    bars(lines.map((l) => ({ label: l.key, value: l.cost_micros, limit: l.max_cost_micros || 0,
      text: `${money(l.cost_micros)}${l.max_cost_micros ? ` of ${money(l.max_cost_micros)}` : ""}` }))),
    el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Budget line"), el("th", {}, "Spent"), el("th", {}, "Limit"), el("th", { class: "wide" }, "Tokens"), el("th", { class: "wide" }, "Calls"))),
      el("tbody", {}, ...lines.map((l) => el("tr", {}, el("td", { class: "mono" }, l.key), el("td", {}, money(l.cost_micros)),
        el("td", {}, l.max_cost_micros ? money(l.max_cost_micros) : l.max_tokens ? `${l.max_tokens} tokens` : "none"), el("td", { class: "wide" }, l.tokens), el("td", { class: "wide" }, l.calls))))))));
  page("Costs",
    rows.length ? el("p", { class: "muted" }, "Each budget line's spend per period against its limit (dashed), and what model calls cost over the last 14 days by day, model, agent and user.")
      : el("p", { class: "muted" }, "Nothing spent on a budget line yet."),
    ...budgets,
    chart("By day (last 14)", byDay), chart("By model", sum((r) => r.model)),
    chart("By agent", sum((r) => r.agent)), chart("By user", sum((r) => r.user)),
    el("section", { class: "panel" }, el("h2", {}, "Runs that cost most"),
      top.length ? el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Run"), el("th", {}, "Cost"), el("th", {}, "Agent"), el("th", { class: "wide" }, "User"), el("th", {}, "Task"))),
        el("tbody", {}, ...top.map((r) => el("tr", {}, el("td", {}, el("a", { href: `#/runs/${r.id}`, class: "mono" }, r.id.slice(0, 12))),
          el("td", {}, usd(r.cost_usd)), el("td", {}, r.agent), el("td", { class: "wide" }, r.user), el("td", { class: "task" }, r.task))))))
        : el("p", { class: "muted" }, "No run has cost anything yet.")));
}

// ---- audit ------------------------------------------------------------------------------

async function auditPage() {
  const out = el("div", { "aria-live": "polite" });
  const verify = async () => {
    out.replaceChildren(el("p", { class: "muted" }, "Verifying…"));
    try {
      const v = await api("/v1/audit/verify");
      out.replaceChildren(el("dl", { class: "facts panel" },
        el("dt", {}, "Result"), el("dd", {}, badge(v.ok ? "ok" : "bad"), v.failure ? ` ${v.failure}` : ""),
        el("dt", {}, "Records"), el("dd", {}, v.records), el("dt", {}, "Checkpoints"), el("dd", {}, v.checkpoints),
        el("dt", {}, "Not yet under a checkpoint"), el("dd", {}, v.uncovered),
        el("dt", {}, "Keys"), el("dd", { class: "mono" }, v.keys.join(", ")),
        el("dt", {}, "Runs checked against their logs"), el("dd", {}, `${v.trail.runs} (${v.trail.events} events)`),
        el("dt", {}, "Problems"), el("dd", {}, v.trail.problems.length ? v.trail.problems.join("; ") : "none"),
        el("dt", {}, "Verified"), el("dd", {}, new Date().toLocaleString())));
    } catch (err) {
      out.replaceChildren(problem(err));
    }
  };
  const parts = [el("p", {}, "The audit trail is a signed Merkle log of every decision. ",
    may("audit:read") ? [el("a", { href: "/v1/audit/export", download: "audit.jsonl" }, "Export this tenant's records"), " (JSON lines)."]
      : "Reading its records takes the audit:read scope.")];
  if (may("admin")) parts.push(el("button", { onclick: verify }, "Verify now"), out);
  else parts.push(el("p", { class: "muted" }, "Verifying the whole log takes the admin scope."));
  page("Audit", ...parts);
}

// ---- policies and tools -----------------------------------------------------------------

async function agentsPage() {
  let agents;
  try {
    agents = await api("/v1/agents");
  } catch (err) {
    page("Policies and tools", problem(err));
    return;
  }
  const sections = [];
  for (const a of agents) {
    let list;
    try { list = await api(`/v1/agents/${encodeURIComponent(a.name)}/tools`); } catch (err) { sections.push(problem(err)); continue; }
    const tool = el("select", { id: `tool-${a.name}` }, ...list.tools.map((t) => el("option", { value: t.name }, t.name)));
    const args = el("textarea", { id: `args-${a.name}`, "aria-label": "Arguments (JSON)" }, "{}");
    const labels = el("input", { id: `labels-${a.name}`, placeholder: "untrusted, pii" });
    const approver = el("input", { id: `approver-${a.name}`, placeholder: "nobody" });
    const result = el("div", { id: `explain-${a.name}`, "aria-live": "polite" });
    const explain = async (e) => {
      e.preventDefault();
      try {
        const d = await api(`/v1/agents/${encodeURIComponent(a.name)}/explain`, { json: {
          tool: tool.value, args: JSON.parse(args.value || "{}"),
          labels: labels.value.split(",").map((s) => s.trim()).filter(Boolean),
          approved_by: approver.value.trim() || null } });
        result.replaceChildren(el("p", {}, badge(d.verdict), " ", (d.policies || []).join(", ")),
          (d.reasons || []).length ? el("p", { class: "muted" }, d.reasons.join("; ")) : null);
      } catch (err) {
        result.replaceChildren(problem(err));
      }
    };
    sections.push(el("section", { class: "panel" }, el("h2", {}, a.name),
      el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Tool"), el("th", {}, "Source"), el("th", {}, "Labels"), el("th", { class: "wide" }, "Sink"), el("th", { class: "wide" }, "Risk"), el("th", {}, "By default"))),
        el("tbody", {}, ...list.tools.map((t) => el("tr", {}, el("td", { class: "mono" }, t.name), el("td", {}, t.source),
          el("td", {}, t.labels.join(", ")), el("td", { class: "wide" }, t.sink ? "yes" : ""), el("td", { class: "wide" }, t.risk || ""), el("td", {}, badge(t.verdict))))))),
      el("h3", {}, "Explain a decision"),
      el("form", { class: "row", onsubmit: explain }, el("label", {}, "Tool", tool), el("label", {}, "Labels", labels),
        el("label", {}, "Approved by", approver), el("label", { class: "grow" }, "Arguments (JSON)", args),
        el("button", { type: "submit", id: `explain-button-${a.name}` }, "Explain")), result));
  }
  page("Policies and tools", ...sections);
}

// ---- routing ----------------------------------------------------------------------------

async function render() {
  for (const stop of stops) stop();
  stops = [];
  const mine = ++generation;
  drawing = mine;
  if (!session) {
    try {
      session = await api("/v1/session");
    } catch {
      signIn();
      return;
    }
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("who").replaceChildren(`${session.user} · ${session.tenant}`,
    el("button", { class: "secondary", onclick: signOut }, "Sign out"));
  const hash = location.hash || "#/runs";
  for (const a of document.querySelectorAll("nav a")) {
    if (hash.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const [, section, id] = hash.split("/");
  if (mine !== generation) return;
  try {
    if (section === "runs" && id) await runPage(id);
    else if (section === "approvals") await approvalsPage();
    else if (section === "costs") await costsPage();
    else if (section === "audit") await auditPage();
    else if (section === "agents") await agentsPage();
    else await runsPage();
  } catch (err) {
    if (err.status !== 401) page("Error", problem(err));
  }
  pendingCount();
}

async function pendingCount() {
  const badgeNode = document.getElementById("pending");
  const update = async () => {
    try {
      const pending = await api("/v1/approvals");
      badgeNode.hidden = pending.length === 0;
      badgeNode.textContent = pending.length;
    } catch { /* signed out */ }
  };
  await update();
  every(5000, update);
}

window.addEventListener("hashchange", render);
render();
