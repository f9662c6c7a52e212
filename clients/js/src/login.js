// The x25519 login dialogue over WebSocket (docs/PROTOCOL.md sections 2
// and 9): each line is one text message. The primitives WebCrypto does not
// offer everywhere (X25519, ChaCha20-Poly1305, and HKDF/HMAC/SHA-256
// outside secure contexts) come from the audited @noble packages; the
// randomness from WebCrypto's getRandomValues.

import { x25519 } from './x25519.js';
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { hmac } from '@noble/hashes/hmac.js';
import { extract, expand } from '@noble/hashes/hkdf.js';

import {
  Inbox,
  b64decode,
  b64encode,
  bytes,
  concat,
  opened,
  randomBytes as platformRandom,
  text,
  webSocketClass,
} from './wire.js';

/** The server's `200` line did not prove that it holds the session's keys. */
export const UNCONFIRMED = 'the server could not prove its key';

/** A login the server refused: `status` is its code (401, 403, 406, 503). */
export class LoginError extends Error {
  constructor(status, line) {
    super(`login refused: ${line}`);
    this.name = 'LoginError';
    this.status = status;
    this.line = line;
  }
}

/**
 * The values both sides derive after line 3 (docs/PROTOCOL.md section 2;
 * section 2.1 when `serverKey` pins the server's long-term key).
 * Exported from this module for the test vectors, not from the package.
 */
export function deriveKeys({ challenge, clientPub, serverPub, shared, pinned }) {
  const label = pinned ? 'gatelogin x25519 pinned v1' : 'gatelogin x25519 v1';
  const th = sha256(
    concat(bytes(label), challenge, clientPub, serverPub, pinned ? pinned.serverKey : new Uint8Array(0)),
  );
  const ikm = pinned ? concat(shared, pinned.es) : shared;
  const prk = extract(sha256, ikm, th);
  return {
    th,
    proofKey: expand(sha256, prk, bytes('client proof'), 32),
    tokenKey: expand(sha256, prk, bytes('token key'), 32),
    gateSecret: expand(sha256, prk, bytes('gate secret'), 32),
    confirmKey: expand(sha256, prk, bytes('server confirm'), 32),
  };
}

/** Tokens are padded to a multiple of this (docs/PROTOCOL.md section 2.3). */
const TOKEN_BUCKET = 128;

/** `token ‖ 0x80 ‖ 0x00…` up to the next multiple of the bucket. */
export function padToken(plain) {
  const padded = new Uint8Array((Math.floor(plain.length / TOKEN_BUCKET) + 1) * TOKEN_BUCKET);
  padded.set(plain);
  padded[plain.length] = 0x80;
  return padded;
}

/** Compares without an early exit. */
function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i += 1) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** The token text `b64(user) "@" b64(server) ":" b64(password)`. */
export function token(user, server, password) {
  return bytes(`${b64encode(bytes(user))}@${b64encode(bytes(server))}:${b64encode(bytes(password))}`);
}

function isZero(data) {
  return data.every((b) => b === 0);
}

/**
 * Logs in over WebSocket with the x25519 suite and returns the ticket the
 * gate client needs: `{ uid, server, subid, secret }`.
 *
 * @param {object} options
 * @param {string} options.url the login server's WebSocket address (`ws://host:port/`)
 * @param {string} options.user
 * @param {string} options.password
 * @param {string} [options.server='sample'] the gate's server name
 * @param {Uint8Array} [options.serverKey] the login server's long-term X25519 public key to pin
 * @param {(notice: {position: number, waitMs: number, number: number}) => void} [options.onQueue]
 *   asks for queue notices and gets each one (docs/PROTOCOL.md section 2.2)
 * @param {number} [options.timeoutMs=10000] deadline of the whole dialogue
 * @param {typeof WebSocket} [options.WebSocket] a WebSocket class (Node < 22: the `ws` package)
 * @param {object} [options.webSocketOptions] the WebSocket constructor's third argument
 *   (the `ws` package's options: `origin`, `ca`, `headers`, ...)
 * @param {(n: number) => Uint8Array} [options.randomBytes] randomness (default: WebCrypto)
 */
export async function login(options) {
  const {
    url,
    user,
    password,
    server = 'sample',
    serverKey,
    onQueue,
    timeoutMs = 10000,
    randomBytes = platformRandom,
    confirm = true,
  } = options;
  const WS = webSocketClass(options.WebSocket);
  const ws = options.webSocketOptions ? new WS(url, undefined, options.webSocketOptions) : new WS(url);
  const inbox = new Inbox(ws);
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`login dialogue took over ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([deadline, dialogue()]);
  } finally {
    clearTimeout(timer);
    ws.close();
  }

  async function line() {
    const message = await inbox.next();
    if (typeof message !== 'string') throw new Error('the login server sent a binary message');
    return message;
  }

  function refusal(message) {
    const m = /^(\d{3}) /.exec(message);
    return m ? new LoginError(Number(m[1]), message) : null;
  }

  async function dialogue() {
    await opened(ws);
    const first = await line();
    const refused = refusal(first);
    if (refused) throw refused;
    const challenge = b64decode(first);

    const clientEph = randomBytes(32);
    const clientPub = x25519.getPublicKey(clientEph);
    const flags = (serverKey ? 0x01 : 0) | (onQueue ? 0x02 : 0) | (confirm ? 0x04 : 0);
    ws.send(b64encode(flags ? concat(Uint8Array.of(flags), clientPub) : clientPub));

    // Queue notices (asked for) come before line 3.
    let reply = await line();
    while (reply.startsWith('#')) {
      const [position, waitMs, number] = reply.slice(1).trim().split(/\s+/).map(Number);
      onQueue?.({ position, waitMs, number });
      reply = await line();
    }
    const refusedKey = refusal(reply);
    if (refusedKey) throw refusedKey;
    const serverPub = b64decode(reply);
    if (serverPub.length !== 32) throw new Error('the server key line is not 32 bytes');

    const shared = x25519.getSharedSecret(clientEph, serverPub);
    if (isZero(shared)) throw new Error('the server key gives an all-zero shared secret');
    let pinned;
    if (serverKey) {
      const es = x25519.getSharedSecret(clientEph, serverKey);
      if (isZero(es)) throw new Error('the pinned key gives an all-zero shared secret');
      pinned = { serverKey, es };
    }
    const keys = deriveKeys({ challenge, clientPub, serverPub, shared, pinned });
    const proof = hmac(sha256, keys.proofKey, keys.th);
    const plain = token(user, server, password);
    const sealed = chacha20poly1305(keys.tokenKey, new Uint8Array(12), keys.th).encrypt(
      confirm ? padToken(plain) : plain,
    );
    ws.send(b64encode(proof));
    ws.send(b64encode(sealed));

    const status = await line();
    const m = /^200 (\S+)(?: (\S+))?$/.exec(status);
    if (!m) throw refusal(status) ?? new Error(`unexpected status line ${JSON.stringify(status)}`);
    const subid = b64decode(m[1]);
    if (confirm) {
      // The key confirmation (section 2.3): without it, the success may be
      // a relay's, not the server's.
      const expected = hmac(sha256, keys.confirmKey, concat(keys.th, subid));
      let got = new Uint8Array(0);
      try {
        got = m[2] ? b64decode(m[2]) : got;
      } catch {
        // A confirmation that is not base64 is a wrong one.
      }
      if (!sameBytes(got, expected)) throw new Error(UNCONFIRMED);
    }
    return { uid: user, server, subid: text(subid), secret: keys.gateSecret };
  }
}
