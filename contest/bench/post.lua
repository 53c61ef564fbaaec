-- wrk script: POST /payments to a payment processor with a fresh correlationId each time.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"correlationId":"00000000-%04x-4000-8000-%012x","amount":20.05,"requestedAt":"2025-07-10T12:34:56.000Z"}',
    (tid or 0) % 65536, n)
  return wrk.format(nil, "/payments", nil, body)
end
