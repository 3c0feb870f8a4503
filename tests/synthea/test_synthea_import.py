"""Synthea patients loaded by `medvault import`, checked against the files they came from."""

import glob
import json
import os
import urllib.error
import urllib.request

BASE = os.environ["MEDVAULT_URL"]
TOKEN = os.environ["MEDVAULT_TOKEN"]
SOURCE = os.environ["MEDVAULT_SYNTHEA_DIR"]
PATIENTS = int(os.environ["MEDVAULT_SYNTHEA_PATIENTS"])


def get(path):
    req = urllib.request.Request(
        f"{BASE}/{path}",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/fhir+json"},
    )
    try:
        with urllib.request.urlopen(req) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"GET {path}: {e.code} {e.read().decode()}") from None


def source():
    """Every resource of the generated Bundles by (type, id), references resolved as a
    transaction resolves them (urn:uuid full URLs become Type/id)."""
    resources = {}
    for path in sorted(glob.glob(os.path.join(SOURCE, "*.json"))):
        with open(path, encoding="utf-8") as f:
            bundle = json.load(f)
        assert bundle["type"] == "transaction"
        urls = {
            e["fullUrl"]: f'{e["resource"]["resourceType"]}/{e["resource"]["id"]}'
            for e in bundle["entry"]
            if "fullUrl" in e
        }

        def resolve(v):
            if isinstance(v, dict):
                return {
                    k: (urls.get(x, x) if k == "reference" and isinstance(x, str) else resolve(x))
                    for k, x in v.items()
                }
            if isinstance(v, list):
                return [resolve(x) for x in v]
            return v

        for e in bundle["entry"]:
            r = resolve(e["resource"])
            resources[(r["resourceType"], r["id"])] = r
    return resources


RESOURCES = source()


def test_every_patient_and_every_resource_is_served_per_type():
    assert len(glob.glob(os.path.join(SOURCE, "*.json"))) == PATIENTS
    want = {}
    for rt, _ in RESOURCES:
        want[rt] = want.get(rt, 0) + 1
    assert want["Patient"] == PATIENTS
    assert len(want) >= 20, want
    patients = [rid for rt, rid in RESOURCES if rt == "Patient"]

    def served(rt):
        # A search a requester's access is checked on resource by resource filters at most
        # 10 000 candidates: the large types are counted patient by patient.
        if want[rt] <= 5000:
            return get(f"{rt}?_summary=count")["total"]
        return sum(
            get(f"{rt}?patient=Patient/{pid}&_summary=count")["total"] for pid in patients
        )

    got = {rt: served(rt) for rt in want}
    assert got == want
    print(f"{sum(want.values())} resources of {len(want)} types")


def test_a_sample_of_reads_equals_the_input_modulo_meta():
    keys = sorted(RESOURCES)
    sample = keys[:: max(1, len(keys) // 200)]
    assert len(sample) >= 150
    for rt, rid in sample:
        stored = get(f"{rt}/{rid}")
        assert "versionId" in stored.pop("meta")
        expected = dict(RESOURCES[(rt, rid)])
        expected.pop("meta", None)
        assert stored == expected, f"{rt}/{rid}"


def test_patient_compartments_hold_their_records():
    patients = [rid for rt, rid in RESOURCES if rt == "Patient"]
    for pid in patients[:5]:
        want = sum(
            1
            for (rt, _), r in RESOURCES.items()
            if rt == "Observation" and r.get("subject", {}).get("reference") == f"Patient/{pid}"
        )
        got = get(f"Observation?subject=Patient/{pid}&_summary=count")["total"]
        assert got == want
