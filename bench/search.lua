dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local names = load_lines(os.getenv("BENCH_DATA") .. "/families.txt")
request = function()
  return wrk.format("GET", prefix .. "/Patient?family=" .. names[math.random(#names)] .. "&_count=10")
end
