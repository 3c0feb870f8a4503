"""An independent verifier of a medvault node's ledger, written from the texts of RFC 6962 /
RFC 9162 and the C2SP signed-note, tlog-checkpoint and tlog-tiles specifications, using only the
Python standard library and the `cryptography` package (Ed25519).

    python verify_ledger.py http://127.0.0.1:8080 [RECORDS_VKEY ACCESS_VKEY]

A node keeps two logs, `records` and `access`, under /ledger/records/ and /ledger/access/. For
each, fetches the checkpoint and verifies its signature, recomputes the root from the entry
bundles and hash tiles, and checks inclusion and consistency proofs from the node's proof
endpoints. Then checks each checkpoint's pin of the other log (the extension line
`records <size> <root>` or `access <size> <root>`) with a consistency proof to the other log's
checkpoint. Without the keys, those the node publishes at /ledger/<log>/key are trusted on first
use.
"""

import base64
import hashlib
import json
import sys
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class VerifyError(Exception):
    pass


def fetch(base, path):
    with urllib.request.urlopen(base.rstrip("/") + path, timeout=10) as r:
        return r.read()


# --- RFC 6962 §2.1 ---------------------------------------------------------------------------

def leaf_hash(entry):
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(hashes):
    """Merkle Tree Hash over a list of leaf hashes (recursive definition of RFC 6962)."""
    n = len(hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


# --- RFC 9162 §2.1.3.2 and §2.1.4.2 --------------------------------------------------------

def verify_inclusion(index, size, leaf, proof, root):
    if index >= size:
        raise VerifyError("index not below size")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerifyError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise VerifyError("inclusion proof does not verify")


def verify_consistency(first, second, first_root, second_root, proof):
    if first == second:
        if proof or first_root != second_root:
            raise VerifyError("bad proof between equal sizes")
        return
    if first == 0 or first > second or not proof:
        raise VerifyError("bad sizes or empty proof")
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerifyError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != first_root or sr != second_root:
        raise VerifyError("consistency proof does not verify")


# --- C2SP signed-note, tlog-checkpoint, tlog-tiles ---------------------------------------------

def parse_vkey(vkey):
    name, key_id, key = vkey.strip().split("+", 2)
    raw = base64.b64decode(key)
    if raw[0] != 0x01 or len(raw) != 33:
        raise VerifyError("not an Ed25519 verifier key")
    want = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    if want.hex() != key_id:
        raise VerifyError("verifier key id does not match")
    return name, want, Ed25519PublicKey.from_public_bytes(raw[1:])


def open_checkpoint(note, vkey):
    """Verifies the note's signature by `vkey`; returns (origin, size, root, extension lines)."""
    name, key_id, public = parse_vkey(vkey)
    text_end = note.rindex(b"\n\n")
    text, sigs = note[: text_end + 1], note[text_end + 2 :]
    good = False
    for line in sigs.decode().splitlines():
        dash, sig_name, sig = line.split(" ")
        if dash != "\u2014" or sig_name != name:
            continue
        raw = base64.b64decode(sig)
        if raw[:4] != key_id:
            continue
        public.verify(raw[4:], text)  # raises InvalidSignature
        good = True
    if not good:
        raise VerifyError("no signature by the expected key")
    lines = text.decode().split("\n")[:-1]
    origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2])
    if origin != name or len(root) != 32:
        raise VerifyError("checkpoint origin or root malformed")
    return origin, size, root, lines[3:]


def tile_index(n):
    parts = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        parts.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(parts))


def all_entries(base, log, size):
    """Every entry of the tree of `size` leaves, from the entry bundles."""
    entries = []
    for t in range((size + 255) // 256):
        width = min(256, size - 256 * t)
        path = f"/ledger/{log}/tile/entries/{tile_index(t)}" + ("" if width == 256 else f".p/{width}")
        data = fetch(base, path)
        got = []
        while data:
            n = int.from_bytes(data[:2], "big")
            got.append(data[2 : 2 + n])
            data = data[2 + n :]
        if len(got) != width:
            raise VerifyError(f"entry bundle {t} has {len(got)} entries, expected {width}")
        # The level-0 hash tile must hold exactly these entries' leaf hashes.
        tile = fetch(base, path.replace("/entries/", "/0/"))
        if tile != b"".join(leaf_hash(e) for e in got):
            raise VerifyError(f"hash tile {t} does not match its entries")
        entries.extend(got)
    return entries


def verify_log(base, log, vkey=None, old_size=None):
    """Verifies one log's checkpoint, tiles and proofs; returns what it checked."""
    vkey = vkey or fetch(base, f"/ledger/{log}/key").decode()
    origin, size, root, extensions = open_checkpoint(fetch(base, f"/ledger/{log}/checkpoint"), vkey)
    if not origin.endswith("/" + log):
        raise VerifyError(f"origin {origin} does not name the {log} log")
    entries = all_entries(base, log, size)
    hashes = [leaf_hash(e) for e in entries]
    if mth(hashes) != root:
        raise VerifyError(f"{log} entries do not hash to the checkpoint root")
    checked = 0
    for index in sorted({0, size // 2, size - 1}) if size else []:
        p = json.loads(fetch(base, f"/ledger/{log}/proof/inclusion?index={index}&size={size}"))
        if base64.b64decode(p["entry"]) != entries[index]:
            raise VerifyError("inclusion endpoint returned another entry")
        proof = [base64.b64decode(h) for h in p["proof"]]
        verify_inclusion(index, size, hashes[index], proof, root)
        checked += 1
    old = old_size or max(1, size // 3)
    if size:
        p = json.loads(fetch(base, f"/ledger/{log}/proof/consistency?old={old}&new={size}"))
        proof = [base64.b64decode(h) for h in p["proof"]]
        verify_consistency(old, size, mth(hashes[:old]), root, proof)
    return {
        "origin": origin,
        "size": size,
        "root": root,
        "extensions": extensions,
        "inclusion_proofs": checked,
        "consistency_from": old,
    }


def pin_of(extensions, label):
    """The (size, root) an extension line `<label> <size> <base64 root>` pins."""
    found = [e.split(" ") for e in extensions if e.split(" ")[0] == label]
    if len(found) != 1 or len(found[0]) != 3:
        raise VerifyError(f"checkpoint does not pin the {label} log exactly once")
    size, root = int(found[0][1]), base64.b64decode(found[0][2])
    if len(root) != 32:
        raise VerifyError(f"{label} pin root is not a SHA-256 hash")
    return size, root


def check_pin(base, log, pin, head):
    """Proves the pinned (size, root) of `log` is a prefix of its checkpoint `head`."""
    size, root = pin
    if size > head["size"]:
        return False  # pinned a newer checkpoint than the one fetched: fetch again
    if size == 0:
        if root != hashlib.sha256(b"").digest():
            raise VerifyError(f"{log} pin of size 0 is not the empty root")
    elif size == head["size"]:
        if root != head["root"]:
            raise VerifyError(f"{log} pin names another root at the same size (fork)")
    else:
        p = json.loads(fetch(base, f"/ledger/{log}/proof/consistency?old={size}&new={head['size']}"))
        proof = [base64.b64decode(h) for h in p["proof"]]
        verify_consistency(size, head["size"], root, head["root"], proof)
    return True


def verify_node(base, records_vkey=None, access_vkey=None):
    """Verifies both logs and the pins binding them."""
    for _ in range(5):
        access = verify_log(base, "access", access_vkey)
        records = verify_log(base, "records", records_vkey)
        if check_pin(base, "records", pin_of(access["extensions"], "records"), records) and check_pin(
            base, "access", pin_of(records["extensions"], "access"), access
        ):
            for r in (access, records):
                del r["root"]
            return {"records": records, "access": access, "pins_checked": 2}
    raise VerifyError("the logs kept moving: pins never settled")


if __name__ == "__main__":
    try:
        keys = sys.argv[2:4] if len(sys.argv) > 3 else [None, None]
        print(json.dumps(verify_node(sys.argv[1], *keys)))
    except Exception as e:  # one plain line, non-zero exit
        print(f"verify_ledger: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
