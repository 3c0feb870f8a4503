dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local ids = load_lines(os.getenv("BENCH_DATA") .. "/ids.txt")
request = function()
  return wrk.format("GET", prefix .. "/Patient/" .. ids[math.random(#ids)])
end
