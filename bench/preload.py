"""Preloads N Patient resources through transaction Bundles of 500, the same data for every
server measured. Writes the ids and the family names used to files for the wrk scripts.

Usage: preload.py BASE_URL TOKEN N OUT_DIR
The FHIR base is BASE_URL + $BENCH_PREFIX (default /fhir; empty for a server at the root).
"""

import json
import os
import random
import sys
import urllib.request

SYLLABLES = ["ka", "lo", "mi", "ran", "de", "su", "vo", "ber", "tan", "el", "or", "is", "nu", "gar", "pel",
             "ros", "win", "ha", "jo", "qui", "zer", "mon", "tis", "ul", "bra", "che", "dri", "fen", "gol", "hur"]


def family_names(count, rng):
    names = set()
    while len(names) < count:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize())
    return sorted(names)


def patient(rng, families):
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:bench:mrn", "value": f"MRN{rng.randrange(10**9):09d}"}],
        "name": [{"family": rng.choice(families), "given": [rng.choice(["Ann", "Bo", "Cai", "Dee", "Eli", "Fay"])]}],
        "gender": rng.choice(["female", "male", "other", "unknown"]),
        "birthDate": f"{rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "address": [{"line": [f"{rng.randint(1, 999)} Bench Street"], "city": "Testville", "postalCode": f"{rng.randrange(10**5):05d}"}],
        "telecom": [{"system": "phone", "value": f"+1555{rng.randrange(10**7):07d}"}],
    }


def created_id(entry):
    """The id a transaction-response entry created: from the resource returned, else from the
    Location (`Patient/<id>/_history/1`) of servers that return none."""
    if "resource" in entry and "id" in entry["resource"]:
        return entry["resource"]["id"]
    parts = entry["response"]["location"].split("/")
    return parts[parts.index("Patient") + 1]


def main():
    base, token, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rng = random.Random(42)
    families = family_names(5000, rng)
    ids = []
    batch = 500
    for start in range(0, n, batch):
        entries = [{"resource": patient(rng, families), "request": {"method": "POST", "url": "Patient"}}
                   for _ in range(min(batch, n - start))]
        body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()
        req = urllib.request.Request(base + os.environ.get("BENCH_PREFIX", "/fhir"), data=body, method="POST", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            result = json.load(resp)
        ids.extend(created_id(e) for e in result["entry"])
    with open(f"{out}/ids.txt", "w") as f:
        f.write("\n".join(ids) + "\n")
    with open(f"{out}/families.txt", "w") as f:
        f.write("\n".join(families) + "\n")
    print(f"preloaded {len(ids)} patients")


if __name__ == "__main__":
    main()
