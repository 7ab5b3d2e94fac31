-- Shared wrk (4.x) helpers: a machine-readable summary line printed by done().
-- Loaded with dofile() by the phase scripts; BENCH_LUA_DIR is set by foundation.py.

local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

-- Per-thread counters, filled by response() in scripts that define it.
bad, first_bad = 0, nil

local function jsonstr(s)
   if s == nil then return "null" end
   s = tostring(s):gsub('\\', '\\\\'):gsub('"', '\\"'):gsub('[%c]', ' ')
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local secs = summary.duration / 1e6
   local e = summary.errors
   local bad_total, sample = 0, nil
   for _, t in ipairs(threads) do
      local b = t:get("bad")
      if b then bad_total = bad_total + b end
      sample = sample or t:get("first_bad")
   end
   io.write(string.format(
      'RESULT {"requests": %d, "seconds": %.3f, "rps": %.1f, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
      '"err_connect": %d, "err_read": %d, "err_write": %d, "err_timeout": %d, ' ..
      '"err_status": %d, "non2xx_hook": %d, "bad_sample": %s}\n',
      summary.requests, secs, summary.requests / secs,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean,
      e.connect, e.read, e.write, e.timeout, e.status, bad_total, jsonstr(sample)))
end
