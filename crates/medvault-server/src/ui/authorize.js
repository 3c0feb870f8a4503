"use strict";
// The consent page of the authorization code flow (helpers in common.js). The session token
// stays in memory only.
let session = null;
const query = window.location.search;

function fail(message) {
  $("status").textContent = "Error: " + message;
  $("status").dataset.error = message;
}
async function call(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (session) headers.Authorization = "Bearer " + session;
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const json = await r.json().catch(() => ({}));
  return { ok: r.ok, json };
}

(async () => {
  const { ok, json } = await call("GET", "/auth/authorize/check" + query);
  if (!ok) {
    // Errors the app may hear about go back to it; the others stay here.
    if (json.redirect) { window.location.assign(json.redirect); return; }
    fail(json.error_description || "this request cannot be approved");
    return;
  }
  $("ask").textContent = json.client_name + " asks to access, on your behalf:";
  for (const s of json.scopes.split(" ")) {
    const li = document.createElement("li");
    li.textContent = s;
    $("scopes").appendChild(li);
  }
  $("signin").hidden = false;
})();

function signedIn(json) {
  if (json.aal < 2) { fail("approving an app needs a second factor"); return; }
  session = json.session;
  $("signin").hidden = true;
  $("decide").hidden = false;
  $("status").textContent = "Signed in as " + json.user_id + ".";
  $("status").dataset.signedIn = "yes";
}

$("login").onclick = async () => {
  const body = { username: $("username").value, password: $("password").value };
  if ($("totp").value) body.totp = $("totp").value;
  try { signedIn(await postJson("/auth/login", body)); } catch (e) { fail(e.message); }
};

$("passkey-login").onclick = async () => {
  try { signedIn(await passkeyLogin($("username").value)); } catch (e) { fail(e.message); }
};

async function decide(approve) {
  const { ok, json } = await call("POST", "/auth/authorize/decide", { query, approve });
  if (!ok) { fail(json.error_description || (json.issue && json.issue[0].diagnostics) || "refused"); return; }
  window.location.assign(json.redirect);
}
$("approve").onclick = () => decide(true);
$("deny").onclick = () => decide(false);
