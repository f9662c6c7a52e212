-- Reference results of Lua's tonumber(string) for codec/tests/lua_tonumber.rs.
-- Input: one hex-encoded string per line on stdin. Output: one line per input,
-- "<hex> none" | "<hex> int <decimal>" | "<hex> float <IEEE bits as 16 hex digits>".
-- Produced with the interpreter shown by `lua -v` (recorded in the header line).
io.write("# ", _VERSION, "\n")
for line in io.lines() do
  local s = line:gsub("..", function(h) return string.char(tonumber(h, 16)) end)
  local v = tonumber(s)
  if v == nil then
    io.write(line, " none\n")
  elseif math.type(v) == "integer" then
    io.write(line, " int ", string.format("%d", v), "\n")
  else
    local bytes = string.pack(">d", v)
    io.write(line, " float ", (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end)), "\n")
  end
end
