"use strict";
// The privacy officer's page: the alert queue, one alert's reasons, responses and timelines,
// verdicts and undoing responses (helpers in common.js). Everything from the server is put on
// the page as text, never as markup. The session token lives only in this page's memory.
let session = null;
let next = null;
let current = null;

function say(text, error) {
  $("status").textContent = text;
  if (error) $("status").dataset.error = text; else delete $("status").dataset.error;
}
async function getJson(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + session } });
  const json = await r.json().catch(() => ({}));
  if (!r.ok) {
    const issue = json.issue && json.issue[0];
    throw new Error((issue && issue.diagnostics) || String(r.status));
  }
  return json;
}
const post = (path, body) => postJson(path, body, session);

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
  return td;
}
function why(a) {
  const d = a.detail || {};
  if (a.kind === "sentinel") {
    const top = (d.reasons || []).slice(0, 3).map((r) => r.signal).join(", ");
    return "score " + d.score + (top ? ": " + top : "");
  }
  if (a.kind === "attack") return d.kind + " (" + d.actor + ")";
  if (a.kind === "break-glass") return "break-glass: " + (d.reason ? "reason given" : "");
  return "";
}
function state(a) {
  if (a.verdict) return a.verdict;
  return a.acknowledged ? "acknowledged" : "open";
}

async function load(more) {
  const q = new URLSearchParams({ count: "50" });
  if ($("kind").value) q.set("kind", $("kind").value);
  if ($("open-only").checked) q.set("open", "true");
  if (more && next) q.set("before", next);
  const page = await getJson("/admin/alerts?" + q);
  const body = $("alerts").tBodies[0];
  if (!more) body.replaceChildren();
  for (const a of page.alerts) {
    const row = document.createElement("tr");
    row.dataset.id = a.id;
    row.dataset.kind = a.kind;
    cell(row, a.time);
    cell(row, a.kind === "attack" ? "attack: " + a.detail.kind : a.kind);
    cell(row, a.user || "");
    cell(row, a.patient || "");
    cell(row, why(a));
    cell(row, state(a)).className = "state";
    const open = document.createElement("button");
    open.textContent = "Open";
    open.setAttribute("aria-label", "Open alert " + a.id);
    open.onclick = () => show(a.id).catch((e) => say("Error: " + e.message, true));
    cell(row, "").appendChild(open);
    body.appendChild(row);
  }
  next = page.next;
  $("more").hidden = !next;
  say(body.rows.length + " alert(s) listed.");
}

function fill(table, rows, cols) {
  const body = $(table).tBodies[0];
  body.replaceChildren();
  for (const r of rows) {
    const row = document.createElement("tr");
    for (const c of cols) cell(row, typeof c === "function" ? c(r) : r[c]);
    body.appendChild(row);
  }
  if (!rows.length) {
    const row = document.createElement("tr");
    cell(row, "none").colSpan = cols.length;
    body.appendChild(row);
  }
}

async function show(id) {
  const a = await getJson("/admin/alerts/" + encodeURIComponent(id));
  current = a;
  for (const r of $("alerts").tBodies[0].rows) r.classList.toggle("selected", r.dataset.id === id);
  $("detail").hidden = false;
  $("detail").dataset.id = a.id;
  $("detail-title").textContent = "Alert " + a.id;
  const facts = $("facts");
  facts.replaceChildren();
  const fact = (k, v) => {
    if (v == null || v === "") return;
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    facts.append(dt, dd);
  };
  fact("Kind", a.kind === "attack" ? "attack: " + a.detail.kind : a.kind);
  fact("Time", a.time);
  fact("User", a.user);
  fact("Patient", a.patient);
  fact("Score", a.detail.score);
  fact("Threshold", a.detail.threshold);
  fact("Status", state(a));
  fact("Verdict reason", a.verdict_reason);
  const reasons = a.kind === "attack"
    ? Object.entries(a.detail.reasons || {}).map(([signal, value]) => ({ signal, value, contribution: "" }))
    : (a.detail.reasons || []);
  fill("reasons", reasons, ["signal", "value", "contribution"]);
  fill("responses", a.responses || [], ["action", "subject", "at",
    (r) => (r.dry_run ? "dry run" : r.undone ? "undone by " + r.undone_by : "in force"), () => ""]);
  // Undo buttons for what is in force.
  const rows = $("responses").tBodies[0].rows;
  (a.responses || []).forEach((r, i) => {
    if (r.dry_run || r.undone || r.action === "webhook") return;
    const b = document.createElement("button");
    b.textContent = "Undo";
    b.setAttribute("aria-label", "Undo " + r.action + " of " + r.subject);
    b.onclick = async () => {
      try {
        await post("/admin/responses/" + encodeURIComponent(r.id) + "/undo");
        say("Undone: " + r.action + " of " + r.subject + ".");
        $("status").dataset.undone = r.id;
        await show(a.id);
      } catch (e) { say("Error: " + e.message, true); }
    };
    rows[i].cells[4].appendChild(b);
  });
  fill("user-timeline", a.user_timeline || [], ["time", "interaction", "resource_type", "patient", "outcome"]);
  fill("patient-timeline", a.patient_timeline || [], ["time", "interaction", "resource_type", "user", "outcome"]);
  $("verdict-form").hidden = !!a.verdict;
  $("detail-title").focus();
}

$("login").onclick = async () => {
  try {
    const body = { username: $("username").value, password: $("password").value };
    if ($("totp").value) body.totp = $("totp").value;
    const s = await postJson("/auth/login", body);
    session = s.session;
    $("password").value = "";
    $("totp").value = "";
    $("sign-in").hidden = true;
    $("queue").hidden = false;
    $("status").dataset.signedIn = "yes";
    await load(false);
  } catch (e) { say("Error: " + e.message, true); }
};
$("refresh").onclick = () => load(false).catch((e) => say("Error: " + e.message, true));
$("more").onclick = () => load(true).catch((e) => say("Error: " + e.message, true));
$("kind").onchange = $("refresh").onclick;
$("open-only").onchange = $("refresh").onclick;
$("verdict-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const chosen = document.querySelector("input[name=verdict]:checked");
  if (!chosen || !$("reason").value.trim()) {
    say("Choose a verdict and give a reason.", true);
    return;
  }
  try {
    await post("/admin/alerts/" + encodeURIComponent(current.id) + "/verdict",
      { verdict: chosen.value, reason: $("reason").value });
    $("reason").value = "";
    chosen.checked = false;
    say("Verdict recorded: " + chosen.value + ".");
    // Said once the queue shows it (a reader of the page, or a test, looks there next).
    await load(false);
    $("status").dataset.judged = current.id;
    await show(current.id);
  } catch (e) { say("Error: " + e.message, true); }
};
$("logout").onclick = async () => {
  try { await post("/auth/logout"); } catch (e) { /* already ended */ }
  session = null;
  current = null;
  $("queue").hidden = true;
  $("detail").hidden = true;
  $("sign-in").hidden = false;
  delete $("status").dataset.signedIn;
  say("Signed out.");
};
