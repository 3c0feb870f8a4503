// The patient portal end to end in a real browser (Debian's Chromium, playwright-core) on a
// phone-sized viewport: a patient signs in by keyboard with a password and an authenticator
// code, reads who accessed their record and why, objects to research, grants and withdraws a
// consent, downloads their signed data, asks for erasure, and sees a restriction of processing
// staff placed; the page is checked for labels, keyboard use, contrast and fit, and a
// screenshot is kept in the test artifacts.
//
// Env: MEDVAULT_ORIGIN, MEDVAULT_BIN (the medvault binary), MEDVAULT_DATA_DIR, MEDVAULT_PASSWORD,
// MEDVAULT_ADMIN_TOKEN, MEDVAULT_DOCTOR (a clinician account with MEDVAULT_PASSWORD),
// MEDVAULT_ARTIFACTS (where the screenshots go). Prints one line per check; exits non-zero on
// the first failure.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { call, checked, enroll, nowStep, ok, origin, totp, waitFor } from "./lib.mjs";

const password = process.env.MEDVAULT_PASSWORD;
const admin = process.env.MEDVAULT_ADMIN_TOKEN;
const artifacts = process.env.MEDVAULT_ARTIFACTS || "target/browser-artifacts";
fs.mkdirSync(artifacts, { recursive: true });
const fhirJson = "application/fhir+json";

// The node's state: the patient (and someone else, whose id must never show), their account,
// a result, and a clinician on their care team who reads the record for treatment.
const patient = (await call("POST", "/fhir/Patient", admin,
  { resourceType: "Patient", name: [{ family: "Portalova", given: ["Petra"] }] }, fhirJson)).body.id;
const stranger = (await call("POST", "/fhir/Patient", admin,
  { resourceType: "Patient", name: [{ family: "Elsewhere", given: ["Sam"] }] }, fhirJson)).body.id;
await call("POST", "/fhir/Observation", admin, {
  resourceType: "Observation", status: "final",
  code: { coding: [{ system: "http://loinc.org", code: "8867-4" }] },
  subject: { reference: `Patient/${patient}` }, valueQuantity: { value: 64, unit: "/min" },
}, fhirJson);
const bin = process.env.MEDVAULT_BIN;
const dataDir = ["--data-dir", process.env.MEDVAULT_DATA_DIR];
execFileSync(bin, ["user", "create", "--username", "petra.p", "--role", "patient", "--patient", patient, ...dataDir],
  { env: { ...process.env, MEDVAULT_NEW_PASSWORD: password } });
const practitioner = (await call("POST", "/fhir/Practitioner", admin,
  { resourceType: "Practitioner", name: [{ family: "Carer", given: ["Dana"] }] }, fhirJson)).body.id;
execFileSync(bin, ["user", "link", process.env.MEDVAULT_DOCTOR, "--practitioner", practitioner, ...dataDir]);
await call("POST", "/fhir/CareTeam", admin, {
  resourceType: "CareTeam", status: "active", subject: { reference: `Patient/${patient}` },
  participant: [{ member: { reference: `Practitioner/${practitioner}` } }],
}, fhirJson);
const doctor = await enroll(process.env.MEDVAULT_DOCTOR, password);
const read = await call("GET", `/fhir/Patient/${patient}`, doctor.session, undefined, undefined,
  { "X-Purpose-Of-Use": "TREAT" });
assert.equal(read.status, 200, JSON.stringify(read.body));
const me = await enroll("petra.p", password);
await call("POST", "/auth/logout", me.session, {});

// WCAG 2.1 contrast ratio of two CSS rgb() colours.
function luminance(rgb) {
  const [r, g, b] = rgb.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map((v) => {
    const c = v / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
function contrast(a, b) {
  const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // A phone: 390 × 844 CSS pixels, touch, a phone's pixel ratio.
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 3, isMobile: true, hasTouch: true,
    acceptDownloads: true,
  });
  const page = await context.newPage();
  const status = page.locator("#status");
  const served = await page.request.get(`${origin}/portal/ui`);
  assert.match(served.headers()["content-security-policy"], /script-src 'self'/);
  assert.equal(served.headers()["x-frame-options"], "DENY");
  ok("the portal is served with a strict content security policy and no framing");

  // Sign in by keyboard alone: type, Tab from field to field, Enter on the button.
  await page.goto(`${origin}/portal/ui`);
  await page.focus("#username");
  await page.keyboard.type("petra.p");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.id), "password");
  await page.keyboard.type(password);
  await page.keyboard.press("Tab");
  await page.keyboard.type(totp(me.secret, nowStep() + 1));
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.id), "login");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.getElementById("status").dataset.ready
    || document.getElementById("status").dataset.error);
  assert.ok(!(await status.getAttribute("data-error")), await status.textContent());
  ok("the patient signs in by keyboard with a password and an authenticator code");

  // Who looked at my record: the clinician's read, for treatment, allowed.
  const access = page.locator("#access tbody");
  const rows = await access.locator("tr").allTextContents();
  assert.ok(rows.some((r) => /clinician account usr_/.test(r) && /read your record/.test(r)
    && /treatment/.test(r) && /allowed/.test(r)), rows.join("\n"));
  assert.ok(!(await page.locator("body").textContent()).includes(stranger), "no other patient");
  ok("the accounting of disclosures names the clinician's read, its purpose and outcome, and nobody else's record");

  // Object to research; grant sensitive records to the care team; both listed in force.
  await page.click("#object-research");
  await page.waitForFunction(() => document.getElementById("status").dataset.consented
    || document.getElementById("status").dataset.error);
  assert.ok(!(await status.getAttribute("data-error")), await status.textContent());
  await page.click("#grant-sensitive");
  await page.waitForFunction(() => document.querySelectorAll("#consent-list tbody tr[data-id]").length === 2
    || document.getElementById("status").dataset.error);
  const consents = await page.locator("#consent-list tbody").textContent();
  assert.match(consents, /Does not allow anyone to use my record for research or clinical trials/);
  assert.match(consents, /Allows my care team to use my sensitive records for treatment/);
  const research = await call("GET", `/fhir/Consent?patient=Patient/${patient}&status=active`, admin,
    undefined, undefined, { "X-Purpose-Of-Use": "HOPERAT" });
  assert.equal(research.body.total, 2, JSON.stringify(research.body));
  ok("objecting to research and granting sensitive records to the care team are stored as Consents in force");

  // Withdraw the grant by keyboard.
  const withdraw = page.getByRole("button", { name: /^Withdraw: Allows my care team/ });
  await withdraw.focus();
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => [...document.querySelectorAll("#consent-list .state")]
    .some((td) => td.textContent === "withdrawn") || document.getElementById("status").dataset.error);
  assert.ok(!(await status.getAttribute("data-error")), await status.textContent());
  const after = await call("GET", `/fhir/Consent?patient=Patient/${patient}&status=active`, admin,
    undefined, undefined, { "X-Purpose-Of-Use": "HOPERAT" });
  assert.equal(after.body.total, 1);
  ok("a consent is withdrawn from the keyboard and the node holds it inactive");

  // Download my data: the signed export, as a file.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  assert.equal(download.suggestedFilename(), "my-health-data.json");
  const file = path.join(artifacts, "portal-export.json");
  await download.saveAs(file);
  const exported = JSON.parse(fs.readFileSync(file, "utf8"));
  assert.equal(exported.format, "medvault-subject-export/1");
  assert.equal(exported.patient, `Patient/${patient}`);
  assert.ok(exported.counts.resources >= 2, JSON.stringify(exported.counts));
  const verified = execFileSync(bin, ["subject", "verify", file, ...dataDir]).toString();
  assert.match(verified, /verified/i);
  ok("the download is the node's signed export of the patient's record, and it verifies");

  // Ask for erasure.
  await page.selectOption("#right", "erasure");
  await page.fill("#request-note", "I moved abroad");
  await page.click("#send-request");
  await page.waitForFunction(() => document.getElementById("status").dataset.requested
    || document.getElementById("status").dataset.error);
  assert.ok(!(await status.getAttribute("data-error")), await status.textContent());
  const requests = await page.locator("#request-list tbody").textContent();
  assert.match(requests, /erase my record/);
  assert.match(requests, /waiting for an answer/);
  const register = await call("GET", "/admin/subjects/requests", admin);
  assert.ok(register.body.requests.some((r) => r.right === "erasure" && r.patient === `Patient/${patient}`
    && r.opened_by.startsWith("usr_")), JSON.stringify(register.body));
  ok("an erasure request sent from the portal is in the register with its one-month deadline");

  // Staff restrict processing; the patient sees it stated plainly.
  const placed = await call("POST", `/admin/patients/${patient}/restrict`, admin, { reason: "accuracy contested" });
  assert.equal(placed.status, 201, JSON.stringify(placed.body));
  await page.selectOption("#right", "rectification");
  await page.click("#send-request");
  await waitFor("the restriction banner", async () => page.locator("#restricted").isVisible());
  assert.match(await page.locator("#restricted").textContent(), /only stored/);
  const blocked = await call("GET", `/fhir/Patient/${patient}`, doctor.session, undefined, undefined,
    { "X-Purpose-Of-Use": "TREAT" });
  assert.equal(blocked.status, 404);
  ok("a restriction of processing placed by staff is shown to the patient and stops the clinician");

  // Accessibility: names for every control, contrast, and nothing wider than the phone.
  const unnamed = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea, button")]
    .filter((el) => !el.closest("[hidden]"))
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.textContent.trim())
    .map((el) => el.id || el.outerHTML));
  assert.deepEqual(unnamed, []);
  const colours = await page.evaluate(() => {
    const bg = getComputedStyle(document.body).backgroundColor;
    const pick = (sel) => [...document.querySelectorAll(sel)].filter((e) => e.offsetParent)
      .map((e) => [sel, getComputedStyle(e).color, getComputedStyle(e).backgroundColor]);
    return { bg, items: [...pick("p"), ...pick("td"), ...pick("th"), ...pick(".note"), ...pick("#restricted"), ...pick("label")] };
  });
  for (const [sel, fg, bg] of colours.items) {
    const back = bg === "rgba(0, 0, 0, 0)" ? colours.bg : bg;
    assert.ok(contrast(fg, back) >= 4.5, `${sel}: ${fg} on ${back} is ${contrast(fg, back).toFixed(2)}:1`);
  }
  const fits = await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
  assert.ok(fits, "no sideways scrolling on a phone");
  const headings = await page.locator("h1, h2:visible").allTextContents();
  assert.ok(headings.includes("Who looked at my record") && headings.includes("What I allow"), headings.join("|"));
  ok("every control is named, text contrast is at least 4.5:1 (WCAG AA), and the page fits a phone");

  await page.screenshot({ path: path.join(artifacts, "portal-phone.png"), fullPage: true });
  assert.ok(fs.statSync(path.join(artifacts, "portal-phone.png")).size > 10_000);
  ok(`a phone-sized screenshot is kept at ${path.join(artifacts, "portal-phone.png")}`);

  // Signing out forgets the session: the page shows the sign-in form again.
  await page.click("#logout");
  await page.waitForFunction(() => !document.getElementById("sign-in").hidden);
  assert.ok(!(await page.locator("#access tbody").isVisible()));
  ok("signing out returns to the sign-in form");
} finally {
  await browser.close();
}
console.log(`${checked()} patient portal checks passed`);
if (checked() !== 11) process.exit(1);
