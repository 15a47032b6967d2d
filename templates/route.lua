-- route.lua: the routing kernels (top-k of logits, count, scan, scatter) for one layer.
-- Spec: experts (local), global_experts (the ids' range), mapped (0/1: ids go through expert_map),
-- capped (0/1: capacity mode), top_k, chunk (slots per routing block), ids ("i32"|"i64"),
-- weights ("f32"|"f16"|"bf16"), routing ("topk"|"dense"|"logits"), logits (dtype, logits routing).
-- global_experts, mapped and capped are optional (experts, 0, 0). With logits routing the count/scan/scatter kernels read the int32 ids and f32 weights the top-k
-- kernel leaves in the workspace; `ids` and `weights` then name the caller's optional copies.
-- pdl (optional, 0/1, default 0): every kernel starts with griddepcontrol.wait and
-- launch_dependents on sm_90+ (programmatic dependent launch); 0 renders the source without it.
-- The module always holds moejit_route_small (and with logits routing moejit_route_small_logits),
-- the one-launch routing of at most 2048 slots.
local prelude = require("prelude")

local forms = { topk = false, dense = true, logits = false }

return function(spec)
  local experts = prelude.need_int(spec, "experts", 1, 1024)
  local global = spec.global_experts or experts
  if math.type(global) ~= "integer" or global < experts or global > 1024 then
    error("spec.global_experts must be an integer in [experts, 1024]")
  end
  local top_k = prelude.need_int(spec, "top_k", 1, 32)
  local chunk = prelude.need_int(spec, "chunk", 32, 1024)
  if chunk % 32 ~= 0 then error("spec.chunk must be a multiple of 32") end
  local id_type = prelude.id_types[spec.ids]
  if not id_type then error("spec.ids must be i32 or i64, got " .. tostring(spec.ids)) end
  local weight = prelude.dtype(spec.weights)
  local dense = forms[spec.routing]
  if dense == nil then
    error("spec.routing must be topk, dense or logits, got " .. tostring(spec.routing))
  end
  local logits = spec.routing == "logits"
  local pdl = prelude.pdl_define(spec)
  local types = {
    "typedef " .. (logits and "int" or id_type) .. " IdT;",
    "typedef " .. (logits and "float" or weight.ctype) .. " WeightT;",
  }
  if logits then
    if top_k > global then error("top_k exceeds the experts the logits score") end
    types[#types + 1] = "typedef " .. prelude.dtype(spec.logits).ctype .. " LogitT;"
    types[#types + 1] = "typedef " .. id_type .. " UserIdT;"
    types[#types + 1] = "typedef " .. weight.ctype .. " UserWeightT;"
  end
  return table.concat({
    prelude.header("route", spec),
    table.concat(types, "\n"),
    "#define MJ_ROUTE_LOGITS " .. (logits and "1" or "0") .. (pdl and "\n" .. pdl or ""),
    prelude.constants({
      { "kExperts", "int", experts },
      { "kGlobalExperts", "int", global },
      { "kMapped", "bool", (spec.mapped or 0) == 1 },
      { "kCapped", "bool", (spec.capped or 0) == 1 },
      { "kTopK", "int", top_k },
      { "kChunk", "int", chunk },
      { "kDense", "bool", dense },
    }),
    '#include "route.cuh"',
    "",
  }, "\n")
end
