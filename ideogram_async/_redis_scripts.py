"""The Lua scripts of :class:`~ideogram_async.redis_allowance.RedisAllowance`.

Each step of the shared allowance is one script, so it is atomic on the Redis
server; every deadline is computed from the server's ``TIME`` (allowed in scripts
since Redis 5, which replicates their effects), never from the hosts' clocks.
Every script starts with :data:`PRELUDE` and is called with the same seven keys.

How the shared allowance works:

- **Holders and leases.** Each hold is a holder (a random id) with its places
  and a lease. A background task renews the leases of this process's holders
  every ``lease / 3`` seconds, so a process that dies (SIGKILL, a lost host)
  gives its places back when its leases end. Releases go by holder id: releasing
  a holder twice, or one that is not there, changes nothing.
- **Served in order, granted by whoever frees places.** Within a process, holds
  queue first come first served and only the first one waits on Redis. Across
  processes, the waiting ones take a ticket in a queue on Redis and only its head
  is served (a 4-place hold is not starved by a stream of 1-place ones); a ticket
  that is not refreshed (its process died) leaves the queue within a few seconds.
  The ticket carries what serving it needs (places, and its process's lease,
  maximum and start), so the script that frees places (a release, a lease that
  ended, a bound that grew) grants them to the queue's heads itself, in order
  while they fit, each with its own lease, and publishes each grant on a channel
  (``<ticket>:<in use>:<bound>:<ceiling>:<decreases>``). The waiter's process
  returns on that message without asking Redis again: a turnover of places costs
  one round trip and one message, not two round trips. A lost message is made up
  for by the fallback poll (every ``min(lease / 4, 1)`` seconds), whose acquire
  answers "granted" for a holder; a waiter cancelled before it heard of its grant
  releases the places by its id. A process that dies while waiting may be granted
  places just before its ticket ends; they come back when that lease ends. Processes
  awaiting ``released()`` are woken by an ``r`` on the same channel.
- **One bound for all.** The bound follows the same rules as
  :class:`~ideogram_async.allowance.LocalAllowance` (learned from a 429's number;
  when adaptive, a slow start from 10 places, halving on a 429 without a number
  at most once per round, growing back with completed requests), but its state
  is kept in Redis, so every process obeys what any of them learned. That state
  is forgotten after an hour without a change (the service's allowance may have
  been raised meanwhile); the next 429 teaches it again.
- **Faults.** If Redis cannot be reached when the allowance connects (the first
  hold, or :meth:`RedisAllowance.connect`), or is lost while a hold waits, the
  call raises :class:`~ideogram_async.SharedAllowanceError` naming the server:
  it never proceeds without a place. A block that already holds places runs to
  its end; if its release cannot reach Redis, its places come back when its lease
  ends. After a Redis restart (its data lost), the next renewal registers this
  process's holders again, and new holds work as before.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "COMPLETED", "LISTEN", "PRELUDE", "REJECTED", "RELEASE", "RENEW"]

# Keys, all under one hash tag so a Redis Cluster keeps them on one node:
#   KEYS[1] holders  sorted set: holder id -> lease end (ms, Redis time)
#   KEYS[2] places   hash: holder id -> places held
#   KEYS[3] queue    sorted set: waiting ticket (= its holder id) -> queue number
#   KEYS[4] waiting  hash: ticket -> "<expiry ms>:<places wanted>:<lease ms>:
#                    <maximum>:<start>" (what serving it needs)
#   KEYS[5] counter  the last queue number handed out
#   KEYS[6] bound    hash: limit, learned (the service's number), learned_at,
#                    threshold (slow start below it), completions, decreases
#   KEYS[7] listening  set while a process awaits ``released()`` (after a 429)
PRELUDE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

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

-- The current bound, and the ceiling it never rises above, for this process's
-- maximum and start (where the bound is before anything was learned).
local function bounds(maximum, start)
  local state = redis.call('HMGET', KEYS[6], 'limit', 'learned')
  local ceiling = maximum
  local learned = tonumber(state[2])
  if learned and learned < ceiling then ceiling = math.max(1, learned) end
  local bound = tonumber(state[1]) or start
  if bound > ceiling then bound = ceiling end
  return math.max(1, bound), ceiling
end

-- Grant places to the heads of the queue in order while they fit (each by its own
-- process's maximum, start and lease), telling each "<ticket>:<in use>:<bound>:
-- <ceiling>:<decreases>" on the channel (not the caller, which learns it from the
-- answer). A ticket without those numbers (an older client's) is only called.
-- Returns the places in use after, if it had to count them.
local function serve(channel, caller)
  local used, decreases
  while true do
    local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
    if not head then return used end
    local entry = redis.call('HGET', KEYS[4], head) or ''
    local want, lease, maximum, start = string.match(entry, '^%d+:(%d+):(%d+):(%d+):(%d+)$')
    if not start then redis.call('PUBLISH', channel, head) return used end
    local bound, ceiling = bounds(tonumber(maximum), tonumber(start))
    used = used or in_use()
    decreases = decreases or tonumber(redis.call('HGET', KEYS[6], 'decreases')) or 0
    -- A hold larger than a lowered bound goes alone rather than never.
    if used + tonumber(want) > bound and used > 0 then return used end
    redis.call('ZADD', KEYS[1], now + tonumber(lease), head)
    redis.call('HSET', KEYS[2], head, want)
    redis.call('ZREM', KEYS[3], head)
    redis.call('HDEL', KEYS[4], head)
    used = used + tonumber(want)
    if head ~= caller then
      local message = string.format('%s:%d:%d:%d:%d', head, used, bound, ceiling, decreases)
      redis.call('PUBLISH', channel, message)
    end
  end
end

-- Places were freed (or the bound grew): serve the queue and wake any process
-- awaiting released().
local function announce(channel, caller)
  local used = serve(channel, caller)
  if redis.call('EXISTS', KEYS[7]) == 1 then redis.call('PUBLISH', channel, 'r') end
  return used
end
"""

# ARGV: holder, places, maximum, start, lease ms, ticket ms, channel
# -> {granted, in use, bound, ceiling, decreases so far}
ACQUIRE = """
local id = ARGV[1]
local freed = purge()
local bound, ceiling = bounds(tonumber(ARGV[3]), tonumber(ARGV[4]))
local decreases = tonumber(redis.call('HGET', KEYS[6], 'decreases')) or 0
if redis.call('ZSCORE', KEYS[1], id) then
  return {1, in_use(), bound, ceiling, decreases}
end
if not redis.call('ZSCORE', KEYS[3], id) then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), id)
end
redis.call('HSET', KEYS[4], id, string.format('%d:%s:%s:%s:%s', now + tonumber(ARGV[6]),
           ARGV[2], ARGV[5], ARGV[3], ARGV[4]))
local used
if freed then used = announce(ARGV[7], id) else used = serve(ARGV[7], id) end
local granted = redis.call('ZSCORE', KEYS[1], id) and 1 or 0
return {granted, used or in_use(), bound, ceiling, decreases}
"""

# ARGV: lease ms, then holder, places pairs -> how many holders were missing
RENEW = """
local deadline = now + tonumber(ARGV[1])
local missing = 0
for i = 2, #ARGV, 2 do
  missing = missing + redis.call('ZADD', KEYS[1], deadline, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return missing
"""

# ARGV: holder, channel -> {released (0/1), in use}
RELEASE = """
local released = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local dequeued = redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local used
if released + dequeued > 0 then used = announce(ARGV[2], '') end
return {released, used or in_use()}
"""

# ARGV: ms -> nothing; releases are published for that long even with nobody queued
LISTEN = """
redis.call('SET', KEYS[7], '1', 'PX', ARGV[1])
"""

# ARGV: allowance ('' when the 429 gave none), maximum, start, decreases when the
#       hold was granted (-1: unknown), adaptive (1/0), channel, state ttl ms
# -> {old bound, new bound, ceiling, reason ('' when unchanged), learned before}
REJECTED = """
local maximum = tonumber(ARGV[2])
local old, ceiling = bounds(maximum, tonumber(ARGV[3]))
local state = redis.call('HMGET', KEYS[6], 'decreases', 'learned')
local decreases = tonumber(state[1]) or 0
local new, reason = old, ''
local function decrease(to, why)
  redis.call('HSET', KEYS[6], 'limit', to, 'threshold', math.max(to, old - 1),
             'completions', 0, 'decreases', decreases + 1)
  new, reason = to, why
end
if ARGV[1] ~= '' then
  local learned = tonumber(ARGV[1])
  redis.call('HSET', KEYS[6], 'learned', learned, 'learned_at', now)
  ceiling = math.max(1, math.min(learned, maximum))
  if ceiling < old then decrease(ceiling, 'learned') end
end
-- Only a request granted since the last decrease saw the lowered bound: the
-- others' 429s are the same overload and do not halve it again.
local round = tonumber(ARGV[4])
if reason == '' and ARGV[5] == '1' and (round < 0 or round == decreases) then
  decrease(math.max(1, math.floor(old / 2)), 'decreased')
end
redis.call('PEXPIRE', KEYS[6], ARGV[7])
return {old, new, ceiling, reason, state[2] or ''}
"""

# ARGV: maximum, start, channel, state ttl ms -> {old bound, new bound, ceiling}
# Below the threshold (a slow start) the bound grows by one per completed request,
# above it by one per as many completed requests as the bound.
COMPLETED = """
local maximum = tonumber(ARGV[1])
local old, ceiling = bounds(maximum, tonumber(ARGV[2]))
if old >= ceiling then return {old, old, ceiling} end
local state = redis.call('HMGET', KEYS[6], 'threshold', 'completions')
local threshold = tonumber(state[1]) or maximum
local completions = (tonumber(state[2]) or 0) + 1
local new = old
if old < threshold or completions >= old then
  new, completions = old + 1, 0
end
redis.call('HSET', KEYS[6], 'limit', new, 'completions', completions)
redis.call('PEXPIRE', KEYS[6], ARGV[4])
if new > old then announce(ARGV[3], '') end
return {old, new, ceiling}
"""
