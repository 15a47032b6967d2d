-- combine.lua: the fixed-order sum of each token's top-k rows. Spec: dtype, hidden, top_k.
local prelude = require("prelude")

return function(spec)
  local dt = prelude.dtype(spec.dtype)
  return table.concat({
    prelude.header("combine", spec),
    "typedef " .. dt.ctype .. " T;",
    prelude.constants({
      { "kHidden", "int", prelude.need_int(spec, "hidden", 8) },
      { "kTopK", "int", prelude.need_int(spec, "top_k", 1, 32) },
    }),
    '#include "combine.cuh"',
    "",
  }, "\n")
end
