-- wrk script for bench/bigdata.py: the same request, with one user's token, again and again.
-- Arguments (after `--`): <path and query> <token> [<header name> <header value>]
-- Status counting and the BENCH line: report.lua, next to this file.

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local path, headers

function setup(thread)
    register_thread(thread)
end

function init(args)
    path = args[1]
    headers = {["Authorization"] = "Bearer " .. args[2]}
    if args[3] then headers[args[3]] = args[4] end
end

function request()
    return wrk.format("GET", path, headers)
end
