-- The requests of every benchmark scenario, for wrk:
--   wrk -s bench/scenarios.lua URL -- SCENARIO DATA_FILE THREADS [DELETABLE_FILE]
-- (bench/wrk.py builds that command line). Each request picks a random ordinary user, with its
-- token, and one of that user's seeded tasks, from DATA_FILE (written by bench/seed.py). done()
-- prints one line, BENCH_RESULT and a JSON object, for bench/wrk.py; latency percentiles are
-- wrk's own. Each wrk thread runs its own copy of this script; setup() and done() run in wrk's
-- main thread.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_index", #threads)
end

-- Per-thread state. Globals, not locals, are what done() reads through thread:get().
failures = {}       -- HTTP status >= 400 -> count
exhausted = false   -- the delete scenario ran out of tasks to delete

local users = {}     -- ordinary users: {id, first, last, headers, json_headers, feed_headers}
local heavy_user
local deletable = {} -- this thread's share of the deletable tasks: {user, task_id}
local next_deletable = 1
local created = {}   -- the mix's own new tasks, {user_id, task_id}, deleted later by the mix
local by_id = {}
local cursors = {}   -- user id -> the cursor of the last change-feed answer this thread had for it
local make_request
local scenario

-- 100 creates in one batch request; the same body every time (titles need not be unique).
local BATCH_SIZE = 100
local batch_operations = {}
for i = 1, BATCH_SIZE do
   batch_operations[i] = '{"op": "create", "task": {"title": "Bench batch task ' .. i .. '"}}'
end
local batch_body = '{"operations": [' .. table.concat(batch_operations, ", ") .. ']}'

local function random_user()
   return users[math.random(#users)]
end

local function random_task(user)
   return math.random(user.first, user.last)
end

local function task_path(user_id, task_id)
   return "/api/" .. user_id .. "/tasks/" .. task_id
end

local function list(user)
   user = user or random_user()
   return wrk.format("GET", "/api/" .. user.id .. "/tasks", user.headers)
end

local function get(user)
   user = user or random_user()
   return wrk.format("GET", task_path(user.id, random_task(user)), user.headers)
end

local function create(user)
   user = user or random_user()
   local body = '{"title": "Bench task ' .. math.random(1000000) .. '"}'
   return wrk.format("POST", "/api/" .. user.id .. "/tasks", user.json_headers, body)
end

local function update(user)
   user = user or random_user()
   local body = '{"title": "Renamed by the benchmark ' .. math.random(1000000) .. '"}'
   return wrk.format("PUT", task_path(user.id, random_task(user)), user.json_headers, body)
end

local function batch(user)
   user = user or random_user()
   return wrk.format("POST", "/api/" .. user.id .. "/tasks/batch", user.json_headers, batch_body)
end

local function changes()
   -- A client polling the change feed with the cursor of its previous answer (none at first:
   -- the whole state). The answer does not say whose it is, so the request id, which the
   -- service echoes, carries the user: response() files the new cursor under it.
   local user = random_user()
   local path = "/api/" .. user.id .. "/changes"
   local cursor = cursors[user.id]
   if cursor then
      path = path .. "?since=" .. cursor
   end
   return wrk.format("GET", path, user.feed_headers)
end

local function complete(user)
   user = user or random_user()
   return wrk.format("PATCH", task_path(user.id, random_task(user)) .. "/complete", user.headers)
end

local function delete_seeded()
   local pair = deletable[next_deletable]
   if pair == nil then
      -- Out of tasks: stop this thread; the request already asked for is harmless.
      exhausted = true
      wrk.thread:stop()
      return wrk.format("GET", "/healthz")
   end
   next_deletable = next_deletable + 1
   return wrk.format("DELETE", task_path(pair[1].id, pair[2]), pair[1].headers)
end

local function delete_created()
   local pair = table.remove(created)
   if pair == nil then
      return create()
   end
   local user = by_id[pair[1]]
   return wrk.format("DELETE", task_path(user.id, pair[2]), user.headers)
end

local function deep_page()
   -- wrk's URL is the deep page's own, cursor and all.
   return wrk.format("GET", wrk.path, heavy_user.headers)
end

-- 70% reads, 30% writes; the mix deletes tasks it created itself, so each is deleted once.
local mix_weights = {
   {20, list}, {50, get}, {10, create}, {8, update}, {7, complete}, {5, delete_created},
}

local function mix()
   local roll = math.random(100)
   for _, weighted in ipairs(mix_weights) do
      roll = roll - weighted[1]
      if roll <= 0 then
         return weighted[2]()
      end
   end
   return get()
end

local scenarios = {
   list = list, get = get, create = create, update = update, complete = complete,
   delete = delete_seeded, deep = deep_page, mix = mix, batch = batch, changes = changes,
}

local function read_users(path)
   for line in io.lines(path) do
      local kind, id, first, last, token = line:match("^(%a+) (%d+) (%d+) (%d+) (%S+)$")
      if kind then
         local user = {
            id = tonumber(id), first = tonumber(first), last = tonumber(last),
            headers = {["Authorization"] = "Bearer " .. token},
            json_headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"},
            feed_headers = {["Authorization"] = "Bearer " .. token, ["X-Request-Id"] = "feed-" .. id},
         }
         by_id[user.id] = user
         if kind == "user" then
            table.insert(users, user)
         elseif kind == "heavy" then
            heavy_user = user
         end
      end
   end
end

local function read_deletable(path, thread_count)
   -- Thread i takes every thread_count-th line, so no task is deleted twice.
   local line_number = 0
   for line in io.lines(path) do
      if line_number % thread_count == thread_index - 1 then
         local user_id, task_id = line:match("^(%d+) (%d+)$")
         table.insert(deletable, {by_id[tonumber(user_id)], tonumber(task_id)})
      end
      line_number = line_number + 1
   end
end

function init(args)
   scenario = args[1]
   make_request = scenarios[scenario]
   if make_request == nil then
      error("unknown scenario: " .. tostring(scenario))
   end
   read_users(args[2])
   if args[4] then
      read_deletable(args[4], tonumber(args[3]))
   end
   math.randomseed(os.time() * 100 + thread_index)
end

function request()
   return make_request()
end

function response(status, headers, body)
   if status >= 400 then
      failures[status] = (failures[status] or 0) + 1
   elseif scenario == "changes" then
      local user_id = (headers["X-Request-Id"] or headers["x-request-id"] or ""):match("^feed%-(%d+)$")
      local cursor = body:match('"cursor":%s*"([%w_-]+)"')
      if user_id and cursor then
         cursors[tonumber(user_id)] = cursor
      end
   elseif status == 201 and scenario == "mix" then
      local task_id = body:match('"id":%s*(%d+)')
      local user_id = body:match('"user_id":%s*(%d+)')
      if task_id and user_id then
         table.insert(created, {tonumber(user_id), tonumber(task_id)})
      end
   end
end

function done(summary, latency, requests)
   local statuses = {}
   local exhausted_threads = 0
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("failures")) do
         statuses[status] = (statuses[status] or 0) + count
      end
      if thread:get("exhausted") then
         exhausted_threads = exhausted_threads + 1
      end
   end
   local status_fields = {}
   for status, count in pairs(statuses) do
      table.insert(status_fields, string.format('"%d": %d', status, count))
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
         .. '"status": %d, "timeout": %d, "p50_us": %.1f, "p95_us": %.1f, "p99_us": %.1f, '
         .. '"max_us": %.1f, "statuses": {%s}, "exhausted_threads": %d}\n',
      summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status,
      errors.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99),
      latency.max, table.concat(status_fields, ", "), exhausted_threads
   ))
end
