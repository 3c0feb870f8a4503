// The privacy officer's page end to end in a real browser (Debian's Chromium, playwright-core):
// a clinician snoops on a celebrity and an admin token deletes records in bulk on a live node;
// the officer signs in on /privacy/ui, opens both alerts by keyboard, reads the reasons and
// timelines, records a verdict and undoes the responses that hold the token.
//
// Env: MEDVAULT_ORIGIN, MEDVAULT_BIN (the medvault binary), MEDVAULT_DATA_DIR,
// MEDVAULT_PASSWORD (both people's), MEDVAULT_OFFICER, MEDVAULT_DOCTOR, MEDVAULT_ADMIN_TOKEN,
// MEDVAULT_WIPER_TOKEN. Prints one line per check; exits non-zero on the first failure.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";
import { call, checked, enroll as enrollAs, nowStep, ok, origin, totp, waitFor } from "./lib.mjs";

const password = process.env.MEDVAULT_PASSWORD;
const admin = process.env.MEDVAULT_ADMIN_TOKEN;
const wiper = process.env.MEDVAULT_WIPER_TOKEN;
const enroll = (username) => enrollAs(username, password);

// The node's state: a practitioner for the doctor, a celebrity sharing the doctor's family
// name, a patient with results that the stolen admin token deletes.
const practitioner = (await call("POST", "/fhir/Practitioner", admin,
  { resourceType: "Practitioner", name: [{ family: "Practitioner", given: ["Doc"] }] }, "application/fhir+json")).body.id;
execFileSync(process.env.MEDVAULT_BIN, ["user", "link", process.env.MEDVAULT_DOCTOR, "--practitioner", practitioner,
  "--data-dir", process.env.MEDVAULT_DATA_DIR]);
const star = (await call("POST", "/fhir/Patient", admin, {
  resourceType: "Patient",
  meta: { security: [{ system: "http://terminology.hl7.org/CodeSystem/v3-ActCode", code: "CELEB" }] },
  name: [{ family: "Practitioner", given: ["Famous"] }],
}, "application/fhir+json")).body.id;
const ward = (await call("POST", "/fhir/Patient", admin,
  { resourceType: "Patient", name: [{ family: "Ward", given: ["Wendy"] }] }, "application/fhir+json")).body.id;
const results = [];
for (let i = 0; i < 30; i += 1) {
  results.push((await call("POST", "/fhir/Observation", admin, {
    resourceType: "Observation", status: "final",
    code: { coding: [{ system: "http://loinc.org", code: "8867-4" }] },
    subject: { reference: `Patient/${ward}` }, effectiveDateTime: `2026-11-01T10:${String(i).padStart(2, "0")}:00Z`,
  }, "application/fhir+json")).body.id);
}
const officer = await enroll(process.env.MEDVAULT_OFFICER);
const doctor = await enroll(process.env.MEDVAULT_DOCTOR);
// The officer's sign-in on the page uses the next step's code (this one is spent).
const officerCode = totp(officer.secret, nowStep() + 1);

await call("GET", `/fhir/Patient/${star}`, doctor.session);
let refused = 0;
for (const [i, id] of results.entries()) {
  const r = await call("DELETE", `/fhir/Observation/${id}`, wiper);
  if (r.status === 401) { refused += 1; break; }
  assert.ok(r.status === 200 || r.status === 204, JSON.stringify(r.body));
  // After the 25th the node has a moment to act (it scores every 200 ms).
  if (i >= 24) await new Promise((res) => setTimeout(res, 150));
}
assert.equal(refused, 1, "the wiping token was stopped");
const queue = await call("GET", "/admin/alerts", doctor.session);
assert.equal(queue.status, 403);
ok("a clinician's session cannot read the queue; the wiping token was stopped mid-way");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  const status = () => page.locator("#status");
  const served = await page.request.get(`${origin}/privacy/ui`);
  assert.match(served.headers()["content-security-policy"], /script-src 'self'/);
  assert.equal(served.headers()["x-frame-options"], "DENY");
  ok("the privacy page is served with a strict content security policy and no framing");

  await page.goto(`${origin}/privacy/ui`);
  await page.fill("#username", process.env.MEDVAULT_OFFICER);
  await page.fill("#password", password);
  await page.fill("#totp", officerCode);
  await page.click("#login");
  await page.waitForFunction(() => document.getElementById("status").dataset.signedIn === "yes"
    || document.getElementById("status").dataset.error);
  assert.equal(await status().getAttribute("data-signed-in"), "yes", await status().textContent());
  ok("the privacy officer signs in with a password and an authenticator code");

  // Both alerts arrive (Sentinel scores off the request path): refresh until they are listed.
  const rowOf = (kind, text) => page.locator(`#alerts tbody tr[data-kind="${kind}"]`, { hasText: text });
  await waitFor("both alerts on the page", async () => {
    await page.click("#refresh");
    await page.waitForTimeout(200);
    return (await rowOf("sentinel", star).count()) > 0 && (await rowOf("attack", "mass-deletion").count()) > 0;
  });
  assert.ok(!(await page.locator("body").textContent()).includes("Famous"), "no names on the page");
  ok("the queue lists the insider alert for the celebrity and the mass deletion, with no names");

  // By keyboard: focus the insider alert's Open button and press Enter.
  await rowOf("sentinel", star).first().locator("button").focus();
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => !document.getElementById("detail").hidden);
  const focused = await page.evaluate(() => document.activeElement.id);
  assert.equal(focused, "detail-title");
  ok("an alert opens from the keyboard and focus moves to its heading");

  const reasons = await page.locator("#reasons tbody").textContent();
  assert.match(reasons, /vip/);
  assert.match(reasons, /same_family/);
  const timeline = await page.locator("#patient-timeline tbody").textContent();
  assert.match(timeline, /read/);
  ok("the detail gives the reasons (vip, same family) and the patient's access timeline");

  await page.check("input[name=verdict][value=confirmed]");
  await page.fill("#reason", "no care relationship; the doctor confirmed curiosity");
  await page.click("#judge");
  await page.waitForFunction(() => document.getElementById("status").dataset.judged
    || document.getElementById("status").dataset.error);
  assert.ok(await status().getAttribute("data-judged"), await status().textContent());
  assert.match(await rowOf("sentinel", star).first().locator(".state").textContent(), /confirmed/);
  ok("a verdict with its reason is recorded and shown in the queue");

  // The mass deletion: what the node did, undone from the page.
  await page.selectOption("#kind", "attack");
  await waitFor("only attacks listed", async () =>
    (await page.locator("#alerts tbody tr").count()) > 0
      && (await page.locator('#alerts tbody tr[data-kind="sentinel"]').count()) === 0);
  await rowOf("attack", "mass-deletion").first().locator("button").click();
  await page.waitForFunction(() => document.querySelectorAll("#responses tbody tr").length >= 2);
  const responses = await page.locator("#responses tbody").textContent();
  assert.match(responses, /lock/);
  assert.match(responses, /end-sessions/);
  assert.match(responses, /in force/);
  ok("the attack's detail lists the lock and the ended sessions, in force");

  assert.equal((await call("GET", `/fhir/Patient/${ward}`, wiper)).status, 401);
  for (const action of ["lock", "end-sessions"]) {
    const before = await status().getAttribute("data-undone");
    await page.getByRole("button", { name: new RegExp(`^Undo ${action} `) }).click();
    await page.waitForFunction((b) => {
      const s = document.getElementById("status").dataset;
      return (s.undone && s.undone !== b) || s.error;
    }, before);
    assert.ok(!(await status().getAttribute("data-error")), await status().textContent());
  }
  assert.match(await page.locator("#responses tbody").textContent(), /undone by usr_/);
  assert.equal((await call("GET", `/fhir/Patient/${ward}`, wiper)).status, 200);
  ok("undoing both responses from the page frees the token, and the page says who undid them");
} finally {
  await browser.close();
}
console.log(`${checked()} privacy page checks passed`);
if (checked() !== 9) process.exit(1);
