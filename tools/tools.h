/* tools.h: what the moejit command uses beside the public API, in one header: the tuner, synthetic
 * layers, the CPU reference and its sampled check, CUDA-event timing, the floor's rates; and, from
 * the layers below,
 * the configuration names and tables, the cubin cache and the records (`moejit cache`), the
 * modules of a layer rendered and compiled offline (`moejit gen`, `moejit compile`) and plans over
 * given configurations (`moejit bench --config`), files opened and replaced safely. Contexts and
 * plans stay opaque. */
#ifndef MJ_TOOLS_TOOLS_H
#define MJ_TOOLS_TOOLS_H
#include "base/error.h"
#include "base/file.h"
#include "base/half.h"
#include "gen/hash.h"
#include "moejit.h"
#include "runtime/runtime.h"
#include "tools/check.h"
#include "tools/floor.h"
#include "tools/ref.h"
#include "tools/synth.h"
#include "tools/timing.h"
#include "tools/tuner.h"
#include "tune/cache.h"
#include "tune/heuristic.h"
#include "tune/records.h"

#endif
