-- A plain GET of the URL given to wrk, for the reference phases (no authentication).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
