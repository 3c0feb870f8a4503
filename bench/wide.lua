dofile(os.getenv("BENCH_DIR") .. "/common.lua")
-- Every patient of the create run has given name "Wrk": a search with many matches.
request = function()
  return wrk.format("GET", prefix .. "/Patient?given=Wrk&_count=10")
end
