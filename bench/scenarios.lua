-- wrk script for `python -m bench`: one scenario per run, requests spread over many users' tokens.
-- Arguments (after `--`): <scenario> <data folder> <wrk thread count> <first delete index> [<token file>]
-- The folder holds tokens.txt (one per user), pairs.txt ("<token index> <task id>" of that user's
-- tasks) and deletes.txt (pairs used once each: thread t takes first, first + threads, ... so no task
-- is deleted twice; bench/run.py passes the next unused index to the next delete run).
-- <token file>: for list_cold, tokens used once each (every request's token is one the server has
-- never seen, so it is verified, not found in the cache).
-- Status counting and the BENCH line: report.lua, next to this file.

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local thread_count = 0

local function read_lines(path)
    local lines = {}
    for line in io.lines(path) do lines[#lines + 1] = line end
    return lines
end

local function load_data(folder)
    tokens, pairs_list, deletes = read_lines(folder .. "/tokens.txt"), {}, {}
    for name, list in pairs({["pairs.txt"] = pairs_list, ["deletes.txt"] = deletes}) do
        for line in io.lines(folder .. "/" .. name) do
            local user, task = line:match("^(%d+) (%S+)$")
            if user then list[#list + 1] = {tonumber(user), task} end
        end
    end
end

function setup(thread)
    thread:set("thread_id", thread_count)
    thread_count = thread_count + 1
    register_thread(thread)
end

local scenario, step, next_delete, once_tokens, next_once
local counter = 0

function init(args)
    scenario = args[1]
    load_data(args[2])
    step = tonumber(args[3])
    next_delete = tonumber(args[4]) + thread_id
    if args[5] then
        once_tokens = read_lines(args[5])
        next_once = thread_id + 1
    end
    math.randomseed(os.time() + thread_id * 7919)
    nonce = tostring(os.time()) .. "t" .. thread_id
end

local json = {["Content-Type"] = "application/json"}

local function auth(token_index, extra_headers)
    local headers = {["Authorization"] = "Bearer " .. tokens[token_index]}
    if extra_headers then
        for k, v in pairs(extra_headers) do headers[k] = v end
    end
    return headers
end

local function random_pair()
    return pairs_list[math.random(#pairs_list)]
end

local function list()
    return wrk.format("GET", "/api/tasks", auth(math.random(#tokens)))
end

-- This thread's next item of a list used once per item (thread t takes t + 1, t + 1 + step, ...) and
-- its index. Past the end it starts over at the thread's first and counts that in extra[over], which
-- fails the run (bench/wrk.py).
local function take(items, index, over)
    if items[index] == nil then
        extra[over] = (extra[over] or 0) + 1
        index = thread_id + 1
    end
    return items[index], index
end

local function list_cold()
    local token, index = take(once_tokens, next_once, "reused")  -- reused: no longer a cold token
    next_once = index + step
    return wrk.format("GET", "/api/tasks", {["Authorization"] = "Bearer " .. token})
end

local function list_completed()
    return wrk.format("GET", "/api/tasks?completed=true", auth(math.random(#tokens)))
end

local function get_one()
    local p = random_pair()
    return wrk.format("GET", "/api/tasks/" .. p[2], auth(p[1]))
end

local function create()
    counter = counter + 1
    return wrk.format("POST", "/api/tasks", auth(math.random(#tokens), json),
                      '{"title": "bench task ' .. counter .. '", "description": "created by the benchmark"}')
end

local function update()
    local p = random_pair()
    counter = counter + 1
    return wrk.format("PATCH", "/api/tasks/" .. p[2], auth(p[1], json), '{"title": "renamed ' .. counter .. '"}')
end

local function toggle()
    local p = random_pair()
    return wrk.format("PATCH", "/api/tasks/" .. p[2] .. "/toggle", auth(p[1]))
end

local function delete()
    local p, index = take(deletes, next_delete, "wrapped")  -- wrapped: these answer 404
    extra.max_delete = math.max(extra.max_delete or 0, index)
    next_delete = index + step
    return wrk.format("DELETE", "/api/tasks/" .. p[2], auth(p[1]))
end

-- patch_if_match (issue #12): a GET to learn a task's ETag, then a PATCH carrying it in If-Match.
-- Each thread walks its own slice of the pairs (thread t takes t+1, t+1+step, ...), and every GET's
-- answer queues one PATCH of that task, taken by whichever of the thread's connections asks next, so
-- no two requests write the same task at once: any 412 is a real failure of the run (report.lua).
-- A PATCH's answer is told from a GET's by its title, which carries this run's nonce.
local if_match_queue, getting, next_if_match_pair = {}, {}, nil  -- nonce: a global set in init

local function patch_if_match()
    local queued = table.remove(if_match_queue, 1)
    counter = counter + 1
    if queued then
        local headers = auth(queued[1], json)
        headers["If-Match"] = queued[3]
        return wrk.format("PATCH", "/api/tasks/" .. queued[2], headers,
                          '{"title": "im-' .. nonce .. '-' .. counter .. '"}')
    end
    next_if_match_pair = (next_if_match_pair or (thread_id + 1 - step)) + step
    if pairs_list[next_if_match_pair] == nil then next_if_match_pair = thread_id + 1 end
    local p = pairs_list[next_if_match_pair]
    getting[p[2]] = p[1]
    return wrk.format("GET", "/api/tasks/" .. p[2], auth(p[1]))
end

local count_response = response

function response(status, headers, body)
    count_response(status, headers, body)
    if scenario == "patch_if_match" and status == 200 and not body:find("im-" .. nonce .. "-", 1, true) then
        local id = body:match('"id" : "([%x-]+)"')
        local token_index = id and getting[id]
        if token_index and headers["ETag"] then
            getting[id] = nil
            table.insert(if_match_queue, {token_index, id, headers["ETag"]})
        end
    end
end

local function mix()
    local r = math.random()
    if r < 0.6 then return list()
    elseif r < 0.8 then return get_one()
    elseif r < 0.9 then return create()
    elseif r < 0.95 then return update()
    else return toggle() end
end

local scenarios = {
    list = list, list_cold = list_cold, list_jwks = list_cold, list_completed = list_completed, get = get_one, create = create,
    update = update, toggle = toggle, delete = delete, mix = mix, patch_if_match = patch_if_match,
}

function request()
    return scenarios[scenario]()
end
