-- combine.lua: the fixed-order sum of each token's top-k rows. Spec: dtype, hidden, top_k; for
-- unfused plans also intermediate, experts, alpha, limit, which add the activation kernel.
local prelude = require("prelude")

return function(spec)
  local dt = prelude.dtype(spec.dtype)
  local consts = {
    { "kHidden", "int", prelude.need_int(spec, "hidden", 8) },
    { "kTopK", "int", prelude.need_int(spec, "top_k", 1, 32) },
  }
  local activation = spec.intermediate ~= nil
  if activation then
    consts[#consts + 1] = { "kIntermediate", "int", prelude.need_int(spec, "intermediate", 8) }
    consts[#consts + 1] = { "kExperts", "int", prelude.need_int(spec, "experts", 1, 1024) }
    consts[#consts + 1] = { "kAlpha", "float", spec.alpha }
    consts[#consts + 1] = { "kLimit", "float", spec.limit }
  end
  return table.concat({
    prelude.header("combine", spec),
    "typedef " .. dt.ctype .. " T;",
    "#define MJ_COMBINE_ACTIVATION " .. (activation and "1" or "0"),
    prelude.constants(consts),
    '#include "combine.cuh"',
    "",
  }, "\n")
end
