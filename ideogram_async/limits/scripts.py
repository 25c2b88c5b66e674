"""The Lua scripts of :class:`~ideogram_async.limits.RedisAllowance`.

Each step of the shared allowance is one script, so it is atomic on the Redis server;
every deadline is computed from the server's ``TIME`` (allowed in scripts since Redis 5,
which replicates their effects), never from the hosts' clocks. Every script starts with
:data:`PRELUDE` and is called with the same eight keys.

How the shared allowance works:

- **Holders and leases.** Each hold is a holder (a random id) with its places and a
  lease. A background task renews the leases of this process's holders every
  ``lease / 3`` seconds, so a process that dies (SIGKILL, a lost host) gives its
  places back when its leases end. Releases go by holder id: releasing a holder
  twice, or one that is not there, changes nothing.
- **Served in order, granted by whoever frees places.** Within a process, holds queue
  first come first served and only the first one waits on Redis. Across processes,
  the waiting ones take a ticket in a queue on Redis and only its head is served (a
  4-place hold is not starved by a stream of 1-place ones); a ticket that is not
  refreshed (its process died) leaves the queue within a few seconds. The ticket
  carries what serving it needs (places, and its process's lease, maximum and
  start), so the script that frees places (a release, a lease that ended, a bound
  that grew, a backoff that ended early) grants them to the queue's heads itself, in
  order while they fit, and publishes each grant on a channel (``<ticket>:<in use>:
  <bound>:<ceiling>:<round>``). A lost message is made up for by the fallback poll.
- **One bound for all, by the same rules as the local one.** The bound's state (the
  fields of :class:`~ideogram_async.limits.bound.Bound`) is a hash in Redis, and
  :data:`REJECTED` and :data:`RELEASE` (a request that ran) apply the rules of
  ``bound.py`` to it, line for line; the places held are every process's. A refused
  request's places are given back by :data:`REJECTED` without serving the queue (a
  refusal wakes nobody). The state expires after ``forget_after`` without a change.
- **State loss.** ``epoch`` is set at first use and every process remembers it. A
  script that finds it gone sets a new one and publishes ``lost:<epoch>``; every
  process that hears it registers its running holds again at once and answers
  (RENEW), and does at its next renewal anyway. If the caller knew the old epoch
  (Redis flushed or restarted without its data), nothing is granted for one lease
  (``quiet``): by then every live process has registered its holds again. If it knew
  none, this is the key's first use or a loss that only the processes holding places
  know of: nothing is granted until every process that heard has answered (the count
  is ``quiet``'s value), and an answer from one that knew an older epoch makes it the
  whole lease. A process whose epoch is out of date registers its holds again before
  its next grant. What no answer can cover: a process holding places that cannot hear
  the channel (its subscription broken) when a process that never knew the epoch is
  the first to find the loss; its places count again at its next renewal.
- **Faults.** If Redis cannot be reached, or is lost while a hold waits, the call
  raises :class:`~ideogram_async.SharedAllowanceError` naming the server: it never
  proceeds without a place. A block that already holds places runs to its end; if
  its release cannot reach Redis, its places come back when its lease ends.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "PRELUDE", "REJECTED", "RELEASE", "RENEW"]

KEYS = ("holders", "places", "queue", "waiting", "counter", "bound", "epoch", "quiet")
"""The names of the keys, in the order the scripts take them (all under one hash tag):

holders: sorted set, holder id -> lease end (ms, Redis time); places: hash, holder id ->
places held; queue: sorted set, waiting ticket (= its holder id) -> queue number;
waiting: hash, ticket -> "<expiry ms>:<places>:<lease ms>:<maximum>:<start>"; counter:
the last queue number; bound: hash, the bound's state; epoch: set at first use;
quiet: present while nothing is granted after a state loss."""

PRELUDE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local FIRST_BACKOFF, BACKOFF_GROWTH, MAX_BACKOFF = 250, 1.1, 2000
local MAX_PROBE_DOUBLINGS = 2

local function purge()
  local freed = false
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    redis.call('HDEL', KEYS[2], unpack(dead))
    freed = true
  end
  local waiting = redis.call('HGETALL', KEYS[4])
  for i = 1, #waiting, 2 do
    if tonumber(string.match(waiting[i + 1], '^(%d+)')) <= now then
      redis.call('HDEL', KEYS[4], waiting[i])
      redis.call('ZREM', KEYS[3], waiting[i])
      freed = true
    end
  end
  return freed
end

local function in_use()
  local total = 0
  for _, places in ipairs(redis.call('HVALS', KEYS[2])) do
    total = total + tonumber(places)
  end
  return total
end

-- The epoch the caller knew ('' if none) against Redis's: true if the state was lost
-- since the caller saw it. A missing epoch is set anew and every process is told
-- ("lost:<epoch>"). If the caller knew one, the data was lost: nothing is granted for
-- one lease. If not, this is the key's first use or a loss only others know of: nothing
-- is granted until every process that heard has answered (RENEW) or one lease passed.
local function lost(known, fresh, lease, channel)
  local epoch = redis.call('GET', KEYS[7])
  if epoch then return known ~= '' and known ~= epoch end
  redis.call('SET', KEYS[7], fresh)
  local heard = redis.call('PUBLISH', channel, 'lost:' .. fresh)
  if known ~= '' then
    redis.call('SET', KEYS[8], 'lease', 'PX', lease)
    return true
  end
  if heard > 0 then redis.call('SET', KEYS[8], heard, 'PX', lease) end
  return false
end

-- The bound's state for a process of this maximum and start (see bound.py).
local function load(maximum, start)
  local names = {'limit', 'learned', 'good', 'slow', 'run', 'failed', 'failed_at', 'streak',
                 'round', 'backoff', 'closed'}
  local values = redis.call('HMGET', KEYS[6], unpack(names))
  local st = {}
  for i, name in ipairs(names) do st[name] = tonumber(values[i]) end
  st.ceiling = maximum
  if st.learned then st.ceiling = math.max(1, math.min(st.learned, maximum)) end
  st.limit = math.min(st.limit or start, st.ceiling)
  st.good, st.run, st.failed = st.good or 0, st.run or 0, st.failed or 0
  st.failed_at = st.failed_at or 0
  st.streak, st.round = st.streak or 0, st.round or 0
  st.backoff, st.closed = st.backoff or 0, st.closed or 0
  if st.slow == nil then st.slow = 1 end
  return st
end

-- Store the state; it is forgotten ``ttl`` ms after its last change.
local function save(st, changed, ttl)
  redis.call('HSET', KEYS[6], 'limit', st.limit, 'good', st.good, 'slow', st.slow,
             'run', st.run, 'failed', st.failed, 'failed_at', st.failed_at,
             'streak', st.streak, 'round', st.round, 'backoff', st.backoff,
             'closed', st.closed)
  if st.learned then redis.call('HSET', KEYS[6], 'learned', st.learned) end
  if changed or redis.call('PTTL', KEYS[6]) < 0 then redis.call('PEXPIRE', KEYS[6], ttl) end
end

-- Milliseconds until anything may be granted (a backoff, a state loss), 0 if now.
local function closed()
  local wait = math.max(0, redis.call('PTTL', KEYS[8]))
  local until_ = tonumber(redis.call('HGET', KEYS[6], 'closed')) or 0
  return math.max(wait, until_ - now)
end

-- Grant places to the heads of the queue in order while they fit (each by its own
-- process's maximum, start and lease), telling each "<ticket>:<in use>:<bound>:
-- <ceiling>:<round>" on the channel (not the caller, which learns it from the
-- answer). Returns the places in use after, if it had to count them.
local serve
serve = function(channel, caller)
  if closed() > 0 then return nil end
  local used
  while true do
    local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
    if not head then return used end
    local entry = redis.call('HGET', KEYS[4], head) or ''
    local want, lease, maximum, start = string.match(entry, '^%d+:(%d+):(%d+):(%d+):(%d+)$')
    if not start then  -- a ticket without what serving it needs: not servable, drop it
      redis.call('ZREM', KEYS[3], head)
      redis.call('HDEL', KEYS[4], head)
      return serve(channel, caller)
    end
    local st = load(tonumber(maximum), tonumber(start))
    used = used or in_use()
    -- A hold larger than a lowered bound goes alone rather than never.
    if used + tonumber(want) > st.limit and used > 0 then return used end
    redis.call('ZADD', KEYS[1], now + tonumber(lease), head)
    redis.call('HSET', KEYS[2], head, want)
    redis.call('ZREM', KEYS[3], head)
    redis.call('HDEL', KEYS[4], head)
    used = used + tonumber(want)
    if head ~= caller then
      local message = string.format('%s:%d:%d:%d:%d', head, used, st.limit, st.ceiling, st.round)
      redis.call('PUBLISH', channel, message)
    end
  end
end
"""

# ARGV: holder, places, maximum, start, lease ms, ticket ms, channel, epoch known
# -> {1, in use, bound, ceiling, round, epoch} granted; {0, in use, bound, ceiling,
#    ms until anything may be granted, epoch} queued; {-1, 0, 0, 0, 0, epoch} when the
#    caller must register its holds again first
ACQUIRE = """
local id = ARGV[1]
local epoch_lost = lost(ARGV[8], id, ARGV[5], ARGV[7])
local epoch = redis.call('GET', KEYS[7])
if epoch_lost then return {-1, 0, 0, 0, 0, epoch} end
local freed = purge()
local st = load(tonumber(ARGV[3]), tonumber(ARGV[4]))
if not redis.call('ZSCORE', KEYS[1], id) then
  if not redis.call('ZSCORE', KEYS[3], id) then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), id)
  end
  redis.call('HSET', KEYS[4], id, string.format('%d:%s:%s:%s:%s', now + tonumber(ARGV[6]),
             ARGV[2], ARGV[5], ARGV[3], ARGV[4]))
  serve(ARGV[7], id)
end
local used = in_use()
if redis.call('ZSCORE', KEYS[1], id) then
  return {1, used, st.limit, st.ceiling, st.round, epoch}
end
if freed then serve(ARGV[7], '') end
return {0, used, st.limit, st.ceiling, closed(), epoch}
"""

# Also the answer to "lost:<epoch>": a process that knew an older epoch makes the wait
# one whole lease (the data was lost); the last answer of the others ends it.
# ARGV: lease ms, epoch known, channel, a new epoch if needed, the epoch of the "lost"
#       answered ('' if none), then holder, places pairs
# -> {holders that were missing, epoch}
RENEW = """
lost(ARGV[2], ARGV[4], ARGV[1], ARGV[3])
local deadline = now + tonumber(ARGV[1])
local missing = 0
for i = 6, #ARGV, 2 do
  missing = missing + redis.call('ZADD', KEYS[1], deadline, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
local epoch = redis.call('GET', KEYS[7])
local quiet = redis.call('GET', KEYS[8])
if ARGV[5] ~= '' and ARGV[5] == epoch and quiet and quiet ~= 'lease' then
  if ARGV[2] ~= '' and ARGV[2] ~= epoch then
    redis.call('SET', KEYS[8], 'lease', 'PX', math.max(1, redis.call('PTTL', KEYS[8])))
  elseif redis.call('DECR', KEYS[8]) <= 0 then
    redis.call('DEL', KEYS[8])
    serve(ARGV[3], '')
  end
end
return {missing, epoch}
"""

# A request ran (completed in bound.py), applied as its places are released.
# ARGV: holder, channel, ran (1/0), level, maximum, start, adaptive (1/0), ttl ms,
#       epoch known, lease ms, round when granted, bound when granted
# -> {released (0/1), in use, old bound, new bound, ceiling}
RELEASE = """
lost(ARGV[9], ARGV[1], ARGV[10], ARGV[2])
local released = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local dequeued = redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local st = load(tonumber(ARGV[5]), tonumber(ARGV[6]))
local old, opened = st.limit, false
if ARGV[3] == '1' then
  opened = st.closed > now
  st.streak, st.backoff, st.closed = 0, 0, 0
  local level = math.min(tonumber(ARGV[4]), st.ceiling)
  if tonumber(ARGV[11]) == st.round and level > st.good then st.good, st.failed = level, 0 end
  -- As many places as a failed probe asked for went through: slow start again.
  if tonumber(ARGV[11]) == st.round and st.failed_at > 0 and tonumber(ARGV[4]) >= st.failed_at then
    st.slow, st.failed_at = 1, 0
  end
  -- Slow start judges full use by the bound at the grant, probing by the bound now.
  local against = st.limit
  if st.slow == 1 then against = tonumber(ARGV[12]) end
  local full = tonumber(ARGV[4]) >= against
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if head and not full then
    local want = tonumber(string.match(redis.call('HGET', KEYS[4], head) or '', '^%d+:(%d+)'))
    full = want ~= nil and tonumber(ARGV[4]) + want > against
  end
  if ARGV[7] == '1' and full and st.limit < st.ceiling then
    local grow = true
    if st.slow == 0 then
      st.run = st.run + 1
      grow = st.run >= st.limit * 2 ^ st.failed
    end
    if grow then st.run, st.limit = 0, st.limit + 1 end
  end
  save(st, st.limit ~= old, ARGV[8])
end
local used
if released + dequeued > 0 or st.limit > old or opened then used = serve(ARGV[2], '') end
return {released, used or in_use(), old, st.limit, st.ceiling}
"""

# A 429 refused the request of ``holder`` (rejected in bound.py); its places are given
# back without serving the queue, unless nothing is held any more.
# ARGV: holder, number ('' when the 429 gave none), maximum, start, round when granted,
#       adaptive (1/0), jitter (0..1), ttl ms, channel, epoch known, lease ms
# -> {old bound, new bound, ceiling, reason ('' when unchanged), learned before}
REJECTED = """
lost(ARGV[10], ARGV[1], ARGV[11], ARGV[9])
local maximum, adaptive = tonumber(ARGV[3]), ARGV[6] == '1'
local st = load(maximum, tonumber(ARGV[4]))
local before = redis.call('HGET', KEYS[6], 'learned') or ''
local old, old_ceiling = st.limit, st.ceiling
local held = in_use()
local places = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local number = tonumber(ARGV[2])
if number then
  st.learned = number
  st.ceiling = math.max(1, math.min(number, maximum))
end
local probing = adaptive and st.good > 0 and held > st.good
local explained = probing
if number then explained = held > number end
local fresh = tonumber(ARGV[5]) == st.round or tonumber(ARGV[5]) < 0
if not explained and (fresh or st.backoff == 0) then
  st.backoff = math.min(MAX_BACKOFF, math.floor(st.backoff * BACKOFF_GROWTH + 0.5))
  if st.backoff == 0 then st.backoff = FIRST_BACKOFF end
  st.closed = now + math.floor(st.backoff * (0.5 + tonumber(ARGV[7]) / 2))
end
local new, reason = st.ceiling, 'learned'
local function option(value, why)
  if value < new then new, reason = value, why end
end
if adaptive and fresh then
  st.streak, st.slow = st.streak + 1, 0
  if probing then
    option(st.good, 'decreased')
    st.failed = math.min(st.failed + 1, MAX_PROBE_DOUBLINGS)
    st.failed_at = held
  elseif st.streak >= 2 then
    option(math.max(1, math.floor(old / 2)), 'decreased')
  end
end
if adaptive and not explained then
  option(math.max(1, held - places), 'held')
  -- Nothing left held: slow start again once a request goes through (bound.py).
  if held <= places then st.slow = 1 end
end
if new < old then
  st.good, st.round, st.run, st.limit = math.min(st.good, new), st.round + 1, 0, new
else
  new, reason = old, ''
end
save(st, new < old or st.ceiling ~= old_ceiling, ARGV[8])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if held - places <= 0 then serve(ARGV[9], '') end
return {old, new, st.ceiling, reason, before}
"""
