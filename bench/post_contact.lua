-- wrk script: POST /contacts/ with a unique email per request (no duplicate rejections).
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  location = os.getenv("LOCATION_ID")
  token = os.getenv("TOKEN")
end

request = function()
  counter = counter + 1
  local body = string.format('{"locationId":"%s","firstName":"Bench","email":"b%d-%d-%d@bench.test"}',
    location, tid, counter, math.random(1, 1000000000))
  return wrk.format("POST", "/contacts/", {
    ["Authorization"] = "Bearer " .. token,
    ["Version"] = "2021-07-28",
    ["Content-Type"] = "application/json",
  }, body)
end
