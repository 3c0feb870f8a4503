"""Interop: the independent Python verifier (verify_ledger.py, `cryptography` for Ed25519)
checks a live medvault's two logs: checkpoint signatures, tiles, inclusion/consistency proofs,
and each checkpoint's pin of the other log."""

import os
import sys
import time

import pytest
import requests

sys.path.insert(0, os.path.dirname(__file__))
import verify_ledger  # noqa: E402

URL = os.environ["MEDVAULT_URL"]
BASE = URL[: -len("/fhir")]
HEADERS = {"Authorization": f"Bearer {os.environ['MEDVAULT_TOKEN']}"}


def wait_for_checkpoint(size):
    for _ in range(100):
        r = requests.get(f"{BASE}/ledger/access/checkpoint")
        if r.status_code == 200 and int(r.text.split("\n")[1]) >= size:
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint covering {size}")


def test_independent_verifier_accepts_the_live_logs():
    leaf = 0
    for i in range(5):
        r = requests.post(
            f"{URL}/Patient",
            json={"resourceType": "Patient", "name": [{"family": f"Pyledger{i}"}]},
            headers={**HEADERS, "Content-Type": "application/fhir+json"},
        )
        assert r.status_code == 201
        r = requests.get(f"{URL}/Patient?_count=1", headers=HEADERS)
        assert r.status_code == 200
        leaf = int(r.headers["X-Access-Log-Leaf"])
    wait_for_checkpoint(leaf + 1)
    report = verify_ledger.verify_node(BASE)
    assert report["access"]["size"] >= leaf + 1
    assert report["records"]["size"] >= 5
    assert report["access"]["inclusion_proofs"] >= 2
    assert report["records"]["inclusion_proofs"] >= 2
    assert report["pins_checked"] == 2


def test_independent_verifier_rejects_a_wrong_key_and_bad_proofs():
    vkey = requests.get(f"{BASE}/ledger/access/key").text.strip()
    name, key_id, _ = vkey.split("+", 2)
    # A well-formed key under the same name that never signed anything.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    import base64
    import hashlib

    raw = b"\x01" + Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )
    kid = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex()
    wrong = f"{name}+{kid}+{base64.b64encode(raw).decode()}"
    with pytest.raises(verify_ledger.VerifyError):
        verify_ledger.verify_log(BASE, "access", wrong)
    # A pin naming another root at the checkpoint's own size is a fork.
    head = verify_ledger.verify_log(BASE, "records")
    with pytest.raises(verify_ledger.VerifyError):
        verify_ledger.check_pin(BASE, "records", (head["size"], b"\x07" * 32), head)
    assert verify_ledger.check_pin(BASE, "records", (head["size"], head["root"]), head)
    # A flipped proof hash fails both proof checks.
    h = [b"\x00" * 32]
    with pytest.raises(verify_ledger.VerifyError):
        verify_ledger.verify_inclusion(0, 2, b"\x01" * 32, h, b"\x02" * 32)
    with pytest.raises(verify_ledger.VerifyError):
        verify_ledger.verify_consistency(1, 2, b"\x01" * 32, b"\x02" * 32, h)


def test_the_python_verifier_itself_matches_rfc6962_known_answers():
    path = os.path.join(os.path.dirname(__file__), "../vectors/merkle/rfc6962-roots.json")
    import json

    doc = json.load(open(path))
    leaves = [bytes.fromhex(h) for h in doc["leaf_inputs_hex"]]
    ran = 0
    for n, root in enumerate(doc["roots_hex"]):
        assert verify_ledger.mth([verify_ledger.leaf_hash(x) for x in leaves[:n]]).hex() == root
        ran += 1
    assert ran == 9


def test_checkpoints_carry_an_ml_dsa_44_cosignature_an_independent_fips_204_accepts():
    """C2SP tlog-cosignature subtree/v1, checked with dilithium-py (pure-Python FIPS 204)."""
    import base64
    import hashlib
    import struct

    from dilithium_py.ml_dsa import ML_DSA_44

    requests.post(
        f"{URL}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Pypq"}]},
        headers={**HEADERS, "Content-Type": "application/fhir+json"},
    )
    wait_for_checkpoint(1)
    vkey = requests.get(f"{BASE}/ledger/pq-cosigner/key").text.strip()
    name, key_id, raw = vkey.split("+", 2)
    raw = base64.b64decode(raw)
    assert raw[0] == 0x06 and len(raw) == 1 + 1312
    pk = raw[1:]
    expected_id = hashlib.sha256(name.encode() + b"\n" + b"\x06" + pk).digest()[:4]
    assert key_id == expected_id.hex()
    checked = 0
    for log in ("records", "access"):
        note = requests.get(f"{BASE}/ledger/{log}/checkpoint").text
        body, sigs = note.split("\n\n", 1)
        origin, size, root = body.split("\n")[:3]
        line = next(l for l in sigs.splitlines() if l.startswith(f"\u2014 {name} "))
        blob = base64.b64decode(line.rsplit(" ", 1)[1])
        assert blob[:4] == expected_id
        timestamp, sig = blob[4:12], blob[12:]
        assert len(sig) == 2420
        message = (
            b"subtree/v1\n\x00"
            + bytes([len(name)]) + name.encode()
            + timestamp
            + bytes([len(origin)]) + origin.encode()
            + struct.pack(">QQ", 0, int(size))
            + base64.b64decode(root)
        )
        assert ML_DSA_44.verify(pk, message, sig)
        # Another size or root is not what was cosigned.
        forged = message[:-40] + struct.pack(">Q", int(size) + 1) + message[-32:]
        assert not ML_DSA_44.verify(pk, forged, sig)
        checked += 1
    assert checked == 2
