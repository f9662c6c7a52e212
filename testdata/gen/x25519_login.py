#!/usr/bin/env python3
"""Independent known-answer vector for the x25519 login suite.

Written from the protocol description in loginproto/src/modern.rs only, using
pyca/cryptography (not the Rust code), so the Rust tests cross-check two
implementations. Output: testdata/vectors/x25519_login.json (deterministic).
Run: python3 testdata/gen/x25519_login.py > testdata/vectors/x25519_login.json
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
token = b"aGVsbG8=@c2FtcGxl:cGFzc3dvcmQ="


def pub(priv):
    k = X25519PrivateKey.from_private_bytes(priv)
    return k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def hkdf_expand(prk, info, n=32):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]


client_pub, server_pub = pub(client_priv), pub(server_priv)
shared = X25519PrivateKey.from_private_bytes(server_priv).exchange(
    X25519PublicKey.from_public_bytes(client_pub))
th = hashlib.sha256(b"gatelogin x25519 v1" + challenge + client_pub + server_pub).digest()
prk = hmac.new(th, shared, hashlib.sha256).digest()
proof_key = hkdf_expand(prk, b"client proof")
token_key = hkdf_expand(prk, b"token key")
gate_secret = hkdf_expand(prk, b"gate secret")
proof = hmac.new(proof_key, th, hashlib.sha256).digest()
sealed = ChaCha20Poly1305(token_key).encrypt(bytes(12), token, th)
username = b"aGVsbG8=@c2FtcGxl#MQ=="
signed = username + b":1"
mac = hmac.new(gate_secret, signed, hashlib.sha256).digest()
b64 = lambda b: base64.b64encode(b)
handshake = signed + b":" + b64(mac)

lines = [
    ("S->C", b64(challenge) + b"\n"),
    ("C->S", b64(client_pub) + b"\n"),
    ("S->C", b64(server_pub) + b"\n"),
    ("C->S", b64(proof) + b"\n"),
    ("C->S", b64(sealed) + b"\n"),
    ("S->C", b"200 " + b64(b"1") + b"\n"),
]
print(json.dumps({
    "suite": "x25519",
    "generator": "testdata/gen/x25519_login.py (pyca/cryptography, independent of the Rust code)",
    "values": {
        "challenge": challenge.hex(),
        "client_private": client_priv.hex(),
        "client_public": client_pub.hex(),
        "server_private": server_priv.hex(),
        "server_public": server_pub.hex(),
        "shared": shared.hex(),
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
    "gate_handshake": {
        "username": username.decode(),
        "index": "1",
        "signed_text": signed.decode(),
        "mac": mac.hex(),
        "payload": handshake.decode(),
    },
}, indent=2))
