-- Loaded by bench's wrk scripts (dofile): counts every response by status, per thread, and when the
-- run ends prints the one line bench/wrk.py reads:
--   BENCH {"duration_us": .., "requests": .., "errors": {..}, "latency_us": {..}, "statuses": {..}, "extra": {..}}
-- wrk's own summary counts any status below 400 as a success and says nothing when it has no
-- answer at all; this line gives every status apart, so that only 2xx count as throughput.
-- A script registers each thread with register_thread(thread) from its setup(), and may add counters
-- to the per-thread table `extra`: keys starting with "max_" are combined by maximum, others summed.

statuses = {}
extra = {}
local threads = {}

function register_thread(thread)
    table.insert(threads, thread)
end

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
end

local function json_object(counts)
    local parts = {}
    for key, n in pairs(counts) do
        parts[#parts + 1] = string.format('"%s": %d', tostring(key), n)
    end
    return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
    local codes, counters = {}, {}
    for _, thread in ipairs(threads) do
        for status, n in pairs(thread:get("statuses")) do
            codes[status] = (codes[status] or 0) + n
        end
        for key, n in pairs(thread:get("extra")) do
            if key:sub(1, 4) == "max_" then
                counters[key] = math.max(counters[key] or n, n)
            else
                counters[key] = (counters[key] or 0) + n
            end
        end
    end
    local e = summary.errors
    io.write(string.format(
        'BENCH {"duration_us": %d, "requests": %d, "errors": {"connect": %d, "read": %d, "write": %d, '
        .. '"timeout": %d}, "latency_us": {"p50": %d, "p99": %d}, "statuses": %s, "extra": %s}\n',
        summary.duration, summary.requests, e.connect, e.read, e.write, e.timeout,
        latency:percentile(50), latency:percentile(99), json_object(codes), json_object(counters)))
end
