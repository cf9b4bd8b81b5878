-- wrk script: every request a new session (x-session = run id + counter), so each
-- pins a new stick entry: wrk -t1 -c16 -d5s -s examples/cluster/new_sessions.lua URL
local counter = 0
local run = tostring(os.time()) .. "-" .. tostring(math.random(1000000))
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", { ["x-session"] = "wrk-" .. run .. "-" .. counter })
end
