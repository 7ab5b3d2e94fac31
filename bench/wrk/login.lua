-- POST /v1/auth with `Authorization: Token base64(user:password)` and body {}.
-- env: BENCH_AUTH (the base64 credential), BENCH_TOKENS_OUT (optional: a path prefix; each
-- thread appends "<jwt> <csrf>" lines of its successful logins to <prefix>.<thread id>).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Token " .. os.getenv("BENCH_AUTH")

local out = nil

function init(args)
   local prefix = os.getenv("BENCH_TOKENS_OUT")
   if prefix and prefix ~= "" then
      out = io.open(prefix .. "." .. tostring(id), "w")
   end
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      bad = bad + 1
      if not first_bad then first_bad = tostring(status) .. " " .. body:sub(1, 200) end
      return
   end
   if out then
      local jwt = body:match('"jwt"%s*:%s*"([^"]+)"')
      local csrf = body:match('"csrf"%s*:%s*"([^"]+)"')
      if jwt and csrf then
         out:write(jwt, " ", csrf, "\n")
         out:flush()
      end
   end
end
