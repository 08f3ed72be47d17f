package redisbroker

import "github.com/redis/go-redis/v9"

// publishScript is a room publish as one atomic step (the broker contract):
// idempotency key, next seq, history append and trim, expiry, PUBLISH.
// The message JSON is assembled here because only the script knows the
// epoch and seq; Go pre-encodes the other fields in protocol.Message's
// field order, so the event is byte-for-byte what the memory broker sends.
//
// With a store (an unstored key given) a room without a sequence is not
// started here: the script answers "!nohead" and Go seeds the room from
// the store's head (seedScript) and runs it again. The room is then
// marked unstored, due at ARGV[8]; ZADD LT keeps an earlier due time and
// moves a claim's later one back, which is how MarkStored sees that the
// room published after its claim.
//
// KEYS: meta hash, history list, idempotency key, unstored zset; a key not
// used ("" or the meta key again: a cluster needs every key in one slot)
// ARGV: room JSON, tail JSON (`"id":...,"from":...,"text":...,"ts":...`),
//
//	new epoch, history size, history TTL ms, key TTL ms, channel, due ms,
//	room, "PUBLISH" or (cluster mode) "SPUBLISH"
var publishScript = redis.NewScript(`
local meta, hist, idem, unstored = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if idem == meta then idem = "" end
if unstored == meta then unstored = "" end
if idem ~= "" then
  local prev = redis.call("GET", idem)
  if prev then return prev end
end
local epoch = redis.call("HGET", meta, "epoch")
if not epoch then
  if unstored ~= "" then return "!nohead" end
  epoch = ARGV[3]
  redis.call("DEL", hist)
  redis.call("HSET", meta, "epoch", epoch, "seq", 0)
end
local seq = redis.call("HINCRBY", meta, "seq", 1)
local msg = '{"type":"message","room":' .. ARGV[1] .. ',"epoch":"' .. epoch .. '","seq":' .. seq .. ',' .. ARGV[2] .. '}'
redis.call("RPUSH", hist, msg)
redis.call("LTRIM", hist, -tonumber(ARGV[4]), -1)
redis.call("PEXPIRE", meta, ARGV[5])
redis.call("PEXPIRE", hist, ARGV[5])
if idem ~= "" then
  redis.call("SET", idem, msg, "PX", ARGV[6])
end
if unstored ~= "" then
  redis.call("ZADD", unstored, "LT", ARGV[8], ARGV[9])
end
redis.call(ARGV[10] or "PUBLISH", ARGV[7], "M" .. msg)
return msg
`)

// historyScript reads a room's epoch, head seq and history in one step,
// starting the epoch when there is none (with a store: "!nohead", as
// publishScript).
//
// KEYS: meta hash, history list
// ARGV: new epoch, history TTL ms, "1" with a store
var historyScript = redis.NewScript(`
local meta, hist = KEYS[1], KEYS[2]
local epoch = redis.call("HGET", meta, "epoch")
if not epoch then
  if ARGV[3] == "1" then return "!nohead" end
  epoch = ARGV[1]
  redis.call("DEL", hist)
  redis.call("HSET", meta, "epoch", epoch, "seq", 0)
  redis.call("PEXPIRE", meta, ARGV[2])
end
local seq = redis.call("HGET", meta, "seq")
return {epoch, seq, redis.call("LRANGE", hist, 0, -1)}
`)

// seedScript starts a room's sequence at the store's head, unless another
// node did first: the room continues in the same epoch, and everything up
// to the head is stored.
//
// KEYS: meta hash, history list
// ARGV: epoch, seq, history TTL ms
var seedScript = redis.NewScript(`
local meta, hist = KEYS[1], KEYS[2]
if redis.call("EXISTS", meta) == 1 then return 0 end
redis.call("DEL", hist)
redis.call("HSET", meta, "epoch", ARGV[1], "seq", ARGV[2], "stored", ARGV[2])
redis.call("PEXPIRE", meta, ARGV[3])
return 1
`)

// claimScript hands out up to limit rooms due in the unstored zset, each
// due again at the claim's end (its token).
//
// KEYS: unstored zset
// ARGV: now ms, claim end ms, limit
var claimScript = redis.NewScript(`
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[3]))
for _, room in ipairs(due) do
  redis.call("ZADD", KEYS[1], ARGV[2], room)
end
return due
`)

// storedScript moves a room's stored mark forward within its epoch.
//
// KEYS: meta hash
// ARGV: epoch, seq
var storedScript = redis.NewScript(`
if redis.call("HGET", KEYS[1], "epoch") ~= ARGV[1] then return 0 end
local stored = tonumber(redis.call("HGET", KEYS[1], "stored") or "0")
if tonumber(ARGV[2]) > stored then redis.call("HSET", KEYS[1], "stored", ARGV[2]) end
return 1
`)

// releaseScript clears a room's unstored mark if it is still the claim's
// (a publish since the claim moved it).
//
// KEYS: unstored zset
// ARGV: room, claim token
var releaseScript = redis.NewScript(`
local score = redis.call("ZSCORE", KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then redis.call("ZREM", KEYS[1], ARGV[1]) end
return 0
`)

// presenceLib is the start of every room presence script: the room's keys
// and the steps they share. Every key is the room's (one hash tag, so one
// slot of a Redis Cluster); the invariant the steps keep is that a client
// is counted (in counts and, through its user, in index) exactly when it
// is in the users hash.
//
// KEYS: clients zset (client -> expiry ms), users hash (client -> user),
//
//	counts hash (user -> connections), index zset (users, score 0)
const presenceLib = `
local clients, users, counts, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- uncount takes one connection of user out of counts and reports whether
-- it was the user's last, which also takes the user out of index.
local function uncount(user)
  if redis.call("HINCRBY", counts, user, -1) > 0 then return false end
  redis.call("HDEL", counts, user)
  redis.call("ZREM", index, user)
  return true
end

-- forget uncounts a client already gone from clients and reports whether
-- its user left the room with it.
local function forget(client)
  local user = redis.call("HGET", users, client)
  if not user then return false end
  redis.call("HDEL", users, client)
  return uncount(user)
end

-- trim removes the clients whose expiry is before now (ms): connections
-- of nodes that stopped refreshing them. Each expires once, so a trim
-- costs O(log N) plus what it removes.
local function trim(now)
  local gone = redis.call("ZRANGEBYSCORE", clients, "-inf", "(" .. now)
  if #gone == 0 then return end
  redis.call("ZREMRANGEBYSCORE", clients, "-inf", "(" .. now)
  for _, client in ipairs(gone) do forget(client) end
end
`

// joinScript records connections of users in a room, or moves their
// expiry when they are there already, and reports {changed, count}:
// changed is how many of the users are new to the room (for a Join's one
// connection, 1 when it is its user's first there). The refresh runs it
// for all of a node's connections in the room, which re-counts entries
// Redis lost.
//
// ARGV: now ms, expiry ms, key TTL ms, then client, user for each connection
var joinScript = redis.NewScript(presenceLib + `
trim(ARGV[1])
local changed = 0
for i = 4, #ARGV, 2 do
  local client, user = ARGV[i], ARGV[i + 1]
  redis.call("ZADD", clients, ARGV[2], client)
  if redis.call("HSETNX", users, client, user) == 1 then
    if redis.call("HINCRBY", counts, user, 1) == 1 then
      redis.call("ZADD", index, 0, user)
      changed = changed + 1
    end
  end
end
for _, key in ipairs(KEYS) do redis.call("PEXPIRE", key, ARGV[3]) end
return {changed, redis.call("ZCARD", index)}
`)

// leaveScript takes connections out of a room and reports {changed,
// count}: changed is how many users left with them (for a Leave's one
// connection, 1 when it was its user's last there).
//
// ARGV: now ms, then the clients
var leaveScript = redis.NewScript(presenceLib + `
trim(ARGV[1])
local changed = 0
for i = 2, #ARGV do
  redis.call("ZREM", clients, ARGV[i])
  if forget(ARGV[i]) then changed = changed + 1 end
end
return {changed, redis.call("ZCARD", index)}
`)

// membersScript reads a page of a room's users and reports {count, users,
// connections}. HMGET goes in parts: Redis's Lua unpacks at most a few
// thousand values at once.
//
// ARGV: now ms, after ("": from the first), limit (0: all)
var membersScript = redis.NewScript(presenceLib + `
trim(ARGV[1])
local from = "-"
if ARGV[2] ~= "" then from = "(" .. ARGV[2] end
local page
local limit = tonumber(ARGV[3])
if limit > 0 then
  page = redis.call("ZRANGEBYLEX", index, from, "+", "LIMIT", 0, limit)
else
  page = redis.call("ZRANGEBYLEX", index, from, "+")
end
local conns = {}
for i = 1, #page, 500 do
  local part = redis.call("HMGET", counts, unpack(page, i, math.min(i + 499, #page)))
  for _, n in ipairs(part) do conns[#conns + 1] = n end
end
return {redis.call("ZCARD", index), page, conns}
`)

// countScript counts a room's users.
//
// ARGV: now ms
var countScript = redis.NewScript(presenceLib + `
trim(ARGV[1])
return redis.call("ZCARD", index)
`)
