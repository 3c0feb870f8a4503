"use strict";
// Shared by the sign-in and consent pages: base64url, JSON calls, and the WebAuthn ceremonies.
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
// POSTs JSON (with the session token when `token` is given); throws with the server's message.
async function postJson(path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const text = await r.text();
  const json = text ? JSON.parse(text) : {};
  if (!r.ok) {
    const issue = json.issue && json.issue[0];
    throw new Error((issue && issue.diagnostics) || json.error_description || r.status);
  }
  return json;
}
// Signs in with a passkey; resolves to the login answer (session, user_id, role, aal).
async function passkeyLogin(username) {
  const { ceremony, options } = await postJson("/auth/passkey/login/start", { username });
  const pk = options.publicKey;
  pk.challenge = b64uToBuf(pk.challenge);
  (pk.allowCredentials || []).forEach((c) => { c.id = b64uToBuf(c.id); });
  const cred = await navigator.credentials.get({ publicKey: pk });
  return postJson("/auth/passkey/login/finish", { ceremony, credential: credentialJson(cred, {
    authenticatorData: bufToB64u(cred.response.authenticatorData),
    clientDataJSON: bufToB64u(cred.response.clientDataJSON),
    signature: bufToB64u(cred.response.signature),
    userHandle: cred.response.userHandle ? bufToB64u(cred.response.userHandle) : null,
  }) });
}
// A WebAuthn credential as the server reads it: binary fields in base64url; `response` holds
// the ceremony's own response fields.
function credentialJson(cred, response) {
  return {
    id: cred.id, rawId: bufToB64u(cred.rawId), type: cred.type,
    extensions: cred.getClientExtensionResults(), response,
  };
}
