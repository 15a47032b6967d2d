/* cmd_bench.c: `moejit bench`: the forward of a random layer timed per token count from CUDA graph
 * replays (or eager calls), beside the floor of each call: max(bytes of the distinct experts'
 * weights / HBM bandwidth, dropless FLOPs / dense GEMM rate), both rates measured in the same run
 * (a read-only reduction from templates/bench.lua; cuBLAS, loaded with dlopen). Rows go to stdout
 * and, with --json, to a JSON-lines file. Without a GPU it compiles the kernels and says so.
 * Uses tools/synth for the layer, tools/check for --check, tools/timing, the context's driver. */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "tools/tools.h"

static const char bench_usage[] =
    "usage: moejit bench [--tokens 1,8,64,...] [--repeat N] [--warmup N] [--eager]\n"
    "                    [--json FILE|-] [--bw-bytes SIZE] [--no-floor] [--cublas PATH]\n"
    "                    [--check N] [--seed S] [--config NAME] [--graph-tokens N]\n"
    "                    [--data uniform|normal] [layer options]\n"
    "\n"
    "Times the layer's forward on this GPU for each token count and sets it beside its floor:\n"
    "the time the GPU needs just to read the weights the call touches, or to do its FLOPs at\n"
    "dense GEMM speed, whichever is longer.\n"
    "\n"
    "One random layer (weights, biases and x uniform, or with --data normal from normal\n"
    "distributions of the same RMS: prefill times at the GPU's power cap depend on the data;\n"
    "random top-k routing, distinct experts per token; --seed, default 1) is made for the largest\n"
    "count, and one plan with max_tokens = that count; a row of T tokens uses the layer's first T\n"
    "tokens. Per row: one eager forward, then\n"
    "ONE moejit_forward captured into a CUDA graph on a non-blocking stream, --warmup replays\n"
    "(default 5), then --repeat replays (default 50; 20 for counts above 16384), a CUDA event\n"
    "between each two, all enqueued back to back with no host synchronisation in between;\n"
    "the row's time is the median. --eager times moejit_forward calls instead of replays (the GPU\n"
    "then waits for the host's launches where they are slower than the kernels). Nothing is\n"
    "flushed between calls. Default --tokens: 1,8,64,512,4096,16384,65536.\n"
    "--config NAME runs every row on that one GEMM configuration (a name `moejit tune` prints,\n"
    "such as stream_m1n64u6z2 or wg_m128n192s4c1) instead of the plan's pick.\n"
    "--graph-tokens N runs each row of T tokens as a forward of N tokens (N >= every T) whose\n"
    "device-side count (moejit_forward_args.device_tokens) is T: what a serving engine does that\n"
    "captures one graph at its largest batch. The row still counts T tokens and their experts;\n"
    "its config is the one N picks; JSON: graph_tokens.\n"
    "\n"
    "Columns (JSON fields):\n"
    "  tokens          T\n"
    "  ms              median time of one forward, milliseconds\n"
    "  tflops          dropless FLOPs / time; FLOPs = 2*T*K*(H*N1 + I*H), N1 = 2I (I for an\n"
    "                  activation without mul)\n"
    "  active_experts  A, the distinct experts in the routing of the T tokens\n"
    "  weight_bytes    A*(H*N1 + I*H)*sizeof(dtype): those experts' weight matrices (biases are\n"
    "                  left out: under 0.1% of it at gpt-oss shapes); with --weights mxfp4 their\n"
    "                  blocks and scales, A*((H*N1 + I*H)/2 + (H*N1 + I*H)/32) (biases then\n"
    "                  about 0.13%)\n"
    "  gbps            weight_bytes / time, GB/s (1e9 bytes)\n"
    "  floor_ms        max(weight_bytes / BW, FLOPs / GEMM_RATE)\n"
    "  ratio           ms / floor_ms\n"
    "  data            uniform or normal (--data): how x, the weights and the biases were drawn\n"
    "  weights         dense or mxfp4 (--weights): how the experts' weights are stored\n"
    "  config          the GEMM tile configuration the plan runs for T (* when a tuning record\n"
    "                  chose it; JSON: config, tuned)\n"
    "\n"
    "BW and GEMM_RATE are measured in this run, before the rows, on the same GPU:\n"
    "  BW         a read-only reduction kernel (templates/bench.lua) over a buffer of --bw-bytes\n"
    "             (default 4G; suffixes K, M, G are powers of 1024), median of 10 passes, TB/s\n"
    "  GEMM_RATE  cuBLAS cublasGemmEx, M = N = K = 8192, in the layer's dtype (f16 and bf16 with\n"
    "             f32 accumulation; f32 on TF32, or plain f32 with --exact-f32; MXFP4 weights:\n"
    "             the activations' dtype, whose tensor cores the kernels use), median of 10\n"
    "             calls, TFLOP/s. cuBLAS is loaded with dlopen: --cublas PATH, else\n"
    "             libcublas.so.13, libcublas.so.12, then the same in /usr/local/cuda/lib64.\n"
    "A rate that cannot be measured (no cuBLAS, say) leaves the floor out: floor_ms and ratio\n"
    "are null and floor_note says why; no datasheet figure stands in. --no-floor skips both.\n"
    "\n"
    "--json FILE appends one JSON line per row (FILE \"-\": stdout, and the table goes to\n"
    "stderr): the fields above and device, commit ($MOEJIT_COMMIT, else `git rev-parse --short\n"
    "HEAD`, else \"unknown\"), date (UTC), command, mode (graph|eager), dtype, weights, data,\n"
    "hidden, intermediate, experts, top_k, routing, activation (as --activation names it),\n"
    "gate_up_layout (as --gate-up-layout names it), no_bias, unfused, batch_invariant (true or\n"
    "false), seed, repeat, warmup, ms_min, ms_max, bw_tbps, gemm_tflops, gemm_math, floor_note\n"
    "(null when the floor was measured) and, with --check, check_rel_error and check_ok.\n"
    "--check N compares N sampled tokens of each row with the CPU reference after its timing,\n"
    "from one more call on a poisoned output (default 0, off: it downloads every expert's\n"
    "weights and runs the reference on the CPU, seconds per row).\n"
    "Exit status: 0; 1 when something failed, a check did not match or a slot had a bad expert\n"
    "id; 2 for bad options. Without a GPU: compiles the layer's kernels and the bandwidth kernel\n"
    "for sm_90a (or --arch), prints \"no GPU found (...)\", times nothing, writes no JSON and\n"
    "exits 0.\n";

typedef cli_bench_opts bench_opts;

/* The floor's two rates, or why there is no floor. */
typedef struct floor_rates {
  double bw_tbps, gemm_tflops; /* NAN when not measured */
  const char *gemm_math;       /* "bf16", "f16", "tf32", "f32" */
  char note[512];              /* "" when both were measured */
} floor_rates;

/* One row of the table. */
typedef struct row {
  int64_t tokens, active;
  int repeat, tuned, checked, check_ok;
  double ms, ms_min, ms_max, flops, weight_bytes, floor_ms, rel_error;
  const char *config;
} row;

/* What the timing helpers share; the context is current while they run. */
typedef struct bench {
  moejit_ctx *ctx;
  const mj_cu *cu;
  moejit_device_info info;
  moejit_plan *plan;
  mj_synth syn;
  mj_synth_layer layer; /* for the largest count */
  CUstream stream;
  bench_opts o;
  CUdeviceptr count; /* with --graph-tokens: the device-side token count */
  FILE *out;         /* the table: stdout, or stderr when the JSON lines take stdout */
} bench;

/* The reason moejit_create gives for MOEJIT_ERR_NO_DEVICE, caught from its log. */
typedef struct log_catch {
  int verbose;
  char reason[1024];
} log_catch;

static void catch_log(void *user, moejit_log_level level, const char *msg) {
  log_catch *c = user;
  snprintf(c->reason, sizeof c->reason, "%s", msg);
  cli_log(&c->verbose, level == MOEJIT_LOG_WARN ? MOEJIT_LOG_INFO : level, msg);
}

static int repeat_for(const cli_layer *L, int64_t tokens) {
  return L->repeat > 0 ? L->repeat : tokens > 16384 ? 20 : 50;
}

/* Both rates; a failure leaves that rate NAN and its reason in the note (the rows still run). */
static void measure_floor(bench *b, const moejit_layer_desc *d, floor_rates *f) {
  FILE *out = b->out;
  mj_err err;
  f->bw_tbps = f->gemm_tflops = NAN;
  f->note[0] = '\0';
  f->gemm_math = mj_floor_gemm_math(d);
  if (!b->o.floor) {
    snprintf(f->note, sizeof f->note, "not measured (--no-floor)");
    return;
  }
  if (mj_floor_bandwidth(b->ctx, b->stream, b->o.bw_bytes, &f->bw_tbps, &err) != MOEJIT_OK) {
    f->bw_tbps = NAN;
    snprintf(f->note, sizeof f->note, "no bandwidth: %.440s", err.msg);
  }
  if (mj_floor_gemm(b->ctx, &b->syn, b->stream, d, b->o.cublas, &f->gemm_tflops, &err) !=
      MOEJIT_OK) {
    size_t used = strlen(f->note);
    f->gemm_tflops = NAN;
    snprintf(f->note + used, sizeof f->note - used, "%sno GEMM rate: %.440s", used ? "; " : "",
             err.msg);
  }
  if (isfinite(f->bw_tbps))
    fprintf(out, "floor    HBM read %.3f TB/s (reduction over %.2f GiB, median of %d)\n",
            f->bw_tbps, (double)b->o.bw_bytes / (1 << 30), MJ_FLOOR_BW_PASSES);
  if (isfinite(f->gemm_tflops))
    fprintf(out, "floor    %s GEMM %.1f TFLOP/s (cuBLAS %d^3, median of %d)\n", f->gemm_math,
            f->gemm_tflops, MJ_FLOOR_GEMM_N, MJ_FLOOR_GEMM_CALLS);
  if (f->note[0])
    fprintf(out, "floor    not given: %s\n", f->note);
}

/* ---- one row -------------------------------------------------------------------------------- */

/* One forward: a graph replay when exec is given, else moejit_forward. */
static moejit_status forward_once(bench *b, const moejit_forward_args *a, CUgraphExec exec,
                                  mj_err *err) {
  moejit_status st = MOEJIT_OK;
  if (exec) {
    MJ_CU(b->cu, GraphLaunch(exec, b->stream), err);
    return MOEJIT_OK;
  }
  st = moejit_forward(b->plan, a, (void *)(uintptr_t)b->layer.workspace, b->layer.workspace_bytes,
                      b->stream);
  if (st != MOEJIT_OK)
    return mj_errf(err, st, "moejit_forward: %s", moejit_last_error(b->ctx));
fail:
  return st;
}

/* Captures one moejit_forward on the bench stream and instantiates it. The capture is always
 * ended, so a forward that fails while capturing leaves the stream usable. */
static moejit_status capture(bench *b, const moejit_forward_args *a, CUgraphExec *exec,
                             mj_err *err) {
  moejit_status st = MOEJIT_OK;
  CUgraph graph = NULL;
  *exec = NULL;
  MJ_CU(b->cu, StreamBeginCapture(b->stream, MJ_CU_CAPTURE_MODE_THREAD_LOCAL), err);
  moejit_status fst = forward_once(b, a, NULL, err);
  CUresult r = b->cu->StreamEndCapture(b->stream, &graph);
  if (fst != MOEJIT_OK) {
    st = fst;
    goto fail;
  }
  if (r != MJ_CU_SUCCESS) {
    st = mj_rt_cu_fail(b->cu, r, "StreamEndCapture", __FILE__, __LINE__, err);
    goto fail;
  }
  MJ_CU(b->cu, GraphInstantiate(exec, graph, 0), err);
fail:
  if (graph)
    b->cu->GraphDestroy(graph);
  return st;
}

/* A row's forward as mj_timing_run times it: a replay, or an eager call. */
typedef struct row_call {
  bench *b;
  const moejit_forward_args *a;
  CUgraphExec exec;
} row_call;

static moejit_status row_forward(void *user, CUstream stream, mj_err *err) {
  row_call *c = user;
  (void)stream; /* the bench's */
  return forward_once(c->b, c->a, c->exec, err);
}

/* One more call on a poisoned output, then --check sampled tokens against the CPU reference. */
static moejit_status check_row(bench *b, const mj_synth_layer *view, const moejit_forward_args *a,
                               CUgraphExec exec, int samples, row *r, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  mj_check_result cr;
  size_t ybytes = (size_t)(view->tokens * view->desc.hidden) * mj_dtype_size(view->desc.dtype);
  /* NaN in every dtype; H is a multiple of 8, so whole 32-bit words */
  MJ_CU(b->cu, MemsetD32Async(view->y, 0xFFFFFFFFu, ybytes / 4, b->stream), err);
  if ((st = forward_once(b, a, exec, err)) != MOEJIT_OK)
    return st;
  MJ_CU(b->cu, StreamSynchronize(b->stream), err);
  if ((st = mj_check_sampled(&b->syn, view, samples, &cr, err)) != MOEJIT_OK)
    return st;
  r->checked = 1;
  r->rel_error = cr.rel_error;
  r->check_ok = cr.nonfinite == 0 && cr.rel_error <= cr.tolerance;
fail:
  return st;
}

/* The GEMM configuration a forward of `tokens` runs. */
static const char *picked_config(const moejit_plan *p, int64_t tokens, int *tuned) {
  return mj_rt_plan_config(p, mj_rt_pick(p, tokens, tuned))->name;
}

/* Distinct experts in [0, E) among the first `tokens` tokens' ids. */
static int64_t active_experts(const mj_synth_layer *L, int64_t tokens) {
  int64_t E = L->desc.experts, n = 0;
  unsigned char *seen = calloc((size_t)E, 1);
  if (!seen)
    return -1;
  for (int64_t i = 0; i < tokens * L->desc.top_k; i++) {
    int32_t e = L->host_ids[i];
    if (e >= 0 && e < E && !seen[e]) {
      seen[e] = 1;
      n++;
    }
  }
  free(seen);
  return n;
}

/* Times the row of `tokens` tokens, checks its routing flags and, with samples > 0, its output. */
static moejit_status run_row(bench *b, int64_t tokens, int repeat, int samples,
                             const floor_rates *f, row *r, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  const moejit_layer_desc *d = mj_rt_plan_desc(b->plan);
  mj_synth_layer view = b->layer; /* the first `tokens` tokens of the layer */
  mj_synth_layer full = b->layer; /* with --graph-tokens, the forward's: that many tokens */
  moejit_forward_args a;
  CUgraphExec exec = NULL;
  float *ms = calloc((size_t)repeat, sizeof *ms);
  int64_t bad = 0;
  memset(r, 0, sizeof *r);
  view.tokens = tokens;
  full.tokens = b->o.graph_tokens;
  mj_synth_layer_args(b->o.graph_tokens ? &full : &view, &a);
  if (!ms)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
  if (b->o.graph_tokens) { /* the forward of graph_tokens tokens computes the row's T */
    const int32_t n = (int32_t)tokens;
    a.device_tokens = (const int32_t *)(uintptr_t)b->count;
    MJ_CU(b->cu, MemcpyHtoD(b->count, &n, sizeof n), err);
  }
  /* an eager call first: the modules' first launch, and errors before any capture */
  if ((st = forward_once(b, &a, NULL, err)) != MOEJIT_OK)
    goto fail;
  MJ_CU(b->cu, StreamSynchronize(b->stream), err);
  if (!b->o.eager && (st = capture(b, &a, &exec, err)) != MOEJIT_OK)
    goto fail;
  row_call call = {b, &a, exec};
  const mj_timing timed = {b->o.warmup, repeat, row_forward, NULL, &call};
  if ((st = mj_timing_run(b->ctx, b->stream, &timed, ms, err)) != MOEJIT_OK)
    goto fail;
  if ((st = moejit_forward_check(b->plan, (void *)(uintptr_t)b->layer.workspace, b->stream,
                                 &bad)) != MOEJIT_OK) {
    mj_errf(err, st, "moejit_forward_check: %s", moejit_last_error(b->ctx));
    goto fail;
  }
  if (bad != 0) {
    st = mj_errf(err, MOEJIT_ERR_INTERNAL, "%lld slots had an expert id outside [0, %lld)",
                 (long long)bad, (long long)d->experts);
    goto fail;
  }
  if (samples > 0 && (st = check_row(b, &view, &a, exec, samples, r, err)) != MOEJIT_OK)
    goto fail;
  r->tokens = tokens;
  r->repeat = repeat;
  r->ms = mj_timing_median(ms, repeat);
  r->ms_min = ms[0];
  r->ms_max = ms[repeat - 1];
  r->flops = (double)tokens * (double)d->top_k * mj_floor_slot_flops(d);
  if ((r->active = active_experts(&b->layer, tokens)) < 0) {
    st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory");
    goto fail;
  }
  r->weight_bytes = (double)r->active * mj_floor_expert_bytes(d);
  r->floor_ms = NAN; /* fmax would drop a missing (NAN) rate and give half a floor */
  if (isfinite(f->bw_tbps) && isfinite(f->gemm_tflops))
    r->floor_ms =
        fmax(r->weight_bytes / (f->bw_tbps * 1e12), r->flops / (f->gemm_tflops * 1e12)) * 1e3;
  r->config = picked_config(b->plan, b->o.graph_tokens ? b->o.graph_tokens : tokens, &r->tuned);
fail:
  if (exec)
    b->cu->GraphExecDestroy(exec);
  free(ms);
  return st;
}

/* ---- output --------------------------------------------------------------------------------- */

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; s && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

/* A number, or null when it is not finite (a rate or floor that was not measured). */
static void json_num(FILE *f, const char *key, double v) {
  fprintf(f, ", \"%s\": ", key);
  if (isfinite(v))
    fprintf(f, "%.6g", v);
  else
    fputs("null", f);
}

/* What every JSON line of the run repeats. */
typedef struct run_info {
  char commit[64], date[16];
  const char *device;
  char *command;
} run_info;

static void json_row(FILE *f, const run_info *ri, const cli_layer *L, const bench_opts *o,
                     const floor_rates *fr, const row *r) {
  const moejit_layer_desc *d = &L->desc;
  double secs = r->ms * 1e-3;
  fputs("{\"device\": ", f);
  json_str(f, ri->device);
  fputs(", \"commit\": ", f);
  json_str(f, ri->commit);
  fprintf(f, ", \"date\": \"%s\", \"command\": ", ri->date);
  json_str(f, ri->command);
  fprintf(f,
          ", \"mode\": \"%s\", \"dtype\": \"%s\", \"weights\": \"%s\", \"data\": \"%s\", "
          "\"hidden\": %lld, \"intermediate\": %lld, \"experts\": %lld, \"top_k\": %lld, "
          "\"routing\": \"%s\", \"activation\": \"%s\", \"gate_up_layout\": \"%s\", "
          "\"no_bias\": %s, \"unfused\": %s, \"batch_invariant\": %s, \"seed\": %llu, "
          "\"tokens\": %lld, \"repeat\": %d, \"warmup\": %d",
          o->eager ? "eager" : "graph", mj_dtype_name(d->dtype), cli_weights_name(d),
          mj_synth_data_name((mj_synth_data)o->data), (long long)d->hidden,
          (long long)d->intermediate, (long long)d->experts, (long long)d->top_k,
          d->routing == MOEJIT_ROUTING_DENSE ? "dense" : "topk", cli_activation_name(d),
          cli_layout_name(d), d->no_bias ? "true" : "false", d->unfused ? "true" : "false",
          d->batch_invariant ? "true" : "false", (unsigned long long)L->seed, (long long)r->tokens,
          r->repeat, o->warmup);
  json_num(f, "ms", r->ms);
  json_num(f, "ms_min", r->ms_min);
  json_num(f, "ms_max", r->ms_max);
  json_num(f, "tflops", r->flops / secs / 1e12);
  fprintf(f, ", \"active_experts\": %lld, \"weight_bytes\": %.0f", (long long)r->active,
          r->weight_bytes);
  json_num(f, "gbps", r->weight_bytes / secs / 1e9);
  json_num(f, "bw_tbps", fr->bw_tbps);
  json_num(f, "gemm_tflops", fr->gemm_tflops);
  fprintf(f, ", \"gemm_math\": \"%s\"", fr->gemm_math);
  json_num(f, "floor_ms", r->floor_ms);
  json_num(f, "ratio", r->ms / r->floor_ms);
  fputs(", \"floor_note\": ", f);
  if (fr->note[0])
    json_str(f, fr->note);
  else
    fputs("null", f);
  fputs(", \"config\": ", f);
  json_str(f, r->config);
  fprintf(f, ", \"tuned\": %s", r->tuned ? "true" : "false");
  if (o->graph_tokens)
    fprintf(f, ", \"graph_tokens\": %lld", (long long)o->graph_tokens);
  if (r->checked) {
    json_num(f, "check_rel_error", r->rel_error);
    fprintf(f, ", \"check_ok\": %s", r->check_ok ? "true" : "false");
  }
  fputs("}\n", f);
  fflush(f);
}

static void print_header(FILE *out) {
  fprintf(out, "%8s %10s %8s %6s %10s %8s %9s %7s  %-7s %-7s %s\n", "tokens", "ms", "TFLOP/s",
          "active", "weight MB", "GB/s", "floor ms", "ratio", "data", "weights", "config");
}

static void print_row(FILE *out, const moejit_layer_desc *d, mj_synth_data data, const row *r) {
  double secs = r->ms * 1e-3;
  char floor_ms[16] = "-", ratio[16] = "-";
  if (isfinite(r->floor_ms)) {
    snprintf(floor_ms, sizeof floor_ms, "%.3f", r->floor_ms);
    snprintf(ratio, sizeof ratio, "%.2f", r->ms / r->floor_ms);
  }
  fprintf(out, "%8lld %10.4f %8.1f %6lld %10.1f %8.1f %9s %7s  %-7s %-7s %s%s",
          (long long)r->tokens, r->ms, r->flops / secs / 1e12, (long long)r->active,
          r->weight_bytes / 1e6, r->weight_bytes / secs / 1e9, floor_ms, ratio,
          mj_synth_data_name(data), cli_weights_name(d), r->config, r->tuned ? "*" : "");
  if (r->checked)
    fprintf(out, "  check %.3g %s", r->rel_error, r->check_ok ? "OK" : "MISMATCH");
  fputc('\n', out);
  fflush(out);
}

/* $MOEJIT_COMMIT, else `git rev-parse --short HEAD`, else "unknown". */
static void find_commit(char *buf, size_t len) {
  const char *env = getenv("MOEJIT_COMMIT");
  snprintf(buf, len, "unknown");
  if (env && *env) {
    snprintf(buf, len, "%s", env);
    return;
  }
  FILE *p = popen("git rev-parse --short HEAD 2>/dev/null", "r");
  if (!p)
    return;
  char line[64] = "";
  int ok = fgets(line, sizeof line, p) != NULL;
  if (pclose(p) == 0 && ok && line[0]) {
    line[strcspn(line, "\r\n")] = '\0';
    snprintf(buf, len, "%s", line);
  }
}

/* "moejit bench <args>", for the JSON lines. */
static char *command_line(int argc, char **argv) {
  size_t n = sizeof "moejit bench";
  for (int i = 0; i < argc; i++)
    n += strlen(argv[i]) + 1;
  char *s = malloc(n);
  if (!s)
    return NULL;
  strcpy(s, "moejit bench");
  for (int i = 0; i < argc; i++)
    strcat(strcat(s, " "), argv[i]);
  return s;
}

/* ---- the command ---------------------------------------------------------------------------- */

/* The layer's plan, or with `config` (a configuration name) a plan of that one configuration. */
static moejit_status bench_plan(moejit_ctx *ctx, const moejit_layer_desc *desc, const char *config,
                                moejit_plan **plan, mj_err *err) {
  moejit_status st;
  mj_gemm_config c;
  moejit_device_info info;
  if (!config) {
    if ((st = moejit_plan_create(ctx, desc, plan)) != MOEJIT_OK)
      return mj_errf(err, st, "plan: %s", moejit_last_error(ctx));
    return MOEJIT_OK;
  }
  moejit_device_info_init(&info);
  moejit_device_info_get(ctx, &info);
  if ((st = cli_config(config, desc, info.arch, &c, err)) != MOEJIT_OK)
    return st;
  if ((st = mj_rt_plan_create_with(ctx, desc, &c, 1, plan, NULL)) != MOEJIT_OK)
    return mj_errf(err, st, "plan with --config %s: %s", config, moejit_last_error(ctx));
  return MOEJIT_OK;
}

/* No GPU: compile the layer's kernels and the bandwidth kernel for the offline arch. */
static int compile_only(const cli_layer *L, const char *why) {
  moejit_ctx_options o;
  moejit_ctx *ctx = NULL;
  moejit_plan *plan = NULL;
  mj_err err;
  int rc = 1;
  moejit_ctx_options_init(&o);
  o.offline_arch = L->arch ? L->arch : "sm_90a";
  o.log = cli_log;
  o.log_user = (void *)&L->verbose;
  char words[160];
  printf("no GPU found (%s)\n", why);
  printf("compiling the layer's kernels (%s; %s data) and the bandwidth kernel for %s instead\n",
         cli_layer_words(&L->desc, words, sizeof words),
         mj_synth_data_name((mj_synth_data)L->bench.data), o.offline_arch);
  if (moejit_create(&ctx, &o) != MOEJIT_OK)
    return 1;
  double t0 = cli_now();
  moejit_status st = bench_plan(ctx, &L->desc, L->config, &plan, &err);
  if (st != MOEJIT_OK) {
    fprintf(stderr, "moejit bench: %s: %s\n", moejit_status_name(st), err.msg);
    rc = st == MOEJIT_ERR_INVALID_ARG ? 2 : 1; /* --config names one the layer cannot take */
    goto done;
  }
  if ((st = mj_floor_compile(ctx, &err)) != MOEJIT_OK) {
    fprintf(stderr, "moejit bench: bandwidth kernel: %s: %s\n", moejit_status_name(st), err.msg);
    goto done;
  }
  printf("compiled for %s in %.2f s; nothing was timed: no GPU\n", o.offline_arch, cli_now() - t0);
  rc = 0;
done:
  moejit_plan_destroy(plan);
  moejit_destroy(ctx);
  return rc;
}

/* Plan, layer and stream for the rows; the context is current. */
static moejit_status bench_open(bench *b, const cli_layer *L, mj_err *err) {
  moejit_status st;
  double t0 = cli_now();
  if ((st = bench_plan(b->ctx, &L->desc, L->config, &b->plan, err)) != MOEJIT_OK)
    return st;
  fprintf(b->out, "plan     %d modules built and loaded in %.3f s\n", mj_rt_plan_modules(b->plan),
          cli_now() - t0);
  if ((st = mj_synth_open(b->ctx, &b->syn, err)) != MOEJIT_OK)
    return st;
  MJ_CU(b->cu, StreamCreate(&b->stream, MJ_CU_STREAM_NON_BLOCKING), err);
fail:
  return st;
}

static void bench_close(bench *b) {
  if (b->stream)
    b->cu->StreamDestroy(b->stream);
  if (b->count)
    b->cu->MemFree(b->count);
  if (b->layer.host_ids)
    mj_synth_layer_destroy(&b->syn, &b->layer);
  mj_synth_close(&b->syn);
  moejit_plan_destroy(b->plan);
}

/* The GPU part: floor rates, then one row per token count. Returns the exit status. */
static int bench_gpu(bench *b, const cli_layer *L, FILE *json, const run_info *ri) {
  FILE *out = b->out;
  floor_rates fr;
  mj_err err;
  moejit_status st;
  int failed_check = 0;
  if ((st = bench_open(b, L, &err)) != MOEJIT_OK) {
    fprintf(stderr, "moejit bench: %s: %s\n", moejit_status_name(st), err.msg);
    return 1;
  }
  /* before the layer, so the bandwidth buffer and the GEMM operands are freed when it comes */
  measure_floor(b, &L->desc, &fr);
  if ((st = mj_synth_layer_create_data(&b->syn, b->plan, L->tokens, L->seed,
                                       (mj_synth_data)b->o.data, &b->layer, &err)) != MOEJIT_OK) {
    fprintf(stderr, "moejit bench: synthetic layer: %s: %s\n", moejit_status_name(st), err.msg);
    return 1;
  }
  if (b->o.graph_tokens && b->cu->MemAlloc(&b->count, sizeof(int32_t)) != MJ_CU_SUCCESS) {
    fprintf(stderr, "moejit bench: cannot allocate the device-side token count\n");
    return 1;
  }
  fprintf(out, "timing   %s, %d warm-up calls, then the median of ",
          b->o.eager ? "eager moejit_forward calls" : "CUDA graph replays", b->o.warmup);
  if (L->repeat > 0)
    fprintf(out, "%d\n", L->repeat);
  else
    fprintf(out, "50 (20 above 16384 tokens)\n");
  if (b->o.graph_tokens)
    fprintf(out, "rows     forwards of %lld tokens, the row's count on the device\n",
            (long long)b->o.graph_tokens);
  print_header(out);
  for (int i = 0; i < L->ntokens; i++) {
    row r;
    int64_t T = L->token_list[i];
    if ((st = run_row(b, T, repeat_for(L, T), L->check, &fr, &r, &err)) != MOEJIT_OK) {
      fprintf(stderr, "moejit bench: tokens=%lld: %s: %s\n", (long long)T, moejit_status_name(st),
              err.msg);
      return 1;
    }
    print_row(out, &L->desc, (mj_synth_data)b->o.data, &r);
    if (json)
      json_row(json, ri, L, &b->o, &fr, &r);
    failed_check |= r.checked && !r.check_ok;
  }
  return failed_check;
}

int cmd_bench(int argc, char **argv) {
  cli_layer L;
  bench b;
  log_catch lc = {0, ""};
  run_info ri = {.device = NULL};
  int nwords, rc;
  FILE *json = NULL;
  moejit_ctx *ctx = NULL;
  memset(&b, 0, sizeof b);
  b.out = stdout;
  if ((rc = cli_parse(argc, argv, CLI_BENCH, bench_usage, &L, NULL, 0, &nwords)) != 0)
    return rc == 1 ? 0 : rc;
  b.o = L.bench;
  mj_gemm_config config;
  mj_err err;
  if (L.config && cli_config(L.config, &L.desc, NULL, &config, &err) != MOEJIT_OK) {
    fprintf(stderr, "moejit bench: %s\n", err.msg);
    return 2;
  }
  static const int64_t defaults[] = {1, 8, 64, 512, 4096, 16384, 65536};
  if ((rc = cli_token_list(&L, defaults, 7, "bench")) != 0)
    return rc;
  if (b.o.graph_tokens) { /* every row runs inside a forward of that many tokens */
    if (b.o.graph_tokens < L.tokens) {
      fprintf(stderr, "moejit bench: --graph-tokens %lld is below the largest --tokens, %lld\n",
              (long long)b.o.graph_tokens, (long long)L.tokens);
      return 2;
    }
    L.tokens = b.o.graph_tokens;
  }
  L.desc.max_tokens = L.tokens; /* one plan, sized for the largest row */
  if (L.check < 0)
    L.check = 0;
  lc.verbose = L.verbose;
  moejit_ctx_options o;
  moejit_ctx_options_init(&o);
  o.log = catch_log;
  o.log_user = &lc;
  moejit_status st = moejit_create(&ctx, &o);
  if (st == MOEJIT_ERR_NO_DEVICE)
    return compile_only(&L, lc.reason);
  if (st != MOEJIT_OK) {
    fprintf(stderr, "moejit bench: %s: %s\n", moejit_status_name(st), lc.reason);
    return 1;
  }
  rc = 1;
  if (b.o.json && strcmp(b.o.json, "-") != 0 && !(json = fopen(b.o.json, "a"))) {
    perror(b.o.json);
    goto done;
  }
  if (b.o.json && !json) { /* "-": stdout carries only the JSON lines */
    json = stdout;
    b.out = stderr;
  }
  find_commit(ri.commit, sizeof ri.commit);
  time_t now = time(NULL);
  struct tm utc;
  strftime(ri.date, sizeof ri.date, "%Y-%m-%d", gmtime_r(&now, &utc));
  moejit_device_info_init(&b.info);
  moejit_device_info_get(ctx, &b.info);
  ri.device = b.info.name;
  ri.command = command_line(argc, argv);
  const moejit_layer_desc *d = &L.desc;
  fprintf(b.out, "device   %s (%s, %d SMs)\n", b.info.name, b.info.arch, b.info.sm_count);
  char words[160];
  fprintf(b.out, "layer    H=%lld I=%lld E=%lld K=%lld %s, %s routing, %s data, seed %llu\n",
          (long long)d->hidden, (long long)d->intermediate, (long long)d->experts,
          (long long)d->top_k, cli_layer_words(d, words, sizeof words),
          d->routing == MOEJIT_ROUTING_DENSE ? "dense" : "topk",
          mj_synth_data_name((mj_synth_data)L.bench.data), (unsigned long long)L.seed);
  b.ctx = ctx;
  b.cu = mj_rt_driver(ctx);
  int pushed = 0;
  if (mj_rt_enter(ctx, &pushed, &err) != MOEJIT_OK) {
    fprintf(stderr, "moejit bench: cannot make the GPU's context current: %s\n", err.msg);
    goto done;
  }
  rc = bench_gpu(&b, &L, json, &ri);
  bench_close(&b);
  mj_rt_leave(ctx, pushed);
done:
  /* a full disk shows at the flush: the rows are not all there */
  if (json) {
    int bad = fflush(json) != 0 || ferror(json), e = errno;
    if (json != stdout && fclose(json) != 0 && !bad) {
      bad = 1;
      e = errno;
    }
    if (bad) {
      fprintf(stderr, "moejit bench: --json %s: cannot write: %s\n", b.o.json, strerror(e));
      rc = 1;
    }
  }
  free(ri.command);
  moejit_destroy(ctx);
  return rc;
}
