-- wrk script: durable appends of MESSAGE_BYTES-byte messages to random contexts
-- ctx-0 … ctx-(CONTEXTS-1) (created beforehand), the load of `loadgen --mix append=1`
-- from a C client. Prints one JSON line at the end (`done`) for the bench scripts.
--   wrk -t2 -c50 -d10s -s bench/wrk/append.lua http://127.0.0.1:4000
local contexts = tonumber(os.getenv("CONTEXTS") or "1000")
local text = string.rep("x", tonumber(os.getenv("MESSAGE_BYTES") or "200"))
local body = '{"message":{"role":"user","parts":[{"type":"text","text":"' .. text .. '"}]}}'
local headers = { ["Content-Type"] = "application/json" }
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(id * 7919 + os.time())
end

function request()
  return wrk.format("POST", "/v1/contexts/ctx-" .. math.random(0, contexts - 1) .. "/messages", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx_3xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
