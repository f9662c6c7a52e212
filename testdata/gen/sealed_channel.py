#!/usr/bin/env python3
"""Independent known-answer vector for the sealed gate channel: the
handshake that asks for it, both directions' keys, and sealed packages in
both directions (stream and WebSocket forms).

Written from the description in docs/PROTOCOL.md (section 3.2) only, using
pyca/cryptography (not the Rust code). Output:
testdata/vectors/sealed_channel.json (deterministic).
Run: python3 testdata/gen/sealed_channel.py > testdata/vectors/sealed_channel.json
"""
import base64
import hashlib
import hmac
import json
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

gate_secret = bytes(range(0x40, 0x60))
username = b"aGVsbG8=@c2FtcGxl#Nw=="
index = b"2"
ext = b"v=1,seal=1"


def key(prefix):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"gatelogin seal v1",
                info=prefix + index).derive(gate_secret)


def nonce(n):
    return bytes(4) + struct.pack(">Q", n)


def request(content, number):
    return content + struct.pack(">I", number)


def response(content, number, flag=1):
    return content + bytes([flag]) + struct.pack(">I", number)


mac = hmac.new(gate_secret, username + b":" + index + b":seal", hashlib.sha256).digest()
handshake = username + b":" + index + b":" + base64.b64encode(mac) + b":" + ext
key_c2s, key_s2c = key(b"c2s:"), key(b"s2c:")


def seal(k, payloads):
    out = []
    for n, p in enumerate(payloads):
        body = ChaCha20Poly1305(k).encrypt(nonce(n), p, None)
        out.append({
            "counter": n,
            "plaintext": p.hex(),
            "stream": (struct.pack(">H", len(p)) + body).hex(),
            "websocket": body.hex(),
        })
    return out


c2s = [request(b"echo hello", 1), b"", request(b"x" * 300, 2)]
s2c = [
    # The welcome (flag 5, number = last push 0), the answers, a
    # heartbeat answer.
    response(b"v=1,idle=60000", 0, flag=5),
    response(b"echo hello", 1),
    b"",
    response(b"x" * 300, 2),
]
print(json.dumps({
    "description": "A sealed gate channel (docs/PROTOCOL.md 3.2): the handshake "
                   "(its MAC covers username:index:seal), the keys, and the packages "
                   "each side sends after the handshake and the plain 200 OK, in "
                   "order, as stream bytes (BE16 plaintext length, ciphertext, tag) "
                   "and as WebSocket message bodies (ciphertext, tag).",
    "gate_secret": gate_secret.hex(),
    "username": username.decode(),
    "index": index.decode(),
    "ext": ext.decode(),
    "signed_text": (username + b":" + index + b":seal").decode(),
    "handshake": handshake.decode(),
    "key_c2s": key_c2s.hex(),
    "key_s2c": key_s2c.hex(),
    "c2s": seal(key_c2s, c2s),
    "s2c": seal(key_s2c, s2c),
}, indent=2))
