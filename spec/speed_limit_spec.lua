-- speed_limit_spec.lua: scripts/speed_limit.lua's token bucket, on the
-- simulated clock: bursts pass up to 6, the sustained rate is 5 a second,
-- and a session that keeps pushing (20 dropped in 10 s) is closed.
local testing = require "gangway.testing"
local top = testing.top

local function action(n)
  return top.frame(6, top.writer():u32(1):u8(1):u32(n))
end

describe("speed_limit.lua", function()
  local t, s
  before_each(function()
    t = testing.new{ protocol = "top", scripts = { "scripts/speed_limit.lua" } }
    s = t:connect()
  end)
  after_each(function() t:close() end)

  it("lets a burst of 6 through and drops the rest", function()
    for i = 1, 10 do s:from_client(action(i)) end
    local passed = s:to_server()
    assert.equal(6, #passed)
    assert.equal(action(6), passed[6])
    assert.equal(4, #s:dropped())
    assert.is_nil(s:closed())
  end)

  it("refills at 5 actions a second", function()
    for i = 1, 6 do s:from_client(action(i)) end
    assert.equal(6, #s:to_server())
    s:from_client(action(7))
    assert.equal(0, #s:to_server())
    t:advance(600) -- 3 tokens
    for i = 8, 16 do s:from_client(action(i)) end
    assert.equal(3, #s:to_server())
  end)

  it("keeps a steady 5 a second going forever", function()
    for _ = 1, 100 do
      t:advance(200)
      s:from_client(action(1))
    end
    assert.equal(100, #s:to_server())
    assert.same({}, s:dropped())
  end)

  it("closes a session that keeps flooding", function()
    for i = 1, 6 + 19 do s:from_client(action(i)) end
    assert.is_nil(s:closed())
    s:from_client(action(26))
    assert.equal("closed by a handler", s:closed())
    assert.is_true(t:logged("actions over the limit", "warn"))
    -- nothing more goes through
    s:from_client(action(27))
    assert.equal(6, #s:to_server())
  end)

  it("forgives strikes after the window", function()
    for i = 1, 6 + 19 do s:from_client(action(i)) end
    t:advance(10001)
    s:to_server()
    for i = 1, 6 + 19 do s:from_client(action(i)) end
    assert.is_nil(s:closed())
  end)

  it("keeps one bucket per session", function()
    local other = t:connect()
    for i = 1, 10 do s:from_client(action(i)) end
    for i = 1, 6 do other:from_client(action(i)) end
    assert.equal(6, #other:to_server())
  end)

  it("does not touch other actions or chat", function()
    for _ = 1, 50 do s:from_client(top.say("hi")) end
    assert.equal(50, #s:to_server())
  end)
end)
