// Compiled by types.test.mjs with `tsc --strict`: the declarations take
// what the README shows, in browsers and in Node, and refuse misuse.

import { WebSocket } from 'ws';

import {
  DEFAULT_LIMITS,
  GateClient,
  LoginError,
  RequestError,
  RequestTimeout,
  RequestTooLarge,
  SessionEnded,
  login,
} from '../../src/index.js';
import type { EndReason, GateState, Limits, SessionStorage, Ticket, Welcome } from '../../src/index.js';
// @ts-expect-error: internals are not part of the package
import { handshake } from '../../src/index.js';

export async function node(): Promise<void> {
  const ticket: Ticket = await login({
    url: 'ws://127.0.0.1:8002/',
    user: 'alice',
    password: 'secret',
    WebSocket,
    webSocketOptions: { origin: 'https://game.example', ca: 'PEM' },
    onQueue: ({ position, waitMs }) => console.log(position + waitMs),
    timeoutMs: 5000,
  });
  const gate = new GateClient({
    url: 'ws://127.0.0.1:8889/',
    ticket,
    WebSocket,
    requestTimeoutMs: 10000,
    maxInFlight: 64,
    seal: true,
    onTamper: (count: number) => console.log(count),
    onPush: (content: Uint8Array, seq: number) => console.log(content.length, seq),
    onEnd: (error) => console.log(error.reason),
  });
  await gate.connect();
  const sealed: boolean = gate.sealed;
  const tampered: number = gate.tampered;
  console.log(sealed, tampered);
  // @ts-expect-error: seal is on or off
  new GateClient({ url: 'ws://127.0.0.1:8889/', ticket, seal: 'yes' });
  const answer: Uint8Array = await gate.request(new Uint8Array([1, 2]));
  const fromBuffer: Uint8Array = await gate.request(new ArrayBuffer(4), { timeoutMs: 100 });
  const fromView: Uint8Array = await gate.request(new DataView(new ArrayBuffer(2)));
  const textAnswer: string = await gate.requestText('join lobby', { signal: AbortSignal.timeout(1000) });
  console.log(answer, fromBuffer, fromView, textAnswer);
  // @ts-expect-error: a number is no content
  await gate.request(42);
}

export async function browser(storage: SessionStorage, ticket: Ticket): Promise<void> {
  const options = { url: 'wss://game.example:8889/', storage, storageKey: 'game' };
  const gate = GateClient.resume(options) ?? new GateClient({ ...options, ticket });
  const off: () => void = gate.on('push', (content, seq) => {
    const bytes: Uint8Array = content;
    const n: number = seq;
    console.log(bytes, n);
  });
  off();
  gate.on('gap', (lastLost: number) => console.log(lastLost));
  gate.on('kick', (text: string) => console.log(text));
  gate.on('tamper', (count: number) => console.log(count));
  gate.on('open', (welcome: Welcome | null) => console.log(welcome?.idleMs));
  gate.on('state', (state: GateState) => console.log(state === 'reconnecting'));
  gate.on('end', (error: SessionEnded) => {
    const reason: EndReason = error.reason;
    const detail: string = error.detail;
    console.log(reason, detail, error instanceof Error);
  });
  const listener = (state: GateState) => console.log(state);
  gate.on('state', listener);
  gate.off('state', listener);
  // @ts-expect-error: no such event
  gate.on('message', () => {});
  // @ts-expect-error: a push listener gets bytes, not text
  gate.on('push', (content: string) => console.log(content));
  await gate.connect();
  const limits: Limits = gate.limits;
  const counts: number = gate.inFlight + gate.queued + gate.index + gate.lastPush + DEFAULT_LIMITS.maxInFlight;
  console.log(limits.maxRequestBytes, counts, gate.resumed, gate.ended?.reason, gate.welcome?.version);
  // @ts-expect-error: the state is read-only
  gate.state = 'open';
  // @ts-expect-error: so is whether it is sealed
  gate.sealed = false;
  // @ts-expect-error: the limits are read-only
  gate.limits.maxInFlight = 1;
  try {
    await gate.request('say hi');
  } catch (error) {
    if (error instanceof RequestError) console.log(error.session);
    else if (error instanceof RequestTimeout) console.log(error.timeoutMs);
    else if (error instanceof RequestTooLarge) console.log(error.size, error.limit);
    else if (error instanceof SessionEnded) console.log(error.reason);
    else if (error instanceof LoginError) console.log(error.status, error.line);
  }
  gate.close();
  gate.logout();
  // @ts-expect-error: a ticket is needed
  new GateClient({ url: 'ws://x/' });
}

export function webStorage(ticket: Ticket): GateClient | null {
  new GateClient({ url: 'wss://game.example:8889/', ticket, storage: localStorage });
  return GateClient.resume({ url: 'wss://game.example:8889/', storage: sessionStorage });
}

export { handshake };
