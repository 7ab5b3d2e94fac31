-- GET /v1/session?csrf=<csrf> with `Authorization: Bearer <jwt>`, cycling through the
-- "<jwt> <csrf>" lines of the file named by BENCH_TOKENS (one line = the same token every time).
-- Requests are pre-built, so the per-request cost in wrk is one Lua call, the same for 1 or N
-- tokens. Each thread starts at a different offset.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local reqs, n, i = {}, 0, 0

function init(args)
   for line in io.lines(os.getenv("BENCH_TOKENS")) do
      local jwt, csrf = line:match("^(%S+)%s+(%S+)")
      if jwt then
         n = n + 1
         reqs[n] = wrk.format("GET", "/v1/session?csrf=" .. csrf,
                              { ["Authorization"] = "Bearer " .. jwt })
      end
   end
   if n == 0 then error("no tokens in " .. os.getenv("BENCH_TOKENS")) end
   i = ((id or 1) - 1) * math.floor(n / 7 + 1) % n
end

function request()
   i = i % n + 1
   return reqs[i]
end

-- Non-2xx are counted by wrk itself (errors.status, status >= 400); a response() hook would
-- make wrk hand every body to Lua and skew the comparison with the cheap GET.
