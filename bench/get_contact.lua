-- wrk script: GET /contacts/{id} for one existing contact.
function init(args)
  path = "/contacts/" .. os.getenv("CONTACT_ID")
  token = os.getenv("TOKEN")
end

request = function()
  return wrk.format("GET", path, {
    ["Authorization"] = "Bearer " .. token,
    ["Version"] = "2021-07-28",
  })
end
