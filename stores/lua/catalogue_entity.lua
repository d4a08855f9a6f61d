-- One entity key's catalogue features (stores/catalogue_store.py builds the call from the
-- declarations in model/catalogue.py): every key below carries the entity's hash tag, so
-- this runs in one slot. Scores are event timestamps passed as exact doubles ('%.17g').
--
-- KEYS[1]   the entity's payments: member payment_id, score its timestamp
-- KEYS[1+k] the entity's k-th kept set: member the other entity's key, score the latest
--           timestamp it came with, at most cap members (the latest, ties by member)
-- ARGV      payment_id, ts, trim (scores below it are dropped: older than any window a
--           payment up to the lateness margin can see), ttl_ms, then
--           n_count, count windows...  since (0|1), retention,
--           per kept set: member ('' when the payment has none), cap,
--                         n_distinct, windows..., n_novel, windows...
-- Reply     the values in that order, as strings ('' for a missing value)

local pid, ts, t, trim, ttl = ARGV[1], ARGV[2], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local function num(x) return string.format('%.17g', x) end
local out = {}
local i = 5

local n_count = tonumber(ARGV[i]); i = i + 1
local count_windows = {}
for k = 1, n_count do count_windows[k] = tonumber(ARGV[i]); i = i + 1 end
local since = ARGV[i] == '1'; i = i + 1
local retention = tonumber(ARGV[i]); i = i + 1

if n_count > 0 or since then
  local pays = KEYS[1]
  if since then
    -- the latest timestamp of the entity's other payments: the first of the top two that
    -- is not this one (a retry scored anew finds itself there)
    local top = redis.call('ZRANGE', pays, '+inf', '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 2,
                           'WITHSCORES')
    local latest = nil
    for k = 1, #top, 2 do
      if top[k] ~= pid then latest = tonumber(top[k + 1]); break end
    end
    if latest == nil or t - latest > retention then
      out[#out + 1] = ''
    else
      out[#out + 1] = num(math.max(t - latest, 0))
    end
  end
  redis.call('ZADD', pays, ts, pid)
  redis.call('ZREMRANGEBYSCORE', pays, '-inf', '(' .. trim)
  redis.call('PEXPIRE', pays, ttl)
  for k = 1, n_count do
    out[#out + 1] = tostring(redis.call('ZCOUNT', pays, '(' .. num(t - count_windows[k]), ts))
  end
end

for s = 2, #KEYS do
  local kept = KEYS[s]
  local member = ARGV[i]; i = i + 1
  local cap = tonumber(ARGV[i]); i = i + 1
  local before = false
  if member ~= '' then
    before = redis.call('ZSCORE', kept, member)
    redis.call('ZADD', kept, 'GT', ts, member)
    local size = redis.call('ZCARD', kept)
    if size > cap then redis.call('ZREMRANGEBYRANK', kept, 0, size - cap - 1) end
  end
  redis.call('ZREMRANGEBYSCORE', kept, '-inf', '(' .. trim)
  redis.call('PEXPIRE', kept, ttl)
  local n_distinct = tonumber(ARGV[i]); i = i + 1
  for k = 1, n_distinct do
    local w = tonumber(ARGV[i]); i = i + 1
    out[#out + 1] = tostring(redis.call('ZCOUNT', kept, '(' .. num(t - w), ts))
  end
  local n_novel = tonumber(ARGV[i]); i = i + 1
  for k = 1, n_novel do
    local w = tonumber(ARGV[i]); i = i + 1
    if member == '' then
      out[#out + 1] = ''
    elseif not before or tonumber(before) <= t - w then
      out[#out + 1] = '1'
    else
      out[#out + 1] = '0'
    end
  end
end
return out
