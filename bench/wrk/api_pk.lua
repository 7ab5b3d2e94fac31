-- POST /v1/api?csrf=<csrf>: a primary-key lookup of a random empId in 1..BENCH_IDS per request,
-- for W2 of bench/api.py. env: BENCH_JWT, BENCH_IDS (default 100000).
-- Non-2xx are counted by wrk itself (errors.status, >= 400).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local ids = tonumber(os.getenv("BENCH_IDS") or "100000")
local headers = {
   ["Content-Type"] = "application/json",
   ["Authorization"] = "Bearer " .. os.getenv("BENCH_JWT"),
}

function init(args)
   math.randomseed(os.time() * 1000 + (id or 1) * 7919)
end

function request()
   local body = '{"E":{"ds":"Employees","query":{"filter":[{"empId":{"eq":'
      .. math.random(1, ids) .. '}}]}}}'
   return wrk.format("POST", nil, headers, body)
end
