-- One fixed request, built once per thread and sent again and again (W1, W3, W4 and the
-- startup/peak phases of bench/compare.py).
-- env: BENCH_LUA_DIR, BENCH_METHOD (GET|POST), BENCH_PATH (path and query string),
--      BENCH_BODY (optional: a file holding the body), BENCH_HEADERS (optional: a file of
--      "Name: value" lines).
dofile(os.getenv("BENCH_LUA_DIR") .. "/compare_common.lua")

local req

function init(args)
   local body = nil
   local bf = os.getenv("BENCH_BODY")
   if bf and bf ~= "" then body = slurp(bf) end
   req = wrk.format(os.getenv("BENCH_METHOD") or "GET", os.getenv("BENCH_PATH"),
                    bench_headers(), body)
end

function request()
   return req
end
