-- combine.lua: the fixed-order sum of each token's top-k rows. Spec: dtype, hidden, top_k; for
-- unfused plans also intermediate, experts, alpha, limit, which add the activation kernel.
-- splits (optional, default 1): the split-K partials per slot that GEMM2 (rendered with the same
-- splits) leaves; above 1 the combine kernel takes their distance as a fourth argument.
-- pdl (optional, 0/1, default 0): griddepcontrol.wait and launch_dependents at each kernel's start
-- on sm_90+. At their defaults neither changes the source.
local prelude = require("prelude")

return function(spec)
  local dt = prelude.dtype(spec.dtype)
  local splits = spec.splits == nil and 1 or prelude.need_int(spec, "splits", 1, 64)
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
  local defines = { "#define MJ_COMBINE_ACTIVATION " .. (activation and "1" or "0") }
  if splits > 1 then defines[#defines + 1] = "#define MJ_COMBINE_SPLITS " .. splits end
  defines[#defines + 1] = prelude.pdl_define(spec)
  return table.concat({
    prelude.header("combine", spec),
    "typedef " .. dt.ctype .. " T;",
    table.concat(defines, "\n"),
    prelude.constants(consts),
    '#include "combine.cuh"',
    "",
  }, "\n")
end
