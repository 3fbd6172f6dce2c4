-- wrk script of bench/gunicorn.py: GET /movie/<random id>, then one JSON line of results.
--
--   wrk -t2 -c16 -d60s -s bench/wrk_random.lua http://127.0.0.1:PORT -- <records> <seed>
--
-- Keys are uniform over 0..records-1 (every one exists), from LuaJIT's math.random seeded with
-- seed and the thread's number, so that every run with the same settings asks for the same keys.
-- done() prints "WRKJSON {...}": requests, duration, bytes, errors (wrk counts a status >= 400
-- as a status error) and latency in microseconds (percentiles of wrk's histogram of every request).

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  records = tonumber(args[1]) or 1000000
  local seed = tonumber(args[2]) or 1
  math.randomseed(seed * 1000 + thread_number)
end

function request()
  return wrk.format("GET", "/movie/" .. math.random(0, records - 1))
end

-- Latency percentiles at 0.1 % steps, 0.01 % steps above 99.9 %, and the maximum: enough to merge
-- runs (bench/gunicorn.py adds up several windows) with a rank error of at most 0.1 %.
function done(summary, latency, requests)
  local e = summary.errors
  local mean, stdev = latency.mean, latency.stdev
  if mean ~= mean then mean = 0 end -- NaN: no request completed
  if stdev ~= stdev then stdev = 0 end
  local levels, values = {}, {}
  for i = 1, 999 do
    levels[#levels + 1] = i / 10
  end
  for i = 1, 9 do
    levels[#levels + 1] = 99.9 + i / 100
  end
  for _, p in ipairs(levels) do
    values[#values + 1] = string.format("%d", latency:percentile(p))
  end
  levels[#levels + 1] = 100
  values[#values + 1] = string.format("%d", latency.max)
  for i, p in ipairs(levels) do
    levels[i] = string.format("%g", p)
  end
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "threads": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f, '
      .. '"levels": [%s], "values": [%s]}}\n',
    summary.requests, summary.duration, summary.bytes, threads,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, mean, stdev,
    table.concat(levels, ", "), table.concat(values, ", ")
  ))
end
