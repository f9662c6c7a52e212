// Test harness: the real `gate` binary (and the chat example service) on
// free loopback ports, a TCP proxy that can drop a client's network, and
// waiting on events with a guard. Binaries come from GATE_BIN / CHAT_BIN,
// else the workspace's target/debug (`cargo build -p gate` and `cargo build
// -p service --example chat`).

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

// Node 18 has WebCrypto only as a module: the library reads the global.
globalThis.crypto ??= (await import('node:crypto')).webcrypto;

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

function binary(env, rel) {
  const file = process.env[env] ?? path.join(root, rel);
  if (!existsSync(file)) {
    throw new Error(`${file} is missing: run \`cargo build -p gate\` and \`cargo build -p service --example chat\` (or set ${env})`);
  }
  return file;
}

/** Rejects if `promise` takes longer than `ms` (a failure guard, not a wait). */
export function guard(what, promise, ms = 15000) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Resolves once `cond()` holds, checked on every change `subscribe` reports. */
export function until(what, cond, subscribe, ms) {
  return guard(
    what,
    new Promise((resolve) => {
      if (cond()) return resolve();
      const off = subscribe(() => {
        if (cond()) {
          off();
          resolve();
        }
      });
    }),
    ms,
  );
}

/** A child process whose JSON (gate) or text log lines are watched. */
class Proc {
  constructor(name, file, args) {
    this.name = name;
    this.lines = [];
    this.watchers = new Set();
    this.child = spawn(file, args, {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' },
    });
    this.exited = new Promise((resolve) => this.child.once('exit', resolve));
    readline.createInterface({ input: this.child.stderr }).on('line', (line) => {
      this.lines.push(line);
      for (const watcher of this.watchers) watcher(line);
    });
  }

  /** The first log line (past or future) `pick` returns a value for. */
  wait(what, pick) {
    return guard(
      `${this.name}: ${what}`,
      new Promise((resolve, reject) => {
        for (const line of this.lines) {
          const value = pick(line);
          if (value !== undefined) return resolve(value);
        }
        const watcher = (line) => {
          const value = pick(line);
          if (value !== undefined) {
            this.watchers.delete(watcher);
            resolve(value);
          }
        };
        this.watchers.add(watcher);
        this.exited.then((code) => reject(new Error(`${this.name} exited (${code}):\n${this.lines.join('\n')}`)));
      }),
    );
  }

  async stop() {
    if (this.child.exitCode === null) this.child.kill('SIGTERM');
    await guard(`${this.name} to exit`, this.exited);
  }
}

function jsonField(message, field) {
  return (line) => {
    try {
      const event = JSON.parse(line);
      if (event.fields?.message === message) {
        return String(event.fields[field]).replace(/^Some\((.*)\)$/, '$1');
      }
    } catch {
      return undefined;
    }
    return undefined;
  };
}

/**
 * Starts the all-in-one gate on free ports (`config`: TOML text laid under
 * the flags); with `chat`, the chat example
 * service as every user's agent (text commands: `join <room>`, `say
 * <text>`, `leave`); with `ops`, the operations listener, whose counters
 * `metric(name)` reads. Resolves with the WebSocket addresses.
 */
export async function startGate({ chat = false, ops = false, origins = [], args = [], config = '' } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'gate-js-'));
  const secret = path.join(dir, 'link.secret');
  writeFileSync(secret, '0123456789abcdef0123456789abcdef\n');
  const configFile = path.join(dir, 'gate.toml');
  writeFileSync(configFile, config);
  const gateArgs = [
    'run',
    '--config', configFile,
    '--log-format', 'json',
    '--login-listen', '127.0.0.1:0',
    '--gate-listen', '127.0.0.1:0',
    '--web-login-listen', '127.0.0.1:0',
    '--web-gate-listen', '127.0.0.1:0',
    ...origins.flatMap((o) => ['--web-allowed-origin', o]),
    ...(ops ? ['--ops-listen', '127.0.0.1:0'] : []),
    ...(chat
      ? ['--backend-listen', '127.0.0.1:0', '--link-secret-file', secret, '--agent-service', 'chat']
      : []),
    ...args,
  ];
  const gate = new Proc('gate', binary('GATE_BIN', 'target/debug/gate'), gateArgs);
  const procs = [gate];
  const stop = async () => {
    for (const proc of procs.reverse()) await proc.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const login = await gate.wait('the WebSocket login listener', jsonField('login server listening for WebSocket clients', 'addr'));
    const gateWs = await gate.wait('the WebSocket gate listener', jsonField('message gate listening for WebSocket clients', 'addr'));
    const opsAddr = ops ? await gate.wait('the operations listener', jsonField('operations listener up', 'addr')) : null;
    if (chat) {
      const backend = await gate.wait('the backend listener', jsonField('backend listening', 'addr'));
      procs.push(
        new Proc('chat', binary('CHAT_BIN', 'target/debug/examples/chat'), [
          '--gate', backend,
          '--link-secret-file', secret,
        ]),
      );
      await gate.wait('the chat service to register', jsonField('service registered', 'peer'));
    }
    return {
      login: `ws://${login}/`,
      gate: `ws://${gateWs}/`,
      gateAddr: gateWs,
      logs: gate.lines,
      /**
       * The value of one sample of `/metrics` (e.g.
       * `gate_connections_cut_total{cause="bad_seal"}`); 0 if absent.
       */
      metric: async (sample) => {
        if (!opsAddr) throw new Error('start the gate with `ops: true`');
        const body = await (await fetch(`http://${opsAddr}/metrics`)).text();
        const line = body.split('\n').find((l) => l.startsWith(`${sample} `));
        return line ? Number(line.slice(sample.length + 1)) : 0;
      },
      /** The fields of the first gate log event (past or future) with `message` that `match` accepts. */
      event: (message, match = () => true) =>
        gate.wait(message, (line) => {
          try {
            const event = JSON.parse(line);
            if (event.fields?.message === message && match(event.fields)) return event.fields;
          } catch {
            return undefined;
          }
          return undefined;
        }),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * A TCP proxy in front of `target` (`host:port`) whose network can be
 * dropped: `drop()` cuts every connection and refuses new ones until
 * `restore()`; `blackhole()` keeps connections open but discards what the
 * server sends (a network that lost the answers); `stall()` does that to
 * the connections open now only (a dead path: TCP up, nothing forwarded
 * to the client, no close), new ones are served; `hold()` keeps what the
 * server sends until `release()` (a slow network).
 */
export async function startProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const pairs = new Set();
  let down = false;
  let discard = false;
  let held = null;
  const server = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = net.connect(port, host);
    const pair = { client, upstream, dead: false };
    pairs.add(pair);
    const close = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (data) => upstream.write(data));
    upstream.on('data', (data) => {
      if (discard || pair.dead) return;
      if (held) held.push([client, data]);
      else client.write(data);
    });
    client.on('close', close);
    upstream.on('close', close);
    client.on('error', close);
    upstream.on('error', close);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: listening } = server.address();
  return {
    url: `ws://127.0.0.1:${listening}/`,
    connections: () => pairs.size,
    blackhole() {
      discard = true;
    },
    stall() {
      for (const pair of pairs) pair.dead = true;
    },
    hold() {
      held ??= [];
    },
    release() {
      const chunks = held ?? [];
      held = null;
      for (const [client, data] of chunks) if (!client.destroyed) client.write(data);
    },
    drop() {
      down = true;
      discard = false;
      held = null;
      for (const { client, upstream } of [...pairs]) {
        client.destroy();
        upstream.destroy();
      }
    },
    restore() {
      down = false;
      discard = false;
    },
    close: () =>
      new Promise((resolve) => {
        for (const { client, upstream } of pairs) {
          client.destroy();
          upstream.destroy();
        }
        server.close(resolve);
      }),
  };
}

/**
 * A man in the middle at the WebSocket level in front of the gate's
 * WebSocket address `target`: every message each way is recorded per
 * connection (`pairs[i].toGate`, `.toClient`: Buffers, in order) and
 * passed through `relay.toGate(pair, n, data)` / `relay.toClient(pair, n,
 * data)` when set (`n` counts that direction's messages of the connection
 * from 0; return what to forward). Closes are forwarded with their code and
 * recorded (`gateClose`, `clientClose`). `subscribe(listener)` is told of
 * every message and close.
 */
export async function startRelay(target) {
  const { WebSocket, WebSocketServer } = await import('ws');
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => server.once('listening', resolve));
  const listeners = new Set();
  const changed = () => {
    for (const listener of [...listeners]) listener();
  };
  /** Closes `ws` with `code` if a close frame may carry it. */
  const closeWith = (ws, code) => {
    if (ws.readyState !== WebSocket.OPEN) {
      ws.terminate();
      return;
    }
    try {
      ws.close(code);
    } catch {
      ws.close();
    }
  };
  const relay = {
    url: `ws://127.0.0.1:${server.address().port}/`,
    pairs: [],
    toGate: null,
    toClient: null,
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    close: () =>
      new Promise((resolve) => {
        for (const client of server.clients) client.terminate();
        server.close(resolve);
      }),
  };
  server.on('connection', (client) => {
    const pair = { toGate: [], toClient: [], gateClose: null, clientClose: null };
    relay.pairs.push(pair);
    const upstream = new WebSocket(target);
    const early = [];
    upstream.on('open', () => {
      for (const [data, binary] of early.splice(0)) upstream.send(data, { binary });
    });
    client.on('message', (data, binary) => {
      pair.toGate.push(data);
      const out = relay.toGate ? relay.toGate(pair, pair.toGate.length - 1, data) : data;
      if (upstream.readyState === WebSocket.OPEN) upstream.send(out, { binary });
      else early.push([out, binary]);
      changed();
    });
    upstream.on('message', (data, binary) => {
      pair.toClient.push(data);
      const out = relay.toClient ? relay.toClient(pair, pair.toClient.length - 1, data) : data;
      if (client.readyState === WebSocket.OPEN) client.send(out, { binary });
      changed();
    });
    upstream.on('close', (code) => {
      pair.gateClose = code;
      closeWith(client, code);
      changed();
    });
    client.on('close', (code) => {
      pair.clientClose = code;
      closeWith(upstream, code);
      changed();
    });
    upstream.on('error', () => client.terminate());
    client.on('error', () => upstream.terminate());
  });
  return relay;
}
