// Helpers shared by the browser tests: RFC 6238 codes, JSON calls to the node, TOTP enrolment,
// waiting for a condition, and the checks' counter.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import crypto from "node:crypto";

export const origin = process.env.MEDVAULT_ORIGIN;

let checks = 0;
export const ok = (what) => { checks += 1; console.log(`ok ${checks} - ${what}`); };
export const checked = () => checks;

function base32(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of text.replace(/=+$/, "")) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const out = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) out.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(out);
}
// The RFC 6238 code (HMAC-SHA1, 30-second steps, 6 digits) of `secret` at `step`.
export function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = crypto.createHmac("sha1", base32(secret)).update(counter).digest();
  const at = mac[mac.length - 1] & 0xf;
  const n = (mac.readUInt32BE(at) & 0x7fffffff) % 1_000_000;
  return String(n).padStart(6, "0");
}
export const nowStep = () => Math.floor(Date.now() / 30_000);

// One call to the node: `{status, body}` (the body parsed as JSON).
export async function call(method, path, token, body, type = "application/json", headers = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  if (body !== undefined) h["Content-Type"] = type;
  const r = await fetch(`${origin}${path}`, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}
// The host's one-time enrolment code for `username` (admins, auditors and privacy officers
// need one for their first second factor), or none for other accounts.
function enrolmentCode(username) {
  const { MEDVAULT_BIN: bin, MEDVAULT_DATA_DIR: dir } = process.env;
  if (!bin || !dir) return undefined;
  const r = spawnSync(bin, ["user", "enrolment-code", username, "--data-dir", dir], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}
// Enrols TOTP for `username` (password `password`) and signs in with it: the secret and the
// session.
export async function enroll(username, password) {
  const first = await call("POST", "/auth/login", null, { username, password });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  const code = enrolmentCode(username);
  const enrolled = await call("POST", "/auth/totp/enroll", first.body.session, code ? { enrolment_code: code } : {});
  assert.equal(enrolled.status, 200, JSON.stringify(enrolled.body));
  const secret = enrolled.body.secret;
  const confirmed = await call("POST", "/auth/totp/confirm", first.body.session,
    code ? { code: totp(secret, nowStep()), enrolment_code: code } : { code: totp(secret, nowStep()) });
  assert.equal(confirmed.status, 200, JSON.stringify(confirmed.body));
  return { secret, session: first.body.session };
}
export async function waitFor(what, probe, ms = 15_000) {
  const until = Date.now() + ms;
  for (;;) {
    const got = await probe();
    if (got) return got;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
