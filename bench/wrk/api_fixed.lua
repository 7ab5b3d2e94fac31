-- POST /v1/api?csrf=<csrf> (the URL given to wrk) with one fixed body, for W1 of bench/api.py.
-- env: BENCH_JWT, BENCH_BODY (the JSON body). The request is built once, so wrk's own cost per
-- request is as small as it gets. Non-2xx are counted by wrk itself (errors.status, >= 400).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_JWT")
