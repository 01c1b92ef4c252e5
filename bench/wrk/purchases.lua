-- wrk script: POST /v1/purchases, one buyer token per request, a unique Idempotency-Key per click.
-- Arguments (after `--`): tokens file (one JWT per line), mode, comma-separated SKUs, threads.
--   mode "per-buyer": request n of the run is buyer n's only click (token line n, key k<n>);
--     past the file's end requests repeat earlier clicks (same token, same key: retries), counted
--     in "repeated".
--   mode "repeat": buyers are reused round-robin, every request with its own key.
-- The buyer is the token's subject: the body carries no user_id.
-- Every thread keeps the ids of the purchases answered 2xx (for the bench's "lost" check), the
-- count of answers per status and per second; done() prints one JSON object for the harness.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  tokens = {}
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
  end
  mode = args[2]
  skus = {}
  for s in string.gmatch(args[3], "[^,]+") do table.insert(skus, s) end
  nthreads = tonumber(args[4] or "1")
  n = 0
  repeated = 0
  statuses = {}
  ids = {}
  seconds = {}
end

function request()
  n = n + 1
  -- this thread's share of the file: lines tid, tid + nthreads, ...
  local click = (n - 1) * nthreads + tid
  local line = ((click - 1) % #tokens) + 1
  local key = click
  if mode ~= "repeat" then
    key = line
    if click > #tokens then repeated = repeated + 1 end
  end
  local sku = skus[(n % #skus) + 1]
  local body = '{"sku":"' .. sku .. '","qty":1}'
  return wrk.format("POST", "/v1/purchases",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = "k" .. key,
     ["Authorization"] = tokens[line]}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if (status >= 200 and status < 300) or status == 409 then
    -- 409 = sold out, a definitive answer: counted in the answers per second
    local s = os.time()
    seconds[s] = (seconds[s] or 0) + 1
  end
  if status >= 200 and status < 300 then
    local id = string.match(body, '"id":%s*"([^"]+)"')
    if id then ids[#ids + 1] = id end
  end
end

local function json_counts(t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = '"' .. tostring(k) .. '":' .. v end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local st, secs, all_ids, rep = {}, {}, {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do st[k] = (st[k] or 0) + v end
    for k, v in pairs(t:get("seconds")) do secs[k] = (secs[k] or 0) + v end
    for _, id in ipairs(t:get("ids")) do all_ids[#all_ids + 1] = '"' .. id .. '"' end
    rep = rep + t:get("repeated")
  end
  local e = summary.errors
  io.write('WRK_JSON {"requests":', summary.requests, ',"duration_us":', summary.duration,
    ',"errors":{"connect":', e.connect, ',"read":', e.read, ',"write":', e.write,
    ',"timeout":', e.timeout, ',"status":', e.status, '}',
    ',"latency_us":{"p50":', latency:percentile(50), ',"p95":', latency:percentile(95),
    ',"p99":', latency:percentile(99), ',"max":', latency.max, ',"mean":', latency.mean, '}',
    ',"statuses":', json_counts(st), ',"seconds":', json_counts(secs), ',"repeated":', rep,
    ',"ids":[', table.concat(all_ids, ","), ']}\n')
end
