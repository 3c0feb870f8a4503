"use strict";
// The session token lives only in this page's memory: closing the tab forgets it.
let session = null;
const $ = (id) => document.getElementById(id);

function b64uToBuf(s) {
  const pad = "=".repeat((4 - (s.length % 4)) % 4);
  const bin = atob((s + pad).replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0)).buffer;
}
function bufToB64u(b) {
  let bin = "";
  for (const x of new Uint8Array(b)) bin += String.fromCharCode(x);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (session) headers.Authorization = "Bearer " + session.session;
  const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const text = await r.text();
  const json = text ? JSON.parse(text) : {};
  if (!r.ok) {
    const issue = json.issue && json.issue[0];
    throw new Error((issue && issue.diagnostics) || json.error_description || r.status);
  }
  return json;
}
function signedIn(s) {
  session = s;
  $("status").textContent = "Signed in as " + s.user_id + " (" + s.role + ", AAL" + s.aal + ")";
  $("status").dataset.aal = String(s.aal);
  $("passkey-register").hidden = false;
  $("logout").hidden = false;
}
function fail(e) {
  $("status").textContent = "Error: " + e.message;
  $("status").dataset.error = e.message;
}

$("login").onclick = async () => {
  try {
    const body = { username: $("username").value, password: $("password").value };
    if ($("totp").value) body.totp = $("totp").value;
    signedIn(await post("/auth/login", body));
  } catch (e) { fail(e); }
};

$("passkey-register").onclick = async () => {
  try {
    const { ceremony, options } = await post("/auth/passkey/register/start");
    const pk = options.publicKey;
    pk.challenge = b64uToBuf(pk.challenge);
    pk.user.id = b64uToBuf(pk.user.id);
    (pk.excludeCredentials || []).forEach((c) => { c.id = b64uToBuf(c.id); });
    const cred = await navigator.credentials.create({ publicKey: pk });
    await post("/auth/passkey/register/finish", { ceremony, credential: {
      id: cred.id, rawId: bufToB64u(cred.rawId), type: cred.type,
      extensions: cred.getClientExtensionResults(),
      response: {
        attestationObject: bufToB64u(cred.response.attestationObject),
        clientDataJSON: bufToB64u(cred.response.clientDataJSON),
        transports: cred.response.getTransports ? cred.response.getTransports() : [],
      },
    } });
    $("status").textContent = "Passkey added.";
    $("status").dataset.registered = "yes";
  } catch (e) { fail(e); }
};

$("passkey-login").onclick = async () => {
  try {
    session = null;
    delete $("status").dataset.error;
    const { ceremony, options } = await post("/auth/passkey/login/start", { username: $("username").value });
    const pk = options.publicKey;
    pk.challenge = b64uToBuf(pk.challenge);
    (pk.allowCredentials || []).forEach((c) => { c.id = b64uToBuf(c.id); });
    const cred = await navigator.credentials.get({ publicKey: pk });
    signedIn(await post("/auth/passkey/login/finish", { ceremony, credential: {
      id: cred.id, rawId: bufToB64u(cred.rawId), type: cred.type,
      extensions: cred.getClientExtensionResults(),
      response: {
        authenticatorData: bufToB64u(cred.response.authenticatorData),
        clientDataJSON: bufToB64u(cred.response.clientDataJSON),
        signature: bufToB64u(cred.response.signature),
        userHandle: cred.response.userHandle ? bufToB64u(cred.response.userHandle) : null,
      },
    } }));
  } catch (e) { fail(e); }
};

$("logout").onclick = async () => {
  try { await post("/auth/logout"); } catch (e) { /* already ended */ }
  session = null;
  for (const k of Object.keys($("status").dataset)) delete $("status").dataset[k];
  $("status").textContent = "Signed out.";
  $("passkey-register").hidden = true;
  $("logout").hidden = true;
};
