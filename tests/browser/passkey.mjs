// Passkeys and app approval end to end in a real browser: Debian's Chromium (playwright-core, no
// download) with the DevTools virtual authenticator, against the node's own sign-in and consent
// pages on localhost.
//
// Env: MEDVAULT_ORIGIN (http://localhost:PORT), MEDVAULT_USER, MEDVAULT_USER_PASSWORD,
// MEDVAULT_APP_CLIENT (a registered app with redirect URI http://localhost:9999/callback).
// Prints one line per check; exits non-zero on the first failure.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { chromium } from "playwright-core";

const origin = process.env.MEDVAULT_ORIGIN;
const user = process.env.MEDVAULT_USER;
const password = process.env.MEDVAULT_USER_PASSWORD;
let checks = 0;
const ok = (what) => { checks += 1; console.log(`ok ${checks} - ${what}`); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2", transport: "internal", hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });
  const status = () => page.locator("#status");

  await page.goto(`${origin}/auth/ui`);
  const csp = (await page.request.get(`${origin}/auth/ui`)).headers()["content-security-policy"];
  assert.match(csp, /script-src 'self'/);
  ok("the sign-in page is served with a strict content security policy");

  // Password only: an enrollment session (AAL1), which may add a passkey.
  await page.fill("#username", user);
  await page.fill("#password", password);
  await page.click("#login");
  await page.waitForFunction(() => document.getElementById("status").dataset.aal === "1");
  ok("password login gives an AAL1 session");
  const blocked = await page.evaluate(async () =>
    (await fetch("/fhir/Patient?_count=1", { headers: { Authorization: "Bearer " + session.session } })).status);
  assert.equal(blocked, 403);
  ok("an AAL1 session reaches no FHIR data");

  await page.click("#passkey-register");
  await page.waitForFunction(() => {
    const s = document.getElementById("status").dataset;
    return s.registered === "yes" || s.error;
  });
  assert.equal(await status().getAttribute("data-registered"), "yes", await status().textContent());
  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  assert.equal(credentials.length, 1);
  assert.equal(credentials[0].rpId, new URL(origin).hostname);
  ok("a passkey is registered in the browser's authenticator, bound to this origin");

  await page.click("#logout");
  await page.waitForFunction(() => document.getElementById("status").textContent === "Signed out.");
  // Now that the account has a passkey, the password alone no longer signs in.
  await page.click("#login");
  await page.waitForFunction(() => document.getElementById("status").dataset.error);
  assert.match(await status().getAttribute("data-error"), /a second factor is required/);
  ok("with a passkey registered, the password alone is refused");
  await page.click("#passkey-login");
  await page.waitForFunction(() => {
    const s = document.getElementById("status").dataset;
    return s.aal === "3" || (s.error && !/second factor/.test(s.error));
  });
  assert.equal(await status().getAttribute("data-aal"), "3", await status().textContent());
  ok("passkey login (user verified) gives an AAL3 session");
  const allowed = await page.evaluate(async () =>
    (await fetch("/fhir/Patient?_count=1", { headers: { Authorization: "Bearer " + session.session } })).status);
  assert.equal(allowed, 200);
  ok("the passkey session reads FHIR data");
  const { credentials: after } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  assert.ok(after[0].signCount >= 1);
  ok("the authenticator's signature counter advanced");

  // Without user verification (no PIN/biometric), the server refuses the login.
  await cdp.send("WebAuthn.setUserVerified", { authenticatorId, isUserVerified: false });
  await page.click("#logout");
  await page.waitForFunction(() => document.getElementById("status").textContent === "Signed out.");
  await page.click("#passkey-login");
  await page.waitForFunction(() => {
    const s = document.getElementById("status").dataset;
    return s.error || s.aal === "3";
  }, null, { timeout: 30000 });
  const refused = await status().getAttribute("data-error");
  assert.ok(refused, "a login without user verification must fail: " + (await status().textContent()));
  ok("a passkey login without user verification is refused");

  // An app asks for access (authorization code + PKCE); the person signs in with the passkey on
  // the node's consent page and approves; the app exchanges the code.
  await cdp.send("WebAuthn.setUserVerified", { authenticatorId, isUserVerified: true });
  const client = process.env.MEDVAULT_APP_CLIENT;
  const redirect = "http://localhost:9999/callback";
  const verifier = crypto.randomBytes(48).toString("base64url");
  const challenge = crypto.createHash("sha256").update(verifier).digest("base64url");
  let callback = null;
  await page.route("http://localhost:9999/**", (route) => {
    callback = route.request().url();
    return route.fulfill({ body: "the app" });
  });
  const authorize = new URL(`${origin}/auth/authorize`);
  for (const [k, v] of Object.entries({
    response_type: "code", client_id: client, redirect_uri: redirect, state: "s-42",
    scope: "user/Patient.rs user/Encounter.rs offline_access", aud: `${origin}/fhir`,
    code_challenge: challenge, code_challenge_method: "S256",
  })) authorize.searchParams.set(k, v);
  await page.goto(authorize.href);
  await page.waitForFunction(() => !document.getElementById("signin").hidden);
  const asked = await page.locator("#scopes").textContent();
  assert.ok(asked.includes("user/Patient.rs") && !asked.includes("Encounter"), asked);
  ok("the consent page shows the app and only the scopes it may have");
  await page.fill("#username", user);
  await page.click("#passkey-login");
  await page.waitForFunction(() => {
    const s = document.getElementById("status").dataset;
    return s.signedIn === "yes" || s.error;
  });
  assert.equal(await status().getAttribute("data-signed-in"), "yes", await status().textContent());
  await page.click("#approve");
  await page.waitForFunction(() => window.location.href.startsWith("http://localhost:9999/"));
  const back = new URL(callback);
  assert.equal(back.searchParams.get("state"), "s-42");
  const code = back.searchParams.get("code");
  assert.ok(code && code.startsWith("mvc_"));
  ok("approval sends a code and the state back to the app");
  const token = await fetch(`${origin}/auth/token`, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code", code, redirect_uri: redirect, client_id: client,
      code_verifier: verifier,
    }),
  }).then((r) => r.json());
  assert.equal(token.scope, "user/Patient.rs offline_access", JSON.stringify(token));
  assert.ok(token.refresh_token);
  const read = await fetch(`${origin}/fhir/Patient?_count=1`, {
    headers: { Authorization: `Bearer ${token.access_token}` },
  });
  assert.equal(read.status, 200);
  ok("the app's token (PKCE exchange) reads FHIR data within its scopes");
} finally {
  await browser.close();
}
console.log(`${checks} browser checks passed`);
if (checks !== 12) process.exit(1);
