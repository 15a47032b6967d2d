-- route.lua: the routing kernels (top-k of logits, count, scan, scatter) for one layer.
-- Spec: experts (local), global_experts (the ids' range), mapped (0/1: ids go through expert_map),
-- capped (0/1: capacity mode), top_k, ids ("i32"|"i64"), weights ("f32"|"f16"|"bf16"), routing
-- ("topk"|"dense"|"logits"), logits (dtype, logits routing), chunk (slots of a count or scatter
-- block, a multiple of 32). global_experts, mapped, capped and chunk are optional (experts, 0, 0,
-- 256). With logits routing the count/scan/scatter kernels read the int32 ids and f32 weights the
-- top-k kernel leaves in the workspace; `ids` and `weights` then name the caller's optional copies.
-- pdl (optional, 0/1, default 0): every kernel starts with griddepcontrol.wait and
-- launch_dependents on sm_90+ (programmatic dependent launch); 0 renders the source without it.
-- The module always holds moejit_route_small (and with logits routing moejit_route_small_logits),
-- the one-launch routing of at most kSmallSlots slots.
-- Contract: moejit_route_small[_logits] (one block, max_slots), count and scatter (per_block
-- slots), scan (one block), and with logits routing topk (per_block tokens).
local prelude = require("prelude")

local forms = { topk = false, dense = true, logits = false }
local kTopkThreads, kScanThreads, kScatterThreads, kSmallThreads = 128, 256, 32, 1024
local kSmallSlots = 2 * kSmallThreads -- two slots for each thread of the one block

-- The parameters of each kernel, by the names the runtime binds (route.cuh's signatures).
local live = { "device_tokens", "token_base" }
local function params(...)
  local out = {}
  for _, list in ipairs({ ... }) do
    for _, p in ipairs(list) do out[#out + 1] = p end
  end
  return out
end
local tile_outs = { "expert_offsets", "tiles", "num_tiles", "flags" }
local row_outs = { "row_slot", "slot_row", "row_weight" }
local topk_outs = { "router_logits", "tokens", "route_ids", "route_weights", "topk_ids",
  "routing_weights" }

local function contract(chunk, logits)
  local kernels = {
    logits and {
      entry = "moejit_route_small_logits", threads = kSmallThreads, max_blocks = 1, max_slots = kSmallSlots,
      params = params(topk_outs, { "expert_map", "tile_rows", "capacity" }, tile_outs, row_outs,
        live, { "ready" }),
    } or {
      entry = "moejit_route_small", threads = kSmallThreads, max_blocks = 1, max_slots = kSmallSlots,
      params = params({ "ids", "expert_map", "weights", "nslots", "tile_rows", "capacity" },
        tile_outs, row_outs, live, { "ready" }),
    },
    { entry = "moejit_route_count", threads = chunk, per_block = chunk,
      params = params({ "ids", "expert_map", "nslots", "chunk_counts" }, live) },
    { entry = "moejit_route_scan", threads = kScanThreads, max_blocks = 1,
      params = { "chunk_counts", "nchunks", "tile_rows", "capacity", "chunk_base", "expert_offsets",
        "tiles", "num_tiles", "flags", "accumulate", "ready" } },
    { entry = "moejit_route_scatter", threads = kScatterThreads, per_block = chunk,
      params = params({ "ids", "expert_map", "weights", "nslots", "capacity", "chunk_base",
        "expert_offsets" }, row_outs, live) },
  }
  if logits then
    kernels[#kernels + 1] = { entry = "moejit_route_topk", threads = kTopkThreads,
      per_block = kTopkThreads // 32, params = params(topk_outs, live) }
  end
  return kernels
end

return function(spec)
  local experts = prelude.need_int(spec, "experts", 1, 1024)
  local global = spec.global_experts or experts
  if math.type(global) ~= "integer" or global < experts or global > 1024 then
    error("spec.global_experts must be an integer in [experts, 1024]")
  end
  local top_k = prelude.need_int(spec, "top_k", 1, 32)
  local chunk = spec.chunk == nil and 256 or prelude.need_int(spec, "chunk", 32, 1024)
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
      { "kTopkThreads", "int", kTopkThreads },
      { "kScanThreads", "int", kScanThreads },
      { "kScatterThreads", "int", kScatterThreads },
      { "kSmallThreads", "int", kSmallThreads },
      { "kSmallSlots", "int", kSmallSlots },
    }),
    '#include "route.cuh"',
    "",
  }, "\n"), contract(chunk, logits)
end
