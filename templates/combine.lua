-- combine.lua: the fixed-order sum of each token's top-k rows. Spec: dtype, hidden, top_k; for
-- plans whose activation runs as its own launch also intermediate, experts, alpha, limit, which
-- add the activation kernel, with activation (optional: a name of prelude.lua's table, "swiglu"
-- the default) and layout (optional, gated activations: "interleaved", the default, "gate_up" or
-- "up_gate": where gate and up sit along GEMM1's 2I outputs).
-- splits (optional, default 1): the split-K partials per slot that GEMM2 (rendered with the same
-- splits) leaves, split_stride floats apart (the kernel's last parameter, read with splits > 1).
-- pdl (optional, 0/1, default 0): griddepcontrol.wait and launch_dependents at each kernel's start
-- on sm_90+. At their defaults neither changes the source.
-- Contract: moejit_combine, grid (tokens, ceil(cols / tile_cols)); moejit_activation (unfused),
-- grid-stride over rows x cols elements, per_block a block, at most max_blocks.
local prelude = require("prelude")

local kThreads = 256 -- both kernels' block; combine sums 4 columns a thread

return function(spec)
  local dt = prelude.dtype(spec.dtype)
  local splits = spec.splits == nil and 1 or prelude.need_int(spec, "splits", 1, 64)
  local consts = {
    { "kHidden", "int", prelude.need_int(spec, "hidden", 8) },
    { "kTopK", "int", prelude.need_int(spec, "top_k", 1, 32) },
    { "kThreads", "int", kThreads },
  }
  local activation = spec.intermediate ~= nil
  if activation then
    consts[#consts + 1] = { "kIntermediate", "int", prelude.need_int(spec, "intermediate", 8) }
    consts[#consts + 1] = { "kExperts", "int", prelude.need_int(spec, "experts", 1, 1024) }
    consts[#consts + 1] = { "kAlpha", "float", spec.alpha }
    consts[#consts + 1] = { "kLimit", "float", spec.limit }
    local a = prelude.activation(spec.activation or "swiglu")
    local layouts = { interleaved = 0, gate_up = 1, up_gate = 2 }
    local layout = layouts[spec.layout or "interleaved"]
    if not layout then
      error("spec.layout must be interleaved, gate_up or up_gate, got " .. tostring(spec.layout))
    end
    consts[#consts + 1] = { "kAct", "int", a.id }
    consts[#consts + 1] = { "kGated", "bool", a.gated }
    consts[#consts + 1] = { "kLayout", "int", layout }
  end
  local defines = { "#define MJ_COMBINE_ACTIVATION " .. (activation and "1" or "0") }
  if splits > 1 then defines[#defines + 1] = "#define MJ_COMBINE_SPLITS " .. splits end
  defines[#defines + 1] = prelude.pdl_define(spec)
  local kernels = { {
    entry = "moejit_combine", threads = kThreads, cols = spec.hidden, tile_cols = 4 * kThreads,
    params = { "y_slot", "slot_row", "y", "split_stride" },
  } }
  if activation then
    kernels[2] = { entry = "moejit_activation", threads = kThreads, cols = spec.intermediate,
      per_block = kThreads, max_blocks = 65536, params = { "gate_up", "expert_offsets", "h" } }
  end
  return table.concat({
    prelude.header("combine", spec),
    "typedef " .. dt.ctype .. " T;",
    table.concat(defines, "\n"),
    prelude.constants(consts),
    '#include "combine.cuh"',
    "",
  }, "\n"), kernels
end
