dofile(os.getenv("BENCH_DIR") .. "/common.lua")
-- A mixed load: 70 % reads by id, 20 % searches, 10 % creates.
local ids = load_lines(os.getenv("BENCH_DATA") .. "/ids.txt")
local names = load_lines(os.getenv("BENCH_DATA") .. "/families.txt")
local n = 0
request = function()
  local r = math.random(100)
  if r <= 70 then
    return wrk.format("GET", prefix .. "/Patient/" .. ids[math.random(#ids)])
  elseif r <= 90 then
    return wrk.format("GET", prefix .. "/Patient?family=" .. names[math.random(#names)] .. "&_count=10")
  end
  n = n + 1
  local body = string.format(
    '{"resourceType":"Patient","name":[{"family":"Soak%d","given":["Mix"]}],"gender":"other","birthDate":"1980-02-%02d"}',
    n, (n % 28) + 1)
  return wrk.format("POST", prefix .. "/Patient", nil, body)
end
