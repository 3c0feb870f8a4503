"""Interop: an independent TOTP implementation (pyotp) enrolls from medvault's otpauth:// URI
(parameters and secret as medvault states them), its codes confirm the enrollment and log a
person in at AAL2, once each; the QR code is a well-formed SVG image."""

import os
import time
import xml.etree.ElementTree as ET

import pyotp
import requests

URL = os.environ["MEDVAULT_URL"]
BASE = URL[: -len("/fhir")]
USER = os.environ["MEDVAULT_USER"]
PASSWORD = os.environ["MEDVAULT_USER_PASSWORD"]


def login(**extra):
    return requests.post(f"{BASE}/auth/login", json={"username": USER, "password": PASSWORD, **extra})


def test_pyotp_enrolls_from_the_uri_and_its_codes_log_in():
    r = login()
    assert r.status_code == 200, r.text
    assert r.json()["aal"] == 1
    session = {"Authorization": f"Bearer {r.json()['session']}"}
    assert requests.get(f"{URL}/Patient", headers=session).status_code == 403

    r = requests.post(f"{BASE}/auth/totp/enroll", headers=session)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    enrolled = r.json()
    totp = pyotp.parse_uri(enrolled["otpauth_uri"])
    assert isinstance(totp, pyotp.TOTP)
    assert totp.secret == enrolled["secret"]
    assert (totp.digits, totp.interval, totp.issuer, totp.name) == (6, 30, "medvault", USER)
    svg = ET.fromstring(enrolled["qr_svg"])
    assert svg.tag.endswith("svg")

    r = requests.post(f"{BASE}/auth/totp/confirm", headers=session, json={"code": totp.now()})
    assert r.status_code == 200, r.text
    assert len(r.json()["recovery_codes"]) == 10

    # The next step's code from pyotp logs in at AAL2 and reaches data; it is refused the
    # second time (a code is accepted once).
    code = totp.at(time.time() + 30)
    r = login(totp=code)
    assert r.status_code == 200, r.text
    assert r.json()["aal"] == 2
    session = {"Authorization": f"Bearer {r.json()['session']}"}
    assert requests.get(f"{URL}/Patient?_count=1", headers=session).status_code == 200
    assert login(totp=code).status_code == 401
    # A code from a different secret is refused.
    assert login(totp=pyotp.TOTP(pyotp.random_base32()).at(time.time() + 60)).status_code == 401
    assert requests.post(f"{BASE}/auth/logout", headers=session).status_code == 204
    assert requests.get(f"{URL}/Patient?_count=1", headers=session).status_code == 401
