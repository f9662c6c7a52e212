#!/usr/bin/env python3
"""The attacker of bench/attack.sh: holds PER sockets from each of ADDRS to
127.0.0.1:PORT for SECS seconds, opening a new one whenever the target
closes one (held and refilled), and does one of:

  idle      nothing (an idle flood: a login slot, a gate slot, a backend link)
  slow      one more byte of PAYLOAD every second (slowloris)
  keyline   an x25519 key line after the login's challenge, then nothing
            (an abandoned key exchange)
  wsping    a WebSocket upgrade, then masked pings as fast as it can write

Prints one summary line: sockets opened, closed by the target, connect
failures, and for wsping the pings written.

  attack.py MODE PORT ADDRS PER SECS [PAYLOAD]
"""
import base64
import errno
import os
import resource
import selectors
import socket
import sys
import time

mode, port, addrs, per, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4]), float(sys.argv[5])
payload = sys.argv[6].encode().decode("unicode_escape").encode("latin-1") if len(sys.argv) > 6 else b"A" * 64
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
# A masked, empty ping frame (FIN + opcode 9, mask bit, zero key).
PING = b"\x89\x80\x00\x00\x00\x00"
PINGS = PING * 2048

sel = selectors.DefaultSelector()
conns = {}  # socket -> [addr, bytes of payload sent, state]
count = {a: 0 for a in addrs}
opened = closed = failed = pings = 0
end = time.monotonic() + secs


def open_one(addr):
    global opened, failed
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((addr, 0))
        s.settimeout(0.5)
        s.connect(("127.0.0.1", port))
    except OSError as e:
        s.close()
        failed += 1
        return e.errno != errno.EMFILE
    s.setblocking(False)
    conns[s] = [addr, 0, 0]
    count[addr] += 1
    sel.register(s, selectors.EVENT_READ)
    opened += 1
    if mode == "wsping":
        s.setblocking(True)
        s.sendall(UPGRADE)
        s.setblocking(False)
    return True


def drop(s):
    global closed
    sel.unregister(s)
    count[conns.pop(s)[0]] -= 1
    s.close()
    closed += 1


last_tick = 0.0
while time.monotonic() < end:
    # Top up every address, a bounded number per round so reads go on.
    budget = 2000
    for a in addrs:
        while count[a] < per and budget > 0 and time.monotonic() < end:
            budget -= 1
            if not open_one(a):
                budget = 0
    for key, _ in sel.select(timeout=0.05):
        s = key.fileobj
        try:
            data = s.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data:
            drop(s)
            continue
        st = conns[s]
        if mode == "keyline" and st[2] == 0:  # the challenge: answer with a key line once
            st[2] = 1
            try:
                s.send(base64.b64encode(os.urandom(32)) + b"\n")
            except OSError:
                drop(s)
        elif mode == "wsping" and st[2] == 0 and b"\r\n\r\n" in data:
            st[2] = 1
    now = time.monotonic()
    if mode == "slow" and now - last_tick >= 1.0:
        last_tick = now
        for s, st in list(conns.items()):
            try:
                s.send(payload[st[1] % len(payload):][:1])
                st[1] += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                drop(s)
    if mode == "wsping":
        for s, st in list(conns.items()):
            if st[2] != 1:
                continue
            try:
                n = s.send(PINGS[st[1] % len(PING):])  # frames stay whole across short writes
                st[1] += n
                pings += n // len(PING)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                drop(s)

print(f"opened {opened} closed_by_target {closed} connect_failures {failed} held_at_end {len(conns)}"
      + (f" pings {pings}" if mode == "wsping" else ""))
