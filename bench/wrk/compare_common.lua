-- Shared by the compare_*.lua scripts (bench/compare.py): a machine-readable summary line
-- `RESULT {...}` printed by done(). Non-2xx answers are counted by wrk itself
-- (summary.errors.status: every status >= 400; neither server answers 1xx/3xx to these
-- requests), so no response() hook runs and wrk's own cost per request stays small and the
-- same for both servers.

local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

-- Reads a whole file (request bodies are passed as files, so no quoting issues in env vars).
function slurp(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("*a")
   f:close()
   return s
end

-- "Name: value" lines of the file named by env BENCH_HEADERS (optional) as a table.
function bench_headers()
   local h = {}
   local path = os.getenv("BENCH_HEADERS")
   if path and path ~= "" then
      for line in io.lines(path) do
         local k, v = line:match("^([^:]+):%s*(.-)%s*$")
         if k then h[k] = v end
      end
   end
   return h
end

function done(summary, latency, requests)
   local secs = summary.duration / 1e6
   local e = summary.errors
   io.write(string.format(
      'RESULT {"requests": %d, "seconds": %.3f, "rps": %.1f, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
      '"err_connect": %d, "err_read": %d, "err_write": %d, "err_timeout": %d, ' ..
      '"err_status": %d}\n',
      summary.requests, secs, summary.requests / secs,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean,
      e.connect, e.read, e.write, e.timeout, e.status))
end
