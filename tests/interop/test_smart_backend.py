"""Interop: SMART Backend Services with an independent OAuth2/JWT client (PyJWT + cryptography).
A service registered with RS384 and ES384 keys gets access tokens with private_key_jwt, reads
FHIR data within its scopes (including a query-constrained one) and is refused outside them;
replayed, expired and wrongly-signed assertions are refused."""

import json
import os
import subprocess
import tempfile
import time
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

URL = os.environ["MEDVAULT_URL"]
BASE = URL[: -len("/fhir")]
ADMIN = {"Authorization": f"Bearer {os.environ['MEDVAULT_TOKEN']}"}
FHIR = {"Content-Type": "application/fhir+json"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def jwk(public_key, alg, kid):
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS384" else jwt.algorithms.ECAlgorithm
    key = json.loads(algorithm.to_jwk(public_key))
    key.update({"kid": kid, "alg": alg, "use": "sig"})
    return key


@pytest.fixture(scope="module")
def service():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    jwks = {"keys": [jwk(rsa_key.public_key(), "RS384", "rsa-1"), jwk(ec_key.public_key(), "ES384", "ec-1")]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(jwks, f)
    scopes = "system/Observation.rs?category=laboratory system/Patient.r system/AuditEvent.rs"
    out = subprocess.run(
        [os.environ["MEDVAULT_BIN"], "client", "register", "--data-dir", os.environ["MEDVAULT_DATA_DIR"],
         "--name", "Interop lab feed", "--jwks", f.name, "--scope", scopes],
        capture_output=True, text=True, check=True,
    )
    client_id = out.stdout.strip()
    assert client_id.startswith("cli_")
    config = requests.get(f"{URL}/.well-known/smart-configuration").json()
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
    assert {"permission-v1", "permission-v2"} <= set(config["capabilities"])
    return {"id": client_id, "rsa": rsa_key, "ec": ec_key, "token_url": config["token_endpoint"]}


def assertion(svc, key="rsa", kid=None, alg=None, exp_in=240, jti=None):
    alg = alg or ("RS384" if key == "rsa" else "ES384")
    claims = {"iss": svc["id"], "sub": svc["id"], "aud": svc["token_url"],
              "exp": int(time.time()) + exp_in, "jti": jti or str(uuid.uuid4())}
    return jwt.encode(claims, svc[key], algorithm=alg, headers={"kid": kid or f"{key}-1"})


def token_request(svc, signed, scope):
    return requests.post(svc["token_url"], data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed,
    })


def test_backend_service_reads_within_its_scopes_and_nothing_else(service):
    # Data, written by an admin: a patient with a lab and a vital-signs observation.
    patient = requests.post(f"{URL}/Patient", headers={**ADMIN, **FHIR},
                            json={"resourceType": "Patient", "name": [{"family": "Smartfam"}]}).json()
    def obs(category):
        return requests.post(f"{URL}/Observation", headers={**ADMIN, **FHIR}, json={
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": f"Patient/{patient['id']}"},
        }).json()
    lab, vital = obs("laboratory"), obs("vital-signs")

    r = token_request(service, assertion(service), "system/Observation.rs?category=laboratory system/Patient.r system/Encounter.r")
    assert r.status_code == 200, r.text
    granted = r.json()
    assert granted["token_type"] == "bearer" and granted["expires_in"] == 300
    assert granted["scope"] == "system/Observation.rs?category=laboratory system/Patient.r"
    auth = {"Authorization": f"Bearer {granted['access_token']}"}

    assert requests.get(f"{URL}/Patient/{patient['id']}", headers=auth).status_code == 200
    assert requests.get(f"{URL}/Patient?family=Smartfam", headers=auth).status_code == 403  # no .s
    assert requests.get(f"{URL}/Observation/{lab['id']}", headers=auth).status_code == 200
    # Outside the scope's query constraint: answered exactly as a missing resource (no oracle).
    r = requests.get(f"{URL}/Observation/{vital['id']}", headers=auth)
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    found = requests.get(f"{URL}/Observation?subject=Patient/{patient['id']}", headers=auth).json()
    assert [e["resource"]["id"] for e in found.get("entry", []) if e["search"]["mode"] == "match"] == [lab["id"]]
    assert requests.post(f"{URL}/Observation", headers={**auth, **FHIR}, json=lab).status_code == 403
    assert requests.get(f"{URL}/Encounter?_count=1", headers=auth).status_code == 403
    # Bundle entries are checked one by one.
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{lab['id']}"}},
        {"request": {"method": "GET", "url": f"Observation/{vital['id']}"}},
    ]}
    out = requests.post(URL, headers={**auth, **FHIR}, json=batch).json()
    assert [e["response"]["status"][:3] for e in out["entry"]] == ["200", "404"]

    # An admin introspects the token.
    r = requests.post(f"{BASE}/auth/introspect", headers=ADMIN, data={"token": granted["access_token"]})
    assert r.json()["active"] is True and r.json()["client_id"] == service["id"]
    assert requests.post(f"{BASE}/auth/introspect", headers=ADMIN, data={"token": "mva_nope"}).json() == {"active": False}


def test_es384_assertions_work_and_bad_ones_are_refused(service):
    scope = "system/Patient.r"
    assert token_request(service, assertion(service, key="ec"), scope).status_code == 200
    signed = assertion(service)
    assert token_request(service, signed, scope).status_code == 200
    replay = token_request(service, signed, scope)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    assert "replay" in replay.json()["error_description"]
    # Signed by the EC key but claiming the RSA key's kid; expired; too far in the future.
    assert token_request(service, assertion(service, key="ec", kid="rsa-1"), scope).status_code == 401
    assert token_request(service, assertion(service, exp_in=-600), scope).status_code == 401
    assert token_request(service, assertion(service, exp_in=3600), scope).status_code == 401
    # HS256 with the client id as a secret must never work.
    forged = jwt.encode({"iss": service["id"], "sub": service["id"], "aud": service["token_url"],
                         "exp": int(time.time()) + 60, "jti": "x"}, service["id"] * 2, algorithm="HS256",
                        headers={"kid": "rsa-1"})
    assert token_request(service, forged, scope).status_code == 401
    # Scopes the client was not registered for; unsupported grant; garbage.
    r = token_request(service, assertion(service), "system/Encounter.rs")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = requests.post(service["token_url"], data={"grant_type": "password"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    assert requests.get(f"{URL}/Patient", headers={"Authorization": "Bearer mva_forged"}).status_code == 401


def test_a_services_subscription_carries_only_what_its_scopes_allow():
    """A lab feed subscribes (rest-hook to a Python receiver on loopback): it hears of laboratory
    observations only, as its query-constrained scope says, and nothing of the others."""
    import http.server
    import threading

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"keys": [jwk(key.public_key(), "RS384", "rsa-1")]}, f)
    scopes = "system/Observation.rs?category=laboratory system/Subscription.cruds"
    client_id = subprocess.run(
        [os.environ["MEDVAULT_BIN"], "client", "register", "--data-dir", os.environ["MEDVAULT_DATA_DIR"],
         "--name", "Interop subscriber", "--jwks", f.name, "--scope", scopes],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    config = requests.get(f"{URL}/.well-known/smart-configuration").json()
    svc = {"id": client_id, "rsa": key, "token_url": config["token_endpoint"]}
    r = token_request(svc, assertion(svc), scopes)
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}

    got = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = f"sub-{uuid.uuid4().hex[:6]}"
    sub = requests.post(f"{URL}/Subscription", headers={**auth, **FHIR}, json={
        "resourceType": "Subscription", "status": "requested", "reason": "interop",
        "criteria": f"Observation?code={code}",
        "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{server.server_port}/hook",
                    "payload": "application/fhir+json"}})
    assert sub.status_code == 201, sub.text
    deadline = time.time() + 20
    while not got and time.time() < deadline:
        time.sleep(0.05)
    assert got and got[0]["type"] == "history"

    patient = requests.post(f"{URL}/Patient", headers={**ADMIN, **FHIR},
                            json={"resourceType": "Patient", "name": [{"family": "Subfam"}]}).json()
    def obs(category):
        return requests.post(f"{URL}/Observation", headers={**ADMIN, **FHIR}, json={
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{patient['id']}"},
        }).json()
    vital, lab = obs("vital-signs"), obs("laboratory")
    while len(got) < 2 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    server.shutdown()
    assert len(got) == 2, got
    focus = got[1]["entry"][1]["fullUrl"]
    assert focus.endswith(f"Observation/{lab['id']}"), got[1]
    assert vital["id"] not in json.dumps(got)
