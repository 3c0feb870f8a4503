"""Interop: the Bulk Data Access v2 client flow (kick-off, poll, download, parse ndjson) in
Python against a live medvault, every exported resource validated by fhir.resources (R4)."""

import json
import os
import time
import uuid

import requests
from fhir.resources import get_fhir_model_class

URL = os.environ["MEDVAULT_URL"]
TOKEN = os.environ["MEDVAULT_TOKEN"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_bulk_export_flow():
    s = requests.Session()
    s.headers.update(AUTH)
    family = f"Bulk{uuid.uuid4().hex[:8]}"
    pid = s.post(f"{URL}/Patient", json={"resourceType": "Patient", "name": [{"family": family}]},
                 headers={"Content-Type": "application/fhir+json"}, timeout=10).json()["id"]
    for code in ["2345-7", "718-7"]:
        r = s.post(f"{URL}/Observation", headers={"Content-Type": "application/fhir+json"}, json={
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}}, timeout=10)
        assert r.status_code == 201, r.text

    kick = s.get(f"{URL}/Patient/$export", params={"_type": "Patient,Observation"},
                 headers={"Accept": "application/fhir+json", "Prefer": "respond-async"}, timeout=10)
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]

    deadline = time.time() + 60
    while True:
        poll = s.get(status_url, timeout=10)
        if poll.status_code == 200:
            break
        assert poll.status_code == 202, poll.text
        assert "X-Progress" in poll.headers
        time.sleep(float(poll.headers.get("Retry-After", "1")) / 10)
        assert time.time() < deadline
    manifest = poll.json()
    assert manifest["requiresAccessToken"] is True
    assert manifest["transactionTime"]
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Observation"}

    seen = {}
    for out in manifest["output"]:
        r = s.get(out["url"], headers={"Accept": "application/fhir+ndjson"}, timeout=30)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("application/fhir+ndjson")
        lines = [l for l in r.text.split("\n") if l]
        assert len(lines) == out["count"]
        for line in lines:
            data = json.loads(line)
            get_fhir_model_class(data["resourceType"]).parse_obj(data)
            seen.setdefault(data["resourceType"], set()).add(data["id"])
    assert pid in seen["Patient"]
    mine = s.get(f"{URL}/Observation", params={"subject": f"Patient/{pid}"}, timeout=10).json()
    assert {e["resource"]["id"] for e in mine["entry"]} <= seen["Observation"]

    # Without a token the files are not served; after DELETE the job is gone.
    assert requests.get(manifest["output"][0]["url"], timeout=10).status_code == 401
    assert s.delete(status_url, timeout=10).status_code == 202
    assert s.get(status_url, timeout=10).status_code == 404
