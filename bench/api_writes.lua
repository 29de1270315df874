-- bench.api_bench's write load under wrk: each connection's requests alternate between
-- POST /api/tunnels and a DELETE of a tunnel a POST made (the ids go through one queue per wrk
-- thread), so the writes' latency is measured by a C client, as the GETs' is.
-- wrk -t1 -c8 -s api_writes.lua -H "Cookie: ..." http://HOST:PORT -- PREFIX
local prefix, made, ids = "w", 0, {}

function init(args)
  prefix = args[1] or prefix
end

local function headers(extra)
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  for k, v in pairs(extra) do h[k] = v end
  return h
end

function request()
  local id = table.remove(ids, 1)
  if id then
    return wrk.format("DELETE", "/api/tunnels/" .. id, headers({}))
  end
  made = made + 1
  local name = prefix .. made
  local body = '{"name": "' .. name .. '", "subdomain": "' .. name .. '", "local_port": 3000}'
  return wrk.format("POST", "/api/tunnels", headers({["Content-Type"] = "application/json"}), body)
end

function response(status, hdrs, body)
  local id = status == 200 and body:match('"tunnel":%s*{.-"id":%s*(%d+)')
  if id then table.insert(ids, id) end
end
