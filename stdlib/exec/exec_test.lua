-- Lua-level tests of the exec module, run by lua_test.go through luatest.
local exec = require "exec"

function TestOutputTrims(t)
  t:eq(exec.output{"printf", "  hello\n\n"}, "hello")
  t:eq(exec.output("echo 'two words'"), "two words")
end

function TestRunResult(t)
  local r = exec.run({"sh", "-c", "echo out; echo err >&2; exit 3"}, {capture = true, check = false})
  t:eq(r.status, 3)
  t:eq(r.ok, false)
  t:eq(r.stdout, "out\n")
  t:eq(r.stderr, "err\n")
  t:ok(r.duration >= 0, "duration")
end

function TestOptionsInArgvTable(t)
  local dir = t:tempdir()
  t:eq(exec.output{"pwd", dir = dir}, dir)
  t:eq(exec.output{"sh", "-c", "echo $BKRUN_X", env = {BKRUN_X = "42"}}, "42")
  t:eq(exec.output({"cat"}, {stdin = "fed"}), "fed")
end

function TestFailureNamesCommandStatusAndStderr(t)
  local msg = t:raises(function()
    exec.run{"sh", "-c", "echo first >&2; echo 'Volume group \"VGatom\" not found' >&2; exit 5"}
  end, 'exec.run: sh exited 5: first / Volume group "VGatom" not found')
  t:ok(msg:find("exec_test.lua:%d+:"), "error carries the script position: " .. msg)
end

function TestTimeoutKills(t)
  t:raises(function() exec.run{"sleep", "10", timeout = 0.2} end, "sleep timed out after 200ms and was killed")
end

function TestMissingExecutable(t)
  t:raises(function() exec.run{"bkrun-no-such-tool"} end, "bkrun-no-such-tool: executable file not found")
end

function TestBadArguments(t)
  t:raises(function() exec.run(5) end, "bad argument #1 to 'exec.run' (table or string expected, got number)")
  t:raises(function() exec.run{} end, "bad argument #1 to 'exec.run' (empty command)")
  t:raises(function() exec.run{"true", timout = 1} end, "unknown option 'timout'")
  t:raises(function() exec.run("ls | wc -l") end, "shell operator")
  t:raises(function() exec.run{"true", timeout = "soon"} end, "invalid duration")
  t:raises(function() exec.output{"true", {}} end, "argv[2] must be a string, got table")
end

function TestLookpathAndQuote(t)
  t:ok(exec.lookpath("sh"), "sh in PATH")
  t:eq(exec.lookpath("bkrun-no-such-tool"), nil)
  t:eq(exec.quote{"lvcreate", "-n", "a b", "it's"}, [[lvcreate -n 'a b' 'it'\''s']])
end
