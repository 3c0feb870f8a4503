"use strict";
// The sign-in page (helpers in common.js).
// The session token lives only in this page's memory: closing the tab forgets it.
let session = null;
const post = (path, body) => postJson(path, body, session && session.session);

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
    await post("/auth/passkey/register/finish", { ceremony, credential: credentialJson(cred, {
      attestationObject: bufToB64u(cred.response.attestationObject),
      clientDataJSON: bufToB64u(cred.response.clientDataJSON),
      transports: cred.response.getTransports ? cred.response.getTransports() : [],
    }) });
    $("status").textContent = "Passkey added.";
    $("status").dataset.registered = "yes";
  } catch (e) { fail(e); }
};

$("passkey-login").onclick = async () => {
  try {
    session = null;
    delete $("status").dataset.error;
    signedIn(await passkeyLogin($("username").value));
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
