#!/usr/bin/env python3
"""Independent known-answer vector for a pinned x25519 login with key
confirmation and a padded token (key line flags 0x05: pinned, confirmed).

Written from the description in docs/PROTOCOL.md (sections 2.1 and 2.3)
only, using pyca/cryptography (not the Rust code). Output:
testdata/vectors/x25519_confirmed_login.json (deterministic).
Run: python3 testdata/gen/x25519_confirmed_login.py > testdata/vectors/x25519_confirmed_login.json
"""
import base64
import hashlib
import hmac
import json

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

challenge = bytes.fromhex("0f1e2d3c4b5a6978")
client_priv = bytes(range(0x21, 0x41))
server_priv = bytes(range(0x61, 0x81))
static_priv = bytes(range(0xa1, 0xc1))
token = b"aGVsbG8=@c2FtcGxl:cGFzc3dvcmQ="
subid = b"7"
BUCKET = 128


def pub(priv):
    k = X25519PrivateKey.from_private_bytes(priv)
    return k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(priv, peer_pub):
    return X25519PrivateKey.from_private_bytes(priv).exchange(
        X25519PublicKey.from_public_bytes(peer_pub))


def hkdf_expand(prk, info, n=32):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]


def pad(t):
    # token || 0x80 || zeros, up to the next multiple of the bucket.
    n = (len(t) // BUCKET + 1) * BUCKET
    return t + b"\x80" + bytes(n - len(t) - 1)


client_pub, server_pub, static_pub = pub(client_priv), pub(server_priv), pub(static_priv)
ee = dh(server_priv, client_pub)
es = dh(static_priv, client_pub)
assert ee == dh(client_priv, server_pub) and es == dh(client_priv, static_pub)
th = hashlib.sha256(
    b"gatelogin x25519 pinned v1" + challenge + client_pub + server_pub + static_pub
).digest()
prk = hmac.new(th, ee + es, hashlib.sha256).digest()
proof_key = hkdf_expand(prk, b"client proof")
token_key = hkdf_expand(prk, b"token key")
gate_secret = hkdf_expand(prk, b"gate secret")
confirm_key = hkdf_expand(prk, b"server confirm")
proof = hmac.new(proof_key, th, hashlib.sha256).digest()
padded = pad(token)
sealed = ChaCha20Poly1305(token_key).encrypt(bytes(12), padded, th)
confirmation = hmac.new(confirm_key, th + subid, hashlib.sha256).digest()
b64 = lambda b: base64.b64encode(b)

lines = [
    ("S->C", b64(challenge) + b"\n"),
    ("C->S", b64(b"\x05" + client_pub) + b"\n"),
    ("S->C", b64(server_pub) + b"\n"),
    ("C->S", b64(proof) + b"\n"),
    ("C->S", b64(sealed) + b"\n"),
    ("S->C", b"200 " + b64(subid) + b" " + b64(confirmation) + b"\n"),
]
print(json.dumps({
    "suite": "x25519 pinned, confirmed",
    "generator": "testdata/gen/x25519_confirmed_login.py (pyca/cryptography, independent of the Rust code)",
    "values": {
        "challenge": challenge.hex(),
        "client_private": client_priv.hex(),
        "client_public": client_pub.hex(),
        "server_private": server_priv.hex(),
        "server_public": server_pub.hex(),
        "static_private": static_priv.hex(),
        "static_public": static_pub.hex(),
        "th": th.hex(),
        "prk": prk.hex(),
        "confirm_key": confirm_key.hex(),
        "gate_secret": gate_secret.hex(),
        "token": token.decode(),
        "padded_token": padded.hex(),
        "sealed_token": sealed.hex(),
        "subid": subid.decode(),
        "confirmation": confirmation.hex(),
    },
    "steps": [{"dir": d, "hex": l.hex(), "text": l.decode()} for d, l in lines],
}, indent=2))
