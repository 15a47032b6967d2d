-- route.lua: the routing kernels (count, scan, scatter) for one layer's expert count, top-k,
-- id type and routing-weight form. Spec: experts, top_k, ids ("i32"|"i64"),
-- weights ("f32"|"f16"|"bf16"), routing ("topk"|"dense"), chunk (slots per routing block).
local prelude = require("prelude")

return function(spec)
  local experts = prelude.need_int(spec, "experts", 1, 1024)
  local top_k = prelude.need_int(spec, "top_k", 1, 32)
  local chunk = prelude.need_int(spec, "chunk", 32, 1024)
  if chunk % 32 ~= 0 then error("spec.chunk must be a multiple of 32") end
  local id_type = prelude.id_types[spec.ids]
  if not id_type then error("spec.ids must be i32 or i64, got " .. tostring(spec.ids)) end
  local weight = prelude.dtype(spec.weights)
  local dense = ({ topk = false, dense = true })[spec.routing]
  if dense == nil then error("spec.routing must be topk or dense, got " .. tostring(spec.routing)) end
  return table.concat({
    prelude.header("route", spec),
    "typedef " .. id_type .. " IdT;",
    "typedef " .. weight.ctype .. " WeightT;",
    prelude.constants({
      { "kExperts", "int", experts },
      { "kTopK", "int", top_k },
      { "kChunk", "int", chunk },
      { "kDense", "bool", dense },
    }),
    '#include "route.cuh"',
    "",
  }, "\n")
end
