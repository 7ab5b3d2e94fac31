-- POST /v1/api?csrf=<csrf>: one single-row insert per request, for W4 of bench/api.py.
-- env: BENCH_JWT, BENCH_PREFIX (name prefix, default "Bench"), BENCH_ACK_OUT (optional path
-- prefix: each thread writes the name of every row acknowledged with a 2xx to <prefix>.<id>).
-- Rows are named "<prefix> <thread id>-<n>", unique per run. The response() hook counts 2xx
-- (`ok`) and non-2xx (`bad`, first one kept); done() adds a line
-- `INSERTS {"ok": N, "issued": {"<thread id>": <requests made>, ...}}`: a request made but not
-- answered was in flight when wrk's clock ran out (wrk closes the socket without reading it).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local prefix = os.getenv("BENCH_PREFIX") or "Bench"
local headers = {
   ["Content-Type"] = "application/json",
   ["Authorization"] = "Bearer " .. os.getenv("BENCH_JWT"),
}
local out = nil
ok, issued = 0, 0

local all = {}
local base_setup, base_done = setup, done

function setup(thread)
   base_setup(thread)
   table.insert(all, thread)
end

function init(args)
   local p = os.getenv("BENCH_ACK_OUT")
   if p and p ~= "" then
      out = io.open(p .. "." .. tostring(id), "w")
   end
end

function request()
   issued = issued + 1
   local body = '{"E":{"ds":"Employees","data":[{"_rs":"I","name":"' .. prefix .. ' '
      .. tostring(id) .. '-' .. issued .. '","salary":1234}]}}'
   return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
   if status < 200 or status > 299 then
      bad = bad + 1
      if not first_bad then first_bad = tostring(status) .. " " .. body:sub(1, 200) end
      return
   end
   ok = ok + 1
   if out then
      out:write(body:match('"name":"([^"]*)"') or "?", "\n")
      out:flush()
   end
end

function done(summary, latency, requests)
   base_done(summary, latency, requests)
   local total, parts = 0, {}
   for _, t in ipairs(all) do
      total = total + (t:get("ok") or 0)
      table.insert(parts, string.format('"%d": %d', t:get("id"), t:get("issued") or 0))
   end
   io.write(string.format('INSERTS {"ok": %d, "issued": {%s}}\n', total,
                          table.concat(parts, ", ")))
end
