-- wrk script for the many-connections test: every connection stays open (keep-alive) and sends a
-- list request on average every <delay_ms> milliseconds, at a random moment (uniform in 0..2x), so the
-- connections do not fire together. Arguments: <data folder> <delay_ms>
-- Status counting and the BENCH line: report.lua, next to this file.

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local delay_ms = 1000

function setup(thread)
    register_thread(thread)
end

function init(args)
    tokens = {}
    for line in io.lines(args[1] .. "/tokens.txt") do tokens[#tokens + 1] = line end
    delay_ms = tonumber(args[2])
    math.randomseed(os.time())
end

function request()
    return wrk.format("GET", "/api/tasks?limit=5", {["Authorization"] = "Bearer " .. tokens[math.random(#tokens)]})
end

function delay()
    return math.random(0, 2 * delay_ms)
end
