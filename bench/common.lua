-- Shared by the wrk scripts: bearer token from the environment, a random line from a file.
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/fhir+json"
-- The FHIR base path on the server measured: medvault serves under /fhir, a peer may at the root.
prefix = os.getenv("BENCH_PREFIX") or "/fhir"

function load_lines(path)
  local t = {}
  for line in io.lines(path) do
    if #line > 0 then t[#t + 1] = line end
  end
  return t
end
