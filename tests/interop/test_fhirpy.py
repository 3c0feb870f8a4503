"""Interop: fhirpy (an independent FHIR client) against a live medvault, with every returned
resource validated by fhir.resources 6.4.0 (independent FHIR R4 4.0.1 models)."""

import os
import uuid

import pytest
import requests
from fhir.resources import get_fhir_model_class
from fhirpy import SyncFHIRClient
from fhirpy.base.searchset import Raw

URL = os.environ["MEDVAULT_URL"]
TOKEN = os.environ["MEDVAULT_TOKEN"]
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
VALIDATED = []


def validate(resource):
    """Validates a resource (and every resource inside a Bundle) with the R4 models."""
    data = resource.serialize() if hasattr(resource, "serialize") else resource
    model = get_fhir_model_class(data["resourceType"])
    model.parse_obj(data)
    VALIDATED.append(data["resourceType"])
    for entry in data.get("entry", []):
        if "resource" in entry:
            validate(entry["resource"])
        if "outcome" in entry.get("response", {}):
            validate(entry["response"]["outcome"])
    return data


@pytest.fixture(scope="module")
def client():
    return SyncFHIRClient(URL, authorization=f"Bearer {TOKEN}")


def test_create_read_update_search(client):
    family = f"Interop{uuid.uuid4().hex[:8]}"
    patient = client.resource(
        "Patient",
        name=[{"family": family, "given": ["Ada"]}],
        gender="female",
        birthDate="1985-12-10",
        identifier=[{"system": "urn:interop", "value": family}],
    )
    patient.save()
    assert patient["id"]
    assert patient["meta"]["versionId"] == "1"
    validate(patient)

    read = client.reference("Patient", patient["id"]).to_resource()
    assert read["name"][0]["family"] == family
    validate(read)

    read["gender"] = "other"
    read.save()
    again = client.reference("Patient", patient["id"]).to_resource()
    assert again["gender"] == "other"
    assert again["meta"]["versionId"] == "2"
    validate(again)

    found = client.resources("Patient").search(family=family.lower()[:6]).fetch_all()
    assert [p["id"] for p in found] == [patient["id"]]
    by_identifier = client.resources("Patient").search(identifier=f"urn:interop|{family}").fetch_all()
    assert [p["id"] for p in by_identifier] == [patient["id"]]
    assert client.resources("Patient").search(family=family, gender="male").fetch_all() == []
    for p in found:
        validate(p)

    obs = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        subject={"reference": f"Patient/{patient['id']}"},
        effectiveDateTime="2024-02-03T04:05:06Z",
        valueQuantity={"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    )
    obs.save()
    validate(obs)
    mine = client.resources("Observation").search(patient=patient["id"], date__ge="2024-01-01").fetch_all()
    assert [o["id"] for o in mine] == [obs["id"]]
    assert client.resources("Observation").search(patient=patient["id"], date__lt="2024-01-01").fetch_all() == []
    for o in mine:
        validate(o)

    count = client.resources("Patient").search(family=family).count()
    assert count == 1

    obs.delete()
    resp = requests.get(f"{URL}/Observation/{obs['id']}", headers=HEADERS, timeout=10)
    assert resp.status_code == 410
    validate(resp.json())


def test_bundles_history_metadata_and_errors_are_valid_r4():
    s = requests.Session()
    s.headers.update(HEADERS)
    validate(requests.get(f"{URL}/metadata", timeout=10).json())
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:" + str(uuid.uuid4()), "resource": {"resourceType": "Patient", "name": [{"family": "Txn"}]},
             "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    tx["entry"].append({
        "resource": {"resourceType": "Condition", "subject": {"reference": tx["entry"][0]["fullUrl"]}, "code": {"text": "asthma"}},
        "request": {"method": "POST", "url": "Condition"},
    })
    resp = s.post(f"{URL}", json=tx, timeout=10)
    assert resp.status_code == 200, resp.text
    bundle = validate(resp.json())
    pid = bundle["entry"][0]["resource"]["id"]
    assert bundle["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    validate(s.get(f"{URL}/Patient/{pid}/_history", timeout=10).json())
    validate(s.get(f"{URL}/Condition?patient={pid}", timeout=10).json())
    validate(s.get(f"{URL}/Patient?family=txn&_count=1", timeout=10).json())
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
    ]}
    validate(s.post(f"{URL}", json=batch, timeout=10).json())
    for bad in [
        s.post(f"{URL}/Patient", data="{not json", timeout=10),
        s.post(f"{URL}/Patient", json={"resourceType": "Patient", "birthDate": "soon"}, timeout=10),
        requests.get(f"{URL}/Patient", timeout=10),
        s.get(f"{URL}/Patient/nope", timeout=10),
    ]:
        assert bad.status_code >= 400
        outcome = validate(bad.json())
        assert outcome["resourceType"] == "OperationOutcome"


def test_chains_revinclude_everything_and_patch(client):
    """fhirpy's own search builder (chains, _revinclude, _has), its patch, and $everything."""
    family = f"Chain{uuid.uuid4().hex[:8]}"
    patient = client.resource("Patient", name=[{"family": family}], gender="female")
    patient.save()
    practitioner = client.resource("Practitioner", name=[{"family": "Doc"}])
    practitioner.save()
    obs = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        subject={"reference": f"Patient/{patient['id']}"},
        performer=[{"reference": f"Practitioner/{practitioner['id']}"}],
        valueQuantity={"value": 7.2, "unit": "mmol/L"},
    )
    obs.save()

    # subject:Patient.family=… built by fhirpy from subject__Patient__family.
    found = client.resources("Observation").search(subject__Patient__family=family).fetch()
    assert [o["id"] for o in found] == [obs["id"]]
    for o in found:
        validate(o)
    has = client.resources("Patient").search(Raw(**{"_has:Observation:subject:code": "2345-7"}))
    assert patient["id"] in [p["id"] for p in has.fetch_all()]

    bundle = (
        client.resources("Patient")
        .search(_id=patient["id"])
        .revinclude("Observation", "subject")
        .fetch_raw()
    )
    validate(bundle)
    modes = sorted((e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle.entry)
    assert modes == [("Observation", "include"), ("Patient", "match")], modes

    everything = client.execute(f"Patient/{patient['id']}/$everything", method="get")
    validate(everything)
    kinds = sorted(e["resource"]["resourceType"] for e in everything["entry"])
    assert kinds == ["Observation", "Patient", "Practitioner"], kinds

    # fhirpy's patch sends the changed members as application/json (a merge patch).
    patched = client.patch("Patient", patient["id"], gender="male")
    assert patched["gender"] == "male" and patched["meta"]["versionId"] == "2"
    validate(patched)
    # A JSON Patch and a FHIRPath Patch, as other clients send them.
    r = requests.patch(
        f"{URL}/Patient/{patient['id']}",
        headers={**HEADERS, "Content-Type": "application/json-patch+json", "If-Match": 'W/"2"'},
        json=[{"op": "add", "path": "/birthDate", "value": "1980-01-01"}],
        timeout=10,
    )
    assert r.status_code == 200, r.text
    validate(r.json())
    r = requests.patch(
        f"{URL}/Patient/{patient['id']}",
        headers=HEADERS,
        json={"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.birthDate"}]}]},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert "birthDate" not in validate(r.json())
    stale = requests.patch(
        f"{URL}/Patient/{patient['id']}",
        headers={**HEADERS, "Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'},
        json=[{"op": "remove", "path": "/gender"}],
        timeout=10,
    )
    assert stale.status_code == 412
    validate(stale.json())


def test_every_returned_resource_was_validated():
    assert len(VALIDATED) >= 20, VALIDATED
    assert {"Patient", "Observation", "Bundle", "CapabilityStatement", "OperationOutcome", "Condition"} <= set(VALIDATED)


def test_audit_events_validate():
    """The audit trail as AuditEvent resources validates with the independent R4 models."""
    r = requests.get(f"{URL}/AuditEvent?_count=100", headers=HEADERS)
    assert r.status_code == 200
    bundle = r.json()
    assert len(bundle["entry"]) > 0
    validate(bundle)
    assert VALIDATED.count("AuditEvent") >= len(bundle["entry"])
