dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"resourceType":"Patient","name":[{"family":"Created%d","given":["Wrk"]}],"gender":"female","birthDate":"1990-01-%02d","identifier":[{"system":"urn:bench:new","value":"N%d"}]}',
    n, (n % 28) + 1, n)
  return wrk.format("POST", prefix .. "/Patient", nil, body)
end
