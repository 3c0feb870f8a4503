"use strict";
// The patient portal (helpers in common.js): who accessed my record (the accounting of
// disclosures), my consents (grant, restrict, object to research, withdraw), download my data,
// and requests to the hospital (erasure, restriction, rectification, objection). Everything
// from the server is put on the page as text, never as markup. The session token lives only in
// this page's memory: closing the tab forgets it.
let session = null;
let patient = null;
let olderAccess = null;

const ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const SENSITIVE = ["HIV", "PSY", "SUD", "ETH", "GDIS", "SDV"];
const PURPOSES = {
  TREAT: "treatment", ETREAT: "emergency treatment", HOPERAT: "hospital operations",
  HPAYMT: "payment", HRESCH: "research", CLINTRCH: "clinical trials", PATRQT: "your own request",
  HCOMPL: "compliance review", HLEGAL: "legal", PUBHLTH: "public health",
};
const ACTIONS = { C: "created", R: "read", U: "changed", D: "deleted", E: "ran an operation on" };

function say(text, flag) {
  const s = $("status");
  for (const k of Object.keys(s.dataset)) if (k !== "signedIn") delete s.dataset[k];
  s.textContent = text;
  if (flag) s.dataset[flag] = "yes";
}
function fail(e) {
  say("Something went wrong: " + e.message);
  $("status").dataset.error = e.message;
}
async function call(method, path, body, type) {
  const headers = { Authorization: "Bearer " + session };
  if (body !== undefined) headers["Content-Type"] = type || "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = {};
  try { json = text ? JSON.parse(text) : {}; } catch (e) { json = {}; }
  if (!r.ok) {
    const issue = json.issue && json.issue[0];
    throw new Error((issue && issue.diagnostics) || "the server answered " + r.status);
  }
  return json;
}
const fhir = (method, path, body) => call(method, path, body, "application/fhir+json");

function cell(row, label, text) {
  const td = document.createElement("td");
  if (label) td.dataset.label = label;
  td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
  return td;
}
function when(t) {
  if (!t) return "";
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString();
}

// --- Sign-in -------------------------------------------------------------------------------
async function signedIn(s) {
  session = s.session;
  const me = await call("GET", "/auth/session");
  if (me.role !== "patient" || !me.patient) {
    session = null;
    throw new Error("this page is for patients; staff use the hospital's own systems");
  }
  patient = me.patient;
  $("sign-in").hidden = true;
  $("portal").hidden = false;
  $("who").textContent = "Signed in to the record of patient " + patient + ".";
  $("who").dataset.self = me.user_id;
  $("status").dataset.signedIn = "yes";
  await refresh();
  say("Signed in.", "ready");
}
$("login").onclick = async () => {
  try {
    const body = { username: $("username").value, password: $("password").value };
    if ($("totp").value) body.totp = $("totp").value;
    await signedIn(await postJson("/auth/login", body));
  } catch (e) { fail(e); }
};
$("passkey-login").onclick = async () => {
  try { await signedIn(await passkeyLogin($("username").value)); } catch (e) { fail(e); }
};
$("logout").onclick = async () => {
  try { await call("POST", "/auth/logout", {}); } catch (e) { /* already ended */ }
  session = null;
  patient = null;
  $("portal").hidden = true;
  $("sign-in").hidden = false;
  $("password").value = "";
  $("totp").value = "";
  delete $("status").dataset.signedIn;
  say("Signed out.");
};

async function refresh() {
  await Promise.all([loadAccess(false), loadConsents(), loadRequests()]);
}

// --- Who looked at my record ----------------------------------------------------------------
function who(event) {
  const a = (event.agent || [])[0] || {};
  const w = a.who || {};
  const role = a.role && a.role[0] && a.role[0].text;
  const id = w.identifier && w.identifier.value;
  if (id && id === $("who").dataset.self) return "you";
  if (id) return (role ? role + " " : "") + "account " + id;
  return w.display || "unknown";
}
function what(event) {
  const verb = ACTIONS[event.action] || "accessed";
  const things = (event.entity || [])
    .map((e) => e.what && e.what.reference)
    .filter((r) => r && !r.startsWith("Patient/"))
    .map((r) => r.split("/")[0]);
  const sub = event.subtype && event.subtype[0] && event.subtype[0].code;
  if (sub === "search-type" || sub === "search-system") return "searched your " + (things[0] || "record");
  return verb + " your " + (things[0] || "record");
}
function why(event) {
  const p = event.purposeOfEvent && event.purposeOfEvent[0] && event.purposeOfEvent[0].coding[0].code;
  return p ? (PURPOSES[p] || p) : "not stated";
}
function result(event) {
  if (event.outcome === "0") return "allowed";
  if (event.outcome === "4") return "refused";
  return "failed";
}
async function loadAccess(more) {
  const path = more && olderAccess ? olderAccess : "/fhir/AuditEvent?_count=50";
  const bundle = await fhir("GET", path);
  const body = $("access").tBodies[0];
  if (!more) body.replaceChildren();
  for (const e of bundle.entry || []) {
    const ev = e.resource;
    const row = document.createElement("tr");
    cell(row, "When", when(ev.recorded));
    cell(row, "Who", who(ev));
    cell(row, "What they did", what(ev));
    cell(row, "Why", who(ev) === "you" ? "your own use" : why(ev));
    cell(row, "Result", result(ev));
    body.appendChild(row);
  }
  const next = (bundle.link || []).find((l) => l.relation === "next");
  olderAccess = next ? new URL(next.url, location.href).pathname + new URL(next.url, location.href).search : null;
  $("more-access").hidden = !olderAccess;
}
$("more-access").onclick = () => loadAccess(true).catch(fail);

// --- What I allow ---------------------------------------------------------------------------
function codesOf(list) {
  return (list || []).map((c) => c.code).filter(Boolean);
}
function describe(c) {
  const p = c.provision || {};
  const permit = p.type === "permit";
  const purposes = codesOf(p.purpose).map((x) => PURPOSES[x.toUpperCase()] || x);
  const labels = codesOf(p.securityLabel);
  const sensitive = labels.length && labels.every((l) => SENSITIVE.includes(l.toUpperCase()));
  const actors = (p.actor || []).map((a) => a.reference && a.reference.reference).filter(Boolean);
  let text = permit ? "Allows " : "Does not allow ";
  text += actors.length ? actors.join(", ") + " " : (permit ? "my care team " : "anyone ");
  text += "to use " + (sensitive ? "my sensitive records" : labels.length ? "records labelled " + labels.join(", ") : "my record");
  if (purposes.length) text += " for " + purposes.join(" or ");
  return text + ".";
}
async function loadConsents() {
  const bundle = await fhir("GET", "/fhir/Consent?patient=Patient/" + encodeURIComponent(patient) + "&_count=100");
  const list = (bundle.entry || []).map((e) => e.resource)
    .sort((a, b) => String(b.dateTime).localeCompare(String(a.dateTime)));
  const body = $("consent-list").tBodies[0];
  body.replaceChildren();
  for (const c of list) {
    const row = document.createElement("tr");
    row.dataset.id = c.id;
    cell(row, "Since", when(c.dateTime));
    cell(row, "What it says", describe(c));
    cell(row, "State", c.status === "active" ? "in force" : "withdrawn").className = "state";
    const td = cell(row, "", "");
    if (c.status === "active") {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Withdraw";
      b.setAttribute("aria-label", "Withdraw: " + describe(c));
      b.onclick = () => withdraw(c).catch(fail);
      td.appendChild(b);
    }
    body.appendChild(row);
  }
  if (!list.length) {
    const row = document.createElement("tr");
    cell(row, "", "You have not given or refused any consent here.").colSpan = 4;
    body.appendChild(row);
  }
}
function newConsent(provision) {
  return {
    resourceType: "Consent",
    status: "active",
    scope: { coding: [{ system: "http://terminology.hl7.org/CodeSystem/consentscope", code: "patient-privacy" }] },
    category: [{ coding: [{ system: "http://loinc.org", code: "59284-0" }] }],
    patient: { reference: "Patient/" + patient },
    dateTime: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    policyRule: { coding: [{ system: ACT_CODE, code: provision.type === "permit" ? "OPTIN" : "OPTOUT" }] },
    provision,
  };
}
async function consentChanged(message) {
  await loadConsents();
  say(message, "consented");
}
$("grant-sensitive").onclick = async () => {
  try {
    await fhir("POST", "/fhir/Consent", newConsent({
      type: "permit",
      purpose: [{ system: ACT_REASON, code: "TREAT" }],
      securityLabel: SENSITIVE.map((code) => ({ system: ACT_CODE, code })),
    }));
    await consentChanged("Your care team may now see your sensitive records for your treatment.");
  } catch (e) { fail(e); }
};
$("deny-payment").onclick = async () => {
  try {
    await fhir("POST", "/fhir/Consent", newConsent({
      type: "deny",
      purpose: [{ system: ACT_REASON, code: "HPAYMT" }],
    }));
    await consentChanged("Your record will not be shared with health plans or for payment.");
  } catch (e) { fail(e); }
};
$("object-research").onclick = async () => {
  try {
    await fhir("POST", "/fhir/Patient/" + encodeURIComponent(patient) + "/$object-to-research", {});
    await consentChanged("Your objection is recorded: your record will not be used for research.");
  } catch (e) { fail(e); }
};
async function withdraw(c) {
  const changed = Object.assign({}, c, { status: "inactive" });
  delete changed.meta;
  await fhir("PUT", "/fhir/Consent/" + encodeURIComponent(c.id), changed);
  await consentChanged("Withdrawn.");
}

// --- My data ----------------------------------------------------------------------------------
$("download").onclick = async () => {
  try {
    say("Preparing your file; this can take a minute.");
    const r = await fetch("/fhir/Patient/" + encodeURIComponent(patient) + "/$export-my-data",
      { headers: { Authorization: "Bearer " + session } });
    if (!r.ok) {
      const json = await r.json().catch(() => ({}));
      const issue = json.issue && json.issue[0];
      throw new Error((issue && issue.diagnostics) || "the server answered " + r.status);
    }
    const blob = await r.blob();
    const link = $("download-link");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
    link.click();
    say("Your file is downloaded (my-health-data.json).", "downloaded");
    await Promise.all([loadAccess(false), loadRequests()]);
  } catch (e) { fail(e); }
};

// --- Ask the hospital ---------------------------------------------------------------------------
const RIGHTS = {
  erasure: "erase my record", restriction: "stop using my record", rectification: "correct my record",
  objection: "objection", access: "copy of my data", portability: "copy of my data",
};
const STATES = { open: "waiting for an answer", answered: "answered", refused: "refused" };
async function loadRequests() {
  const mine = await call("GET", "/portal/requests");
  const banner = $("restricted");
  if (mine.restriction) {
    banner.textContent = "Use of your record is stopped since " + when(mine.restriction.since)
      + ": it is only stored. Only you can see it (and doctors in an emergency, which is reviewed).";
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
  const body = $("request-list").tBodies[0];
  body.replaceChildren();
  for (const r of mine.requests) {
    const row = document.createElement("tr");
    row.dataset.id = r.id;
    cell(row, "Sent", when(r.opened));
    cell(row, "Request", RIGHTS[r.right] || r.right);
    cell(row, "Answer due", when(r.due));
    let state = STATES[r.status] || r.status;
    if (r.answer && r.answer.note) state += ": " + r.answer.note;
    cell(row, "State", state).className = "state";
    body.appendChild(row);
  }
}
$("request-form").onsubmit = async (ev) => {
  ev.preventDefault();
  try {
    const body = { right: $("right").value };
    if ($("request-note").value.trim()) body.note = $("request-note").value;
    const r = await call("POST", "/portal/requests", body);
    $("request-note").value = "";
    await loadRequests();
    say("Your request is sent. The hospital must answer by " + when(r.due) + ".", "requested");
  } catch (e) { fail(e); }
};
