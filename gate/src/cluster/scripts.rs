//! The Lua scripts that change the cluster's state in Redis. Each runs
//! atomically on the Redis server, so every change to the registry or the
//! session directory is a compare-and-set; [`super::directory`] calls them.

use redis::Script;

/// The scripts. `Script` sends `EVALSHA` and falls back to `EVAL` when the
/// server does not know the script (e.g. after a restart).
pub(super) struct Scripts {
    pub(super) register: Script,
    pub(super) unregister: Script,
    pub(super) begin: Script,
    pub(super) release: Script,
    pub(super) commit: Script,
    pub(super) end: Script,
    pub(super) restore: Script,
    pub(super) admission: Script,
}

/// Writes the gate's entry if it is absent or ours (same epoch), or, when
/// ARGV[8] is '1', another boot of the same node id (ARGV[9]: the
/// operations address) (a restarted node
/// takes its name over at once), with the lease as its expiry. Returns {1}
/// renewed, {2} created, {0, node, epoch} taken.
const REGISTER: &str = r"
local cur = redis.call('HGET', KEYS[1], 'epoch')
if cur and cur ~= ARGV[2] then
  local node = redis.call('HGET', KEYS[1], 'node') or ''
  if ARGV[8] ~= '1' or node ~= ARGV[1] then
    return {0, node, cur}
  end
  cur = false
end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', ARGV[2], 'client', ARGV[3],
  'control', ARGV[4], 'online', ARGV[5], 'draining', ARGV[6], 'ops', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if cur then return {1} else return {2} end
";

/// Deletes the gate's entry if it is still ours.
const UNREGISTER: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS: lock, user, target gate. ARGV: token ('' = no lock), lock ttl ms,
/// key prefix. Takes the lock, reads the target gate and the old record,
/// and the old record's gate (epoch, control) if it is registered.
const BEGIN: &str = r"
if ARGV[1] ~= '' then
  if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {'busy'}
  end
end
local t = redis.call('HMGET', KEYS[3], 'epoch', 'control', 'draining')
local old = redis.call('GET', KEYS[2])
if not old then
  return {'ok', t[1] or '', t[2] or '', t[3] or '', '', '', ''}
end
local server = string.match(old, '^[^\n]*\n[^\n]*\n(.*)$') or ''
local o = redis.call('HMGET', ARGV[3] .. 'gate:' .. server, 'epoch', 'control')
return {'ok', t[1] or '', t[2] or '', t[3] or '', old, o[1] or '', o[2] or ''}
";

/// KEYS: lock. ARGV: token. Releases the lock if it is still this login's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS: user, lock. ARGV: new record, expected old record ('' none),
/// token ('' none). Writes the record if the current one is absent or the
/// expected one, and the lock (if any) is still this login's.
const COMMIT: &str = r"
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return 'lock'
end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[2] then
  return 'taken'
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('DEL', KEYS[2])
end
return 'ok'
";

/// KEYS: user. ARGV: record. Deletes the record only if it is this one:
/// the late end of an old session never removes a newer one.
const END: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS: user. ARGV: record. Writes the record back if the uid has none
/// (after Redis lost its data); returns 1 written or already ours, 0 when
/// another session's record is there.
const RESTORE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
if cur == ARGV[1] then return 1 end
return 0
";

/// The cluster-wide login queue: a token bucket and a ticket counter in one
/// hash (`tokens`, `last` ms, `head`, `tail`), on Redis's clock. KEYS: the
/// hash. ARGV: mode (`take` or `poll`), rate per second, burst, max queue.
/// `take`: admits at once if nobody waits and a token is there, else hands
/// out the next ticket ({'ok'}, {'full', waiting}, {'ticket', ticket,
/// head}); `poll`: {'head', head}. Both first move the head over as many
/// tickets as there are tokens.
const ADMISSION: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, maxq = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local st = redis.call('HMGET', KEYS[1], 'tokens', 'last', 'head', 'tail')
local tokens = tonumber(st[1]) or burst
local last = tonumber(st[2]) or now
local head = tonumber(st[3]) or 0
local tail = tonumber(st[4]) or 0
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate / 1000)
end
local moved = math.min(tail - head, math.floor(tokens))
head = head + moved
tokens = tokens - moved
local reply
if ARGV[1] == 'take' then
  if head == tail and tokens >= 1 then
    tokens = tokens - 1
    reply = {'ok'}
  elseif tail - head >= maxq then
    reply = {'full', tostring(tail - head)}
  else
    tail = tail + 1
    reply = {'ticket', tostring(tail), tostring(head)}
  end
else
  reply = {'head', tostring(head)}
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(math.max(now, last)),
  'head', tostring(head), 'tail', tostring(tail))
return reply
";

impl Scripts {
    /// Every script, loaded lazily by the server on first use.
    pub(super) fn new() -> Scripts {
        Scripts {
            register: Script::new(REGISTER),
            unregister: Script::new(UNREGISTER),
            begin: Script::new(BEGIN),
            release: Script::new(RELEASE),
            commit: Script::new(COMMIT),
            end: Script::new(END),
            restore: Script::new(RESTORE),
            admission: Script::new(ADMISSION),
        }
    }
}
