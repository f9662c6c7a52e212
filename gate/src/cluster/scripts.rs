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
    pub(super) fence: Script,
    pub(super) gates: Script,
}

/// KEYS: gate entry, intact marker, fence, the set of server names.
/// Writes the gate's entry if it is absent or ours (same epoch), or, when
/// ARGV[8] is '1', another boot of the same node id (ARGV[9]: the
/// operations address) (a restarted node takes its name over at once),
/// with the lease as its expiry, and adds its server name (ARGV[12]) to
/// the set. ARGV[11]: the WebSocket URL; ARGV[13]: the backend address.
/// Returns {1} renewed, {2} created, {0, node, epoch} taken. Preceded by
/// the fencing preamble (ARGV[10]: fence ms).
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
  'control', ARGV[4], 'online', ARGV[5], 'draining', ARGV[6], 'ops', ARGV[9], 'web', ARGV[11],
  'backend', ARGV[13])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('SADD', KEYS[4], ARGV[12])
if cur then return {1} else return {2} end
";

/// KEYS: gate entry, the set of server names. ARGV: epoch, server name.
/// Deletes the gate's entry (and its name from the set) if it is still
/// ours.
const UNREGISTER: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('SREM', KEYS[2], ARGV[2])
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS: the set of server names. ARGV: key prefix. Every registered gate:
/// a flat list of name, client, web, backend, draining; names whose entry
/// lapsed leave the set.
const GATES: &str = r"
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local g = redis.call('HMGET', ARGV[1] .. 'gate:' .. name, 'epoch', 'client', 'web', 'backend', 'draining')
  if g[1] then
    table.insert(out, name)
    table.insert(out, g[2] or '')
    table.insert(out, g[3] or '')
    table.insert(out, g[4] or '')
    table.insert(out, g[5] or '')
  else
    redis.call('SREM', KEYS[1], name)
  end
end
return out
";

/// The fencing preamble of BEGIN and REGISTER: KEYS[intact], KEYS[fence]
/// at the indexes `i` and `f`, ARGV[fence ms] at `ms`. A directory without
/// its `intact` marker lost its data (Redis came back empty): the marker
/// is written again and the fence raised for ARGV[ms]. Sets `fenced`.
fn fenced_preamble(i: u8, f: u8, ms: u8) -> String {
    format!(
        "local fenced = false
if redis.call('EXISTS', KEYS[{i}]) == 0 then
  redis.call('SET', KEYS[{i}], 'lost')
  redis.call('SET', KEYS[{f}], 'lost', 'PX', ARGV[{ms}])
  fenced = true
elseif redis.call('EXISTS', KEYS[{f}]) == 1 then
  fenced = true
end
"
    )
}

/// KEYS: lock, user, target gate, intact marker, fence. ARGV: token ('' =
/// no lock), lock ttl ms, key prefix, fence ms. Takes the lock, reads the
/// target gate and the old record, and the old record's gate (epoch,
/// control) if it is registered. While fenced, every login gets
/// {'fenced', ms left} and takes no lock: a record may be missing, and one
/// that is there may be stale (a promoted replica, or a restart from an
/// older file, can name a gate the user has left), until every live gate
/// has written its sessions back.
const BEGIN: &str = r"
local t = redis.call('HMGET', KEYS[3], 'epoch', 'control', 'draining')
local old = redis.call('GET', KEYS[2])
local o = {false, false}
if old then
  local server = string.match(old, '^[^\n]*\n[^\n]*\n(.*)$') or ''
  o = redis.call('HMGET', ARGV[3] .. 'gate:' .. server, 'epoch', 'control')
end
if fenced then
  return {'fenced', tostring(redis.call('PTTL', KEYS[5]))}
end
if ARGV[1] ~= '' then
  if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {'busy'}
  end
end
return {'ok', t[1] or '', t[2] or '', t[3] or '', old or '', o[1] or '', o[2] or ''}
";

/// KEYS: intact marker, fence. ARGV: the run id of the Redis server the
/// caller is connected to, fence ms, mode. Mode `check` (a new
/// connection): when the marker names another server (a replica was
/// promoted, or Redis restarted, and may miss the last writes) or is
/// absent (Redis came back empty, or a new deployment: the two look the
/// same), the marker takes this server's run id and the fence is raised;
/// returns 1 (another server) or 2 (no marker), else 0. Mode `extend` (a
/// gate restoring its records): the fence lasts at least ARGV[2] more.
/// The fence is never shortened.
const FENCE: &str = r"
local function raise(why)
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
    redis.call('SET', KEYS[2], why, 'PX', ARGV[2])
  end
end
if ARGV[3] == 'extend' then
  raise('restore')
  return 0
end
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
-- Marked lost by the fencing preamble, which raised the fence already.
if cur == 'lost' then return 0 end
if cur then
  raise('changed')
  return 1
end
raise('empty')
return 2
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

/// KEYS: user, fence. ARGV: record. Writes the record back if the uid has
/// none; returns 1 written or already ours, 0 when another session's
/// record is there. While the fence is up (Redis lost data: no login has
/// been placed since), a record that names another session is stale and
/// is replaced (2): the session restoring it is the live one.
const RESTORE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
if cur == ARGV[1] then return 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1])
  return 2
end
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
            register: Script::new(&format!("{}{REGISTER}", fenced_preamble(2, 3, 10))),
            unregister: Script::new(UNREGISTER),
            begin: Script::new(&format!("{}{BEGIN}", fenced_preamble(4, 5, 4))),
            release: Script::new(RELEASE),
            commit: Script::new(COMMIT),
            end: Script::new(END),
            restore: Script::new(RESTORE),
            admission: Script::new(ADMISSION),
            fence: Script::new(FENCE),
            gates: Script::new(GATES),
        }
    }
}
