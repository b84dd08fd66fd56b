-- load.lua: the one wrk script behind every figure of `make bench`.
--
-- Every measured target is driven by this same script, so that what differs
-- between two figures of a run is the server, never the generator. It is set
-- up from the environment (wrk gives script arguments only to init(), too late
-- to decide whether request() and delay() exist):
--
--   BENCH_MODE       "rent": POST /orders, cycling through pre-built requests
--                    that rotate productId over the bench fleet's models, so
--                    that no model ever runs out of cars and no row is hot;
--                    "get": GET the URL's path, a static request.
--   BENCH_MODELS     rent: how many models the fleet has (ids 1001, 1002, ...)
--   BENCH_EXPECT     the status every answer should have (201, 200)
--   BENCH_DELAY_MS   when set: wait that long before each request of a
--                    connection, to throttle the load (wrk2 is not in Debian)
--   BENCH_TOKEN_FILE rent: one customer token per line (customers bench-0,
--                    bench-1, ...): rental n is made by customer n % lines,
--                    with that customer's Authorization: Bearer
--   BENCH_TOKEN      get: the token every GET carries (staff)
--
-- response() counts every answer whose status is not BENCH_EXPECT, per status,
-- and keeps the first such body to say what went wrong. done() prints one
-- line, "BENCH {json}", with the totals, the socket errors and the latency
-- percentiles (microseconds) that bench.py reads.

local mode = os.getenv("BENCH_MODE") or "get"
local expect = tonumber(os.getenv("BENCH_EXPECT") or "200")
local models = tonumber(os.getenv("BENCH_MODELS") or "10")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
local token_file = os.getenv("BENCH_TOKEN_FILE")
local get_token = os.getenv("BENCH_TOKEN")

local tokens = {}
if token_file then
   for line in io.lines(token_file) do
      if #line > 0 then table.insert(tokens, line) end
   end
end

local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_index", thread_count)
   table.insert(threads, thread)
end

-- A rental body as a customer sends it, signed in as that customer (the
-- token says who; the body need not); ids vary so rows and events differ.
local function rental_request(n)
   local body = string.format('{"productId": "%d", "qty": 1, "cardNumber": "4111111111111111"}',
      1001 + (n % models))
   local headers = {["Content-Type"] = "application/json"}
   if #tokens > 0 then
      headers["Authorization"] = "Bearer " .. tokens[n % #tokens + 1]
   end
   return wrk.format("POST", "/orders", headers, body)
end

local ring, ring_size, ring_next = {}, 0, 0

if get_token and mode ~= "rent" then
   wrk.headers["Authorization"] = "Bearer " .. get_token
end

function init(args)
   unexpected = 0
   statuses = {}
   first_unexpected = nil
   if mode == "rent" then
      -- Pre-built: building a request per call would cost the generator
      -- CPU that this 2-core machine's servers need.
      ring_size = 1000
      local offset = (thread_index or 1) * 7
      for i = 1, ring_size do
         ring[i] = rental_request(i + offset)
      end
   end
end

if mode == "rent" then
   function request()
      ring_next = ring_next % ring_size + 1
      return ring[ring_next]
   end
end

if delay_ms and delay_ms > 0 then
   function delay()
      return delay_ms
   end
end

function response(status, headers, body)
   if status ~= expect then
      unexpected = unexpected + 1
      local key = tostring(status)
      statuses[key] = (statuses[key] or 0) + 1
      if first_unexpected == nil then
         first_unexpected = string.sub(body or "", 1, 300)
      end
   end
end

-- A JSON string literal (the first unexpected body may hold anything).
local function quote(s)
   s = string.gsub(s, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local total_unexpected, first = 0, nil
   local by_status = {}
   for _, thread in ipairs(threads) do
      total_unexpected = total_unexpected + (thread:get("unexpected") or 0)
      for status, count in pairs(thread:get("statuses") or {}) do
         by_status[status] = (by_status[status] or 0) + count
      end
      first = first or thread:get("first_unexpected")
   end
   local parts = {}
   for status, count in pairs(by_status) do
      table.insert(parts, string.format('"%s": %d', status, count))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
      '"unexpected": %d, "unexpected_by_status": {%s}, "first_unexpected": %s, ' ..
      '"mean_us": %.1f, "min_us": %d, "max_us": %d, "p50_us": %d, "p90_us": %d, ' ..
      '"p99_us": %d, "p999_us": %d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.timeout,
      total_unexpected, table.concat(parts, ", "), first and quote(first) or "null",
      latency.mean, latency.min, latency.max,
      latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end
