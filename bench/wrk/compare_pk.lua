-- W2 of bench/compare.py: primary-key lookups of random rows 1..BENCH_ROWS.
-- Each thread pre-builds BENCH_PREBUILT requests for ids drawn from its own seeded generator
-- (seed BENCH_SEED + thread id), then cycles through them, so the per-request cost in wrk is one
-- Lua call, the same for both servers.
-- env: BENCH_LUA_DIR, BENCH_KIND ("pb" or "ours"), BENCH_ROWS, BENCH_SEED, BENCH_PREBUILT,
--      BENCH_HEADERS (a file of "Name: value" lines), BENCH_PATH (ours: "/v1/api?csrf=...").
dofile(os.getenv("BENCH_LUA_DIR") .. "/compare_common.lua")

local reqs, n, i = {}, 0, 0

function init(args)
   local kind = os.getenv("BENCH_KIND")
   local rows = tonumber(os.getenv("BENCH_ROWS"))
   local want = tonumber(os.getenv("BENCH_PREBUILT") or "20000")
   math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1") + (id or 1) * 7919)
   local h = bench_headers()
   for k = 1, want do
      local row = math.random(1, rows)
      if kind == "pb" then
         reqs[k] = wrk.format("GET", string.format(
            "/api/collections/employees/records/e%014d", row), h)
      else
         reqs[k] = wrk.format("POST", os.getenv("BENCH_PATH"), h, string.format(
            '{"E":{"ds":"Employees","query":{"filter":[{"empId":{"eq":%d}}]}}}', row))
      end
   end
   n = want
end

function request()
   i = i % n + 1
   return reqs[i]
end
