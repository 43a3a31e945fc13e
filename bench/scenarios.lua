-- wrk script for `python -m bench`: one scenario per run, requests spread over many users' tokens.
-- Arguments (after `--`): <scenario> <data folder written by bench/run.py> <wrk thread count>
-- The folder holds tokens.txt (one per user), pairs.txt ("<token index> <task id>" of that user's
-- tasks) and deletes.txt (pairs used once each, split between threads so no task is deleted twice).

local thread_count = 0

function load_data(folder)
    tokens, pairs_list, deletes = {}, {}, {}
    for line in io.lines(folder .. "/tokens.txt") do tokens[#tokens + 1] = line end
    for name, list in pairs({["pairs.txt"] = pairs_list, ["deletes.txt"] = deletes}) do
        local file = io.open(folder .. "/" .. name)
        if file then
            for line in file:lines() do
                local user, task = line:match("^(%d+) (%S+)$")
                if user then list[#list + 1] = {tonumber(user), task} end
            end
            file:close()
        end
    end
end

function setup(thread)
    thread:set("thread_id", thread_count)
    thread_count = thread_count + 1
end

local scenario, next_delete, step
local counter = 0

function init(args)
    scenario = args[1]
    load_data(args[2])
    step = tonumber(args[3] or "2")
    math.randomseed(os.time() + thread_id * 7919)
    next_delete = thread_id + 1
end

local json = {["Content-Type"] = "application/json"}

local function auth(token_index, extra)
    local headers = {["Authorization"] = "Bearer " .. tokens[token_index]}
    if extra then
        for k, v in pairs(extra) do headers[k] = v end
    end
    return headers
end

local function random_pair()
    return pairs_list[math.random(#pairs_list)]
end

local function list()
    return wrk.format("GET", "/api/tasks", auth(math.random(#tokens)))
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
    local p = deletes[next_delete]
    if p == nil then
        -- out of prepared tasks: wrap around (these answer 404 and are counted as errors)
        next_delete = thread_id + 1
        p = deletes[next_delete]
    end
    next_delete = next_delete + step
    return wrk.format("DELETE", "/api/tasks/" .. p[2], auth(p[1]))
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
    list = list, list_completed = list_completed, get = get_one, create = create, update = update,
    toggle = toggle, delete = delete, mix = mix,
}

function request()
    return scenarios[scenario]()
end
