description = [[
Greets someone, the smallest possible recipe: arguments, a command, a clean-up
step. Try: bkrun scripts/hello.lua world --times 2 --shout
]]
args = {
  { name = "who", help = "whom to greet" },
  { name = "times", type = "integer", default = 1, help = "how many times" },
  { name = "shout", type = "boolean", help = "upper-case the greeting" },
}

local exec = require "exec"

function run(a)
  defer(function() print("(clean-up ran)") end)
  local host = exec.output({"uname", "-n"}, {safe = true})
  for _ = 1, a.times do
    local msg = ("hello, %s, from %s"):format(a.who, host)
    print(a.shout and msg:upper() or msg)
  end
end
