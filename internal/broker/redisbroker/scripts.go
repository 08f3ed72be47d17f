package redisbroker

import "github.com/redis/go-redis/v9"

// publishScript is a room publish as one atomic step (the broker contract):
// idempotency key, next seq, history append and trim, expiry, PUBLISH.
// The message JSON is assembled here because only the script knows the
// epoch and seq; Go pre-encodes the other fields in protocol.Message's
// field order, so the event is byte-for-byte what the memory broker sends.
//
// KEYS: meta hash, history list, idempotency key ("" for none)
// ARGV: room JSON, tail JSON (`"id":...,"from":...,"text":...,"ts":...`),
//
//	new epoch, history size, history TTL ms, key TTL ms, channel
var publishScript = redis.NewScript(`
local meta, hist, idem = KEYS[1], KEYS[2], KEYS[3]
if idem ~= "" then
  local prev = redis.call("GET", idem)
  if prev then return prev end
end
local epoch = redis.call("HGET", meta, "epoch")
if not epoch then
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
redis.call("PUBLISH", ARGV[7], "M" .. msg)
return msg
`)

// historyScript reads a room's epoch, head seq and history in one step,
// starting the epoch when there is none.
//
// KEYS: meta hash, history list
// ARGV: new epoch, history TTL ms
var historyScript = redis.NewScript(`
local meta, hist = KEYS[1], KEYS[2]
local epoch = redis.call("HGET", meta, "epoch")
if not epoch then
  epoch = ARGV[1]
  redis.call("DEL", hist)
  redis.call("HSET", meta, "epoch", epoch, "seq", 0)
  redis.call("PEXPIRE", meta, ARGV[2])
end
local seq = redis.call("HGET", meta, "seq")
return {epoch, seq, redis.call("LRANGE", hist, 0, -1)}
`)
