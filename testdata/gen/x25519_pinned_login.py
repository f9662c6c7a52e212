#!/usr/bin/env python3
"""Independent known-answer vector for the pinned x25519 login (the server
proves a long-term key the client pinned).

Written from the description in docs/PROTOCOL.md (section 2.1) only, using
pyca/cryptography (not the Rust code). Output:
testdata/vectors/x25519_pinned_login.json (deterministic).
Run: python3 testdata/gen/x25519_pinned_login.py > testdata/vectors/x25519_pinned_login.json
"""
import base64
import hashlib
import hmac
import json

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

challenge = bytes.fromhex("a1b2c3d4e5f60718")
client_priv = bytes(range(1, 33))
server_priv = bytes(range(0x40, 0x60))
static_priv = bytes(range(0x80, 0xa0))
token = b"aGVsbG8=@c2FtcGxl:cGFzc3dvcmQ="


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


client_pub, server_pub, static_pub = pub(client_priv), pub(server_priv), pub(static_priv)
# The server's view (the client computes the same from its side).
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
proof = hmac.new(proof_key, th, hashlib.sha256).digest()
sealed = ChaCha20Poly1305(token_key).encrypt(bytes(12), token, th)
b64 = lambda b: base64.b64encode(b)

lines = [
    ("S->C", b64(challenge) + b"\n"),
    ("C->S", b64(b"\x01" + client_pub) + b"\n"),
    ("S->C", b64(server_pub) + b"\n"),
    ("C->S", b64(proof) + b"\n"),
    ("C->S", b64(sealed) + b"\n"),
    ("S->C", b"200 " + b64(b"1") + b"\n"),
]
print(json.dumps({
    "suite": "x25519 pinned",
    "generator": "testdata/gen/x25519_pinned_login.py (pyca/cryptography, independent of the Rust code)",
    "values": {
        "challenge": challenge.hex(),
        "client_private": client_priv.hex(),
        "client_public": client_pub.hex(),
        "server_private": server_priv.hex(),
        "server_public": server_pub.hex(),
        "static_private": static_priv.hex(),
        "static_public": static_pub.hex(),
        "ee": ee.hex(),
        "es": es.hex(),
        "th": th.hex(),
        "prk": prk.hex(),
        "proof_key": proof_key.hex(),
        "token_key": token_key.hex(),
        "gate_secret": gate_secret.hex(),
        "proof": proof.hex(),
        "token": token.decode(),
        "sealed_token": sealed.hex(),
        "subid": "1",
    },
    "steps": [{"dir": d, "hex": l.hex(), "text": l.decode()} for d, l in lines],
}, indent=2))
