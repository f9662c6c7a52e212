// The sealed gate channel (docs/PROTOCOL.md section 3.2): after the plain
// handshake and its plain status, every package each way is
// ChaCha20-Poly1305 under a key of its own per direction and per
// connection (index), the nonce counting that direction's packages from 0.
// Over WebSocket a sealed package is one binary message: ciphertext ‖ tag.
// A package that fails to open was altered, dropped, replayed or reordered
// on the way: its connection is of no further use.
//
// Exported from this module for the gate client and the test vectors, not
// from the package.

import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { extract, expand } from '@noble/hashes/hkdf.js';

import { bytes } from './wire.js';

/**
 * The keys of the connection with handshake index `index` (its text
 * exactly as sent): `{ c2s, s2c }`, client to gate and gate to client.
 */
export function sealKeys(secret, index) {
  const prk = extract(sha256, secret, bytes('gatelogin seal v1'));
  const key = (direction) => expand(sha256, prk, bytes(`${direction}:${index}`), 32);
  return { c2s: key('c2s'), s2c: key('s2c') };
}

/** `00 00 00 00 ‖ BE64(n)`. */
function nonce(n) {
  const out = new Uint8Array(12);
  const view = new DataView(out.buffer);
  view.setUint32(4, Math.floor(n / 0x100000000));
  view.setUint32(8, n >>> 0);
  return out;
}

/** The sealed form of the `n`-th package `plaintext`: ciphertext ‖ tag. */
export function seal(key, n, plaintext) {
  return chacha20poly1305(key, nonce(n)).encrypt(plaintext);
}

/** The plaintext of the `n`-th sealed package, or `null` if it fails to open. */
export function open(key, n, sealed) {
  try {
    return chacha20poly1305(key, nonce(n)).decrypt(sealed);
  } catch {
    return null;
  }
}
