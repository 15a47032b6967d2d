/* test_gen_sandbox.c: the Lua sandbox of gen/template.c (removed libraries, text-only chunks, fresh
 * environments, instruction and memory limits, chunk names, pure rendering, template folders);
 * uses gen/gen.h, Lua's C API (to dump a binary chunk) and cmocka. No GPU or NVRTC needed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lua.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gen/gen.h"
#include "gen/nvrtc.h"

/* Large enough for any test loop here; the library's own default is internal to template.c. */
#define BIG_BUDGET 200000000L
#define BIG_MEM ((size_t)64 << 20)

/* ---- helpers --------------------------------------------------------------------------------- */

static int gen_setup(void **state) {
  mj_err err;
  mj_gen *g = NULL;
  if (mj_gen_open(&g, NULL, &err) != MOEJIT_OK) {
    print_error("mj_gen_open: %s\n", err.msg);
    return -1;
  }
  *state = g;
  return 0;
}

static int gen_teardown(void **state) {
  mj_gen_close(*state);
  *state = NULL;
  return 0;
}

/* Evaluates chunk, which must succeed, and returns its result (malloc'd). */
static char *eval_ok(mj_gen *g, const char *chunk) {
  mj_err err;
  char *result = NULL;
  moejit_status st = mj_gen_eval(g, chunk, &result, &err);
  if (st != MOEJIT_OK)
    fail_msg("eval of `%s` failed with %s: %s", chunk, moejit_status_name(st), err.msg);
  assert_non_null(result);
  return result;
}

static void assert_eval(mj_gen *g, const char *chunk, const char *want) {
  char *got = eval_ok(g, chunk);
  if (strcmp(got, want) != 0)
    fail_msg("eval of `%s` gave \"%s\", expected \"%s\"", chunk, got, want);
  free(got);
}

/* Evaluates chunk, which must fail with status `want`; the message is left in err. */
static void assert_eval_fails(mj_gen *g, const char *chunk, moejit_status want, mj_err *err) {
  char *result = (char *)"sentinel";
  err->msg[0] = '\0';
  moejit_status st = mj_gen_eval(g, chunk, &result, err);
  if (st != want)
    fail_msg("eval of `%s` gave %s, expected %s (%s)", chunk, moejit_status_name(st),
             moejit_status_name(want), err->msg);
  assert_null(result);
  assert_true(err->msg[0] != '\0');
}

static void assert_contains(const char *haystack, const char *needle) {
  if (!haystack || !strstr(haystack, needle))
    fail_msg("\"%s\" not found in:\n%s", needle, haystack ? haystack : "(null)");
}

/* The specs plan.c builds for each template, written out by hand. */
static void spec_route(mj_spec *s) {
  memset(s, 0, sizeof *s);
  mj_spec_int(s, "experts", 32);
  mj_spec_int(s, "top_k", 4);
  mj_spec_int(s, "chunk", 256);
  mj_spec_str(s, "ids", "i32");
  mj_spec_str(s, "weights", "f32");
  mj_spec_str(s, "routing", "topk");
}

static void spec_combine(mj_spec *s) {
  memset(s, 0, sizeof *s);
  mj_spec_str(s, "dtype", "bf16");
  mj_spec_int(s, "hidden", 2880);
  mj_spec_int(s, "top_k", 4);
}

/* A GEMM1 (x -> gate and up, SwiGLU); dtype NULL leaves the key out. f32 takes the FFMA keys (tm,
 * tn). */
static void spec_gemm(mj_spec *s, const char *dtype) {
  memset(s, 0, sizeof *s);
  if (dtype)
    mj_spec_str(s, "dtype", dtype);
  mj_spec_str(s, "stage", "gemm1");
  mj_spec_int(s, "hidden", 2880);
  mj_spec_int(s, "intermediate", 2880);
  mj_spec_int(s, "top_k", 4);
  mj_spec_num(s, "alpha", 1.702);
  mj_spec_num(s, "limit", 7.0);
  int f32 = dtype && strcmp(dtype, "f32") == 0;
  mj_spec_int(s, "bm", 64);
  mj_spec_int(s, "bn", f32 ? 64 : 128);
  mj_spec_int(s, "bk", f32 ? 16 : 32);
  mj_spec_int(s, "stages", f32 ? 3 : 4);
  mj_spec_int(s, f32 ? "tm" : "wm", f32 ? 4 : 2);
  mj_spec_int(s, f32 ? "tn" : "wn", f32 ? 4 : 2);
}

typedef struct named_spec {
  const char *template_name;
  mj_spec spec;
} named_spec;

enum { NSPECS = 5 };

static void all_specs(named_spec out[NSPECS]) {
  out[0].template_name = "route";
  spec_route(&out[0].spec);
  out[1].template_name = "combine";
  spec_combine(&out[1].spec);
  out[2].template_name = "gemm";
  spec_gemm(&out[2].spec, "bf16");
  out[3].template_name = "gemm";
  spec_gemm(&out[3].spec, "f32");
  out[4].template_name = "synth";
  memset(&out[4].spec, 0, sizeof out[4].spec);
}

static char *render_ok(mj_gen *g, const char *name, const mj_spec *spec) {
  mj_err err;
  char *src = NULL;
  moejit_status st = mj_gen_render(g, name, spec, &src, NULL, &err);
  if (st != MOEJIT_OK)
    fail_msg("render %s failed with %s: %s", name, moejit_status_name(st), err.msg);
  assert_non_null(src);
  return src;
}

/* Writes len bytes to dir/name. */
static void write_file(const char *dir, const char *name, const void *data, size_t len) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

static void remove_file(const char *dir, const char *name) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  unlink(path);
}

typedef struct byte_buf {
  unsigned char data[8192];
  size_t len;
} byte_buf;

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  byte_buf *b = ud;
  if (b->len + sz > sizeof b->data)
    return 1;
  memcpy(b->data + b->len, p, sz);
  b->len += sz;
  return 0;
}

/* ---- what the sandbox leaves out ------------------------------------------------------------- */

static void test_removed_globals(void **state) {
  mj_gen *g = *state;
  static const char *const removed[] = {"io",   "os",        "debug",          "package",
                                        "load", "loadfile",  "dofile",         "print",
                                        "utf8", "coroutine", "collectgarbage", "string.dump"};
  for (size_t i = 0; i < sizeof removed / sizeof removed[0]; i++) {
    char chunk[128];
    snprintf(chunk, sizeof chunk, "return tostring(%s)", removed[i]);
    assert_eval(g, chunk, "nil");
  }
  /* What stays: without these controls, an eval that always said "nil" would pass the above. */
  static const char *const kept[] = {"string.format", "string.rep", "table.concat", "math.floor",
                                     "pairs",         "ipairs",     "error",        "pcall",
                                     "tostring",      "require",    "setmetatable"};
  for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
    char chunk[128];
    snprintf(chunk, sizeof chunk, "return type(%s)", kept[i]);
    assert_eval(g, chunk, "function");
  }
  assert_eval(g, "return _VERSION", "Lua 5.4");
  assert_eval(g, "return string.format('%d-%s', 7, 'x')", "7-x");
}

static void test_require_only_reaches_templates(void **state) {
  mj_gen *g = *state;
  mj_err err;
  static const char *const modules[] = {"io", "os", "debug", "string", "package", "nosuch"};
  for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++) {
    char chunk[128], quoted[64];
    snprintf(chunk, sizeof chunk, "return require('%s')", modules[i]);
    snprintf(quoted, sizeof quoted, "'%s'", modules[i]);
    assert_eval_fails(g, chunk, MOEJIT_ERR_TEMPLATE, &err);
    assert_contains(err.msg, quoted);
  }
  /* No way out of the template set by path. */
  assert_eval_fails(g, "return require('../CMakeLists')", MOEJIT_ERR_TEMPLATE, &err);
  assert_eval_fails(g, "return require('templates/gemm')", MOEJIT_ERR_TEMPLATE, &err);
  assert_eval_fails(g, "return require('gemm.lua')", MOEJIT_ERR_TEMPLATE, &err);
  /* A template module loads, and is cached within one emit. */
  assert_eval(g, "return type(require('prelude').header)", "function");
  assert_eval(g, "return tostring(require('prelude') == require('prelude'))", "true");
}

/* Text chunks only: a precompiled chunk is refused, the same source as text is accepted. */
static void test_binary_chunks_refused(void **state) {
  (void)state;
  static const char source[] = "return function(spec) return 'rendered from ' .. spec.tag end\n";
  byte_buf bin = {.len = 0};
  lua_State *L = luaL_newstate();
  assert_non_null(L);
  assert_int_equal(luaL_loadstring(L, source), LUA_OK);
  assert_int_equal(lua_dump(L, dump_writer, &bin, 0), 0);
  lua_close(L);
  assert_true(bin.len > 4);
  assert_memory_equal(bin.data, LUA_SIGNATURE, 4);

  char dir[] = "/tmp/mj_sandbox_XXXXXX";
  assert_non_null(mkdtemp(dir));
  write_file(dir, "bin.lua", bin.data, bin.len);
  write_file(dir, "txt.lua", source, sizeof source - 1);
  mj_gen *g = NULL;
  mj_err err;
  moejit_status st = mj_gen_open(&g, dir, &err);
  remove_file(dir, "bin.lua");
  remove_file(dir, "txt.lua");
  rmdir(dir);
  if (st != MOEJIT_OK)
    fail_msg("mj_gen_open(%s): %s", dir, err.msg);

  mj_spec spec;
  memset(&spec, 0, sizeof spec);
  mj_spec_str(&spec, "tag", "text");
  char *src = render_ok(g, "txt", &spec);
  assert_string_equal(src, "rendered from text");
  free(src);

  src = (char *)"sentinel";
  st = mj_gen_render(g, "bin", &spec, &src, NULL, &err);
  assert_int_equal(st, MOEJIT_ERR_TEMPLATE);
  assert_null(src);
  assert_contains(err.msg, "binary");
  assert_true(strncmp(err.msg, "bin:", 4) == 0);

  /* An eval chunk that starts like a binary chunk is refused too (not a syntax error). */
  assert_eval_fails(g, LUA_SIGNATURE "return 1", MOEJIT_ERR_TEMPLATE, &err);
  assert_contains(err.msg, "binary");
  mj_gen_close(g);
}

/* ---- one emit cannot change what the next one sees ------------------------------------------- */

static void test_fresh_environment_per_emit(void **state) {
  mj_gen *g = *state;
  assert_eval(g, "x_global = 5; string.upper = nil; return 1", "1");
  assert_eval(g, "return tostring(x_global) .. tostring(string.upper ~= nil)", "niltrue");

  assert_eval(g, "math.pi = 3; table.concat = nil; _G.y = 1; return tostring(y)", "1");
  assert_eval(g,
              "return tostring(math.pi > 3.14) .. tostring(table.concat ~= nil) .. "
              "tostring(rawget(_G, 'y'))",
              "truetruenil");

  /* Replacing a base function does not outlive the emit either. */
  assert_eval(g, "tostring = function() return 'poisoned' end; return 1", "1");
  assert_eval(g, "return tostring(1)", "1");

  /* The shared string metatable is hidden; string methods still work after the emit's own
   * string table lost a field, because the metatable's table is not the emit's copy. */
  assert_eval(g, "return tostring(getmetatable(''))", "false");
  assert_eval(g, "string.upper = nil; return ('abc'):upper()", "ABC");
  assert_eval(g, "return tostring(pcall(setmetatable, 'x', {}))", "false");

  /* A module's tables are loaded afresh: poisoning prelude's dtype table in one emit does not
   * reach the next render. */
  assert_eval(g,
              "local p = require('prelude'); p.dtypes.f32.ctype = 'double'; "
              "return require('prelude').dtypes.f32.ctype",
              "double");
  mj_spec spec;
  spec_gemm(&spec, "f32");
  char *src = render_ok(g, "gemm", &spec);
  assert_contains(src, "typedef float T;");
  assert_null(strstr(src, "double"));
  free(src);
}

/* ---- limits ---------------------------------------------------------------------------------- */

static void test_instruction_budget(void **state) {
  mj_gen *g = *state;
  mj_err err;
  mj_gen_set_limits(g, 0, 1000000);
  assert_eval_fails(g, "while true do end", MOEJIT_ERR_TEMPLATE, &err);
  assert_contains(err.msg, "budget");
  assert_eval_fails(g, "local function f() return f() end return f()", MOEJIT_ERR_TEMPLATE, &err);
  assert_contains(err.msg, "budget");
  /* The state is still usable. */
  assert_eval(g, "return 1 + 1", "2");
  /* The budget is per emit: five loops of a third of it each all pass. */
  for (int i = 0; i < 5; i++)
    assert_eval(g, "local s = 0 for i = 1, 100000 do s = s + i end return s", "5000050000");
  /* A template render is bounded too, and renders again once the budget is raised. */
  mj_spec spec;
  spec_gemm(&spec, "bf16");
  mj_gen_set_limits(g, 0, 1); /* the hook looks every 1000 instructions */
  char *src = (char *)"sentinel";
  assert_int_equal(mj_gen_render(g, "gemm", &spec, &src, NULL, &err), MOEJIT_ERR_TEMPLATE);
  assert_null(src);
  assert_contains(err.msg, "budget");
  mj_gen_set_limits(g, 0, BIG_BUDGET);
  src = render_ok(g, "gemm", &spec);
  free(src);
}

/* Evaluates chunk, which must fail for want of memory: MOEJIT_ERR_OUT_OF_MEMORY, or
 * MOEJIT_ERR_TEMPLATE where Lua raised it as an ordinary error ("not enough memory" from a
 * luaL_Buffer). */
static void assert_eval_runs_out(mj_gen *g, const char *chunk) {
  mj_err err;
  char *result = (char *)"sentinel";
  err.msg[0] = '\0';
  moejit_status st = mj_gen_eval(g, chunk, &result, &err);
  if (st != MOEJIT_ERR_OUT_OF_MEMORY && st != MOEJIT_ERR_TEMPLATE)
    fail_msg("`%s` under the cap gave %s (%s)", chunk, moejit_status_name(st),
             st == MOEJIT_OK ? result : err.msg);
  assert_null(result);
  assert_true(err.msg[0] != '\0');
  if (st == MOEJIT_ERR_TEMPLATE && !strstr(err.msg, "memory"))
    fail_msg("`%s` failed, but not for memory: %s", chunk, err.msg);
}

/* pcall must not swallow the budget: a template that catches the error and loops on would run
 * for ever. This chunk stops by itself, after catching the budget error a few times. */
static void test_budget_survives_pcall(void **state) {
  mj_gen *g = *state;
  mj_err err;
  mj_gen_set_limits(g, 0, 1000000);
  assert_eval_fails(g,
                    "local caught = 0 "
                    "while true do "
                    "  if not pcall(function() while true do end end) then caught = caught + 1 end "
                    "  if caught > 3 then return caught end "
                    "end",
                    MOEJIT_ERR_TEMPLATE, &err);
  assert_contains(err.msg, "budget");
  assert_eval(g, "return 1 + 1", "2");
}

static void test_memory_cap(void **state) {
  mj_gen *g = *state;
  mj_gen_set_limits(g, (size_t)8 << 20, 0);
  static const char *const hogs[] = {
      "local t = {} for i = 1, 1e8 do t[i] = i end return #t",
      "return #string.rep('x', 1 << 30)",
      "local t = {} for i = 1, 1e7 do t[#t + 1] = tostring(i) .. 'padding' end return #t",
      "return #table.concat({string.rep('y', 1 << 22), string.rep('z', 1 << 22)})",
  };
  for (size_t i = 0; i < sizeof hogs / sizeof hogs[0]; i++) {
    assert_eval_runs_out(g, hogs[i]);
    /* A later eval works, under the same cap. */
    assert_eval(g, "return 40 + 2", "42");
  }
  /* Below the cap allocations succeed; a render fits too. */
  assert_eval(g, "return #string.rep('x', 1 << 20)", "1048576");
  mj_spec spec;
  spec_gemm(&spec, "bf16");
  free(render_ok(g, "gemm", &spec));
  /* 16 MiB fails under 8 MiB and fits once the cap is raised: the cap is what refused it. */
  assert_eval_runs_out(g, "return #string.rep('x', 16 << 20)");
  mj_gen_set_limits(g, BIG_MEM, 0);
  assert_eval(g, "return #string.rep('x', 16 << 20)", "16777216");
}

/* ---- errors name the template file and line -------------------------------------------------- */

static void test_errors_carry_chunk_names(void **state) {
  mj_gen *g = *state;
  mj_err err;
  mj_spec spec;
  char *src = (char *)"sentinel";

  spec_gemm(&spec, NULL); /* no dtype */
  assert_int_equal(mj_gen_render(g, "gemm", &spec, &src, NULL, &err), MOEJIT_ERR_TEMPLATE);
  assert_null(src);
  assert_contains(err.msg, "templates/");
  assert_contains(err.msg, "dtype");
  /* "templates/gemm.lua:<line>:" names the caller of prelude.dtype (error level 2). */
  const char *at = strstr(err.msg, "templates/gemm.lua:");
  if (!at)
    fail_msg("no templates/gemm.lua:<line> in:\n%s", err.msg);
  at += strlen("templates/gemm.lua:");
  char *end;
  long line = strtol(at, &end, 10);
  assert_true(line > 0);
  assert_true(end != at && *end == ':');
  assert_contains(err.msg, "stack traceback");

  /* A value of the wrong type names the key. */
  spec_gemm(&spec, "bf16");
  mj_spec_str(&spec, "bm", "sixty-four");
  assert_int_equal(mj_gen_render(g, "gemm", &spec, &src, NULL, &err), MOEJIT_ERR_TEMPLATE);
  assert_contains(err.msg, "templates/gemm.lua:");
  assert_contains(err.msg, "spec.bm");

  /* Errors raised in a required module carry that module's name. */
  assert_eval_fails(g, "return require('prelude').constants({{'kX', 'int', nil}})",
                    MOEJIT_ERR_TEMPLATE, &err);
  assert_contains(err.msg, "kX");

  memset(&spec, 0, sizeof spec);
  assert_int_equal(mj_gen_render(g, "nosuch", &spec, &src, NULL, &err), MOEJIT_ERR_TEMPLATE);
  assert_contains(err.msg, "templates/nosuch.lua");
  /* prelude is a module, not a template: it returns a table. */
  assert_int_equal(mj_gen_render(g, "prelude", &spec, &src, NULL, &err), MOEJIT_ERR_TEMPLATE);
  assert_contains(err.msg, "templates/prelude.lua");
  assert_contains(err.msg, "function");
  /* eval chunks are named too. */
  assert_eval_fails(g, "return +", MOEJIT_ERR_TEMPLATE, &err);
  assert_contains(err.msg, "eval");
}

static void test_spec_overflow_refused(void **state) {
  mj_gen *g = *state;
  static const char *const keys[] = {
      "k00", "k01", "k02", "k03", "k04", "k05", "k06", "k07", "k08", "k09", "k10", "k11", "k12",
      "k13", "k14", "k15", "k16", "k17", "k18", "k19", "k20", "k21", "k22", "k23", "k24", "k25",
      "k26", "k27", "k28", "k29", "k30", "k31", "k32", "k33", "k34", "k35", "k36", "k37", "k38",
      "k39", "k40", "k41", "k42", "k43", "k44", "k45", "k46", "k47", "k48"};
  assert_int_equal(sizeof keys / sizeof keys[0], MJ_SPEC_MAX + 1);
  mj_spec spec;
  memset(&spec, 0, sizeof spec);
  for (int i = 0; i < MJ_SPEC_MAX; i++)
    mj_spec_int(&spec, keys[i], i);
  assert_int_equal(spec.overflow, 0);
  mj_spec_int(&spec, keys[0], 99); /* an existing key is replaced, not added */
  assert_int_equal(spec.count, MJ_SPEC_MAX);
  assert_int_equal(spec.overflow, 0);
  mj_spec_int(&spec, keys[MJ_SPEC_MAX], 1);
  assert_int_equal(spec.overflow, 1);
  mj_err err;
  char *src = (char *)"sentinel";
  assert_int_equal(mj_gen_render(g, "synth", &spec, &src, NULL, &err), MOEJIT_ERR_INTERNAL);
  assert_null(src);
  assert_contains(err.msg, "entries");
}

/* ---- rendering is a pure function of (template, spec) ---------------------------------------- */

/* Checks the header lines: the template name, then the spec's keys in insertion order. */
static void check_header(const char *src, const char *name, const mj_spec *spec) {
  char first[128];
  snprintf(first, sizeof first, "// moejit: generated by templates/%s.lua\n", name);
  if (strncmp(src, first, strlen(first)) != 0)
    fail_msg("%s does not start with \"%s\":\n%.200s", name, first, src);
  const char *line = src + strlen(first);
  assert_true(strncmp(line, "// spec:", 8) == 0);
  const char *eol = strchr(line, '\n');
  assert_non_null(eol);
  const char *at = line;
  for (int i = 0; i < spec->count; i++) {
    char key[48];
    snprintf(key, sizeof key, " %s=", spec->e[i].key);
    const char *hit = strstr(at, key);
    if (!hit || hit > eol)
      fail_msg("%s: spec key %s missing or out of order in \"%.*s\"", name, spec->e[i].key,
               (int)(eol - line), line);
    if (spec->e[i].kind == MJ_SPEC_STR) {
      size_t n = strlen(spec->e[i].s);
      assert_true(strncmp(hit + strlen(key), spec->e[i].s, n) == 0);
    } else if (spec->e[i].kind == MJ_SPEC_INT) {
      assert_int_equal(strtoll(hit + strlen(key), NULL, 10), spec->e[i].i);
    }
    at = hit + strlen(key);
  }
  assert_null(strstr(src, "#include <"));
}

static void test_render_is_pure(void **state) {
  mj_gen *g = *state;
  named_spec specs[NSPECS];
  all_specs(specs);
  mj_gen *other = NULL;
  mj_err err;
  assert_int_equal(mj_gen_open(&other, NULL, &err), MOEJIT_OK);
  char *first[NSPECS];
  for (int i = 0; i < NSPECS; i++) {
    first[i] = render_ok(g, specs[i].template_name, &specs[i].spec);
    check_header(first[i], specs[i].template_name, &specs[i].spec);
  }
  /* Again, in reverse order (so other renders came in between), and on another sandbox. */
  for (int i = NSPECS - 1; i >= 0; i--) {
    char *again = render_ok(g, specs[i].template_name, &specs[i].spec);
    char *elsewhere = render_ok(other, specs[i].template_name, &specs[i].spec);
    assert_string_equal(again, first[i]);
    assert_string_equal(elsewhere, first[i]);
    free(again);
    free(elsewhere);
  }
  /* The two dtypes take different paths; a changed value changes the text. */
  assert_contains(first[2], "#define MJ_GEMM_PATH MJ_PATH_MMA\n");  /* bf16: tensor cores */
  assert_contains(first[3], "#define MJ_GEMM_PATH MJ_PATH_FFMA\n"); /* f32, no math key */
  mj_spec changed = specs[2].spec;
  mj_spec_int(&changed, "intermediate", 2888);
  char *diff = render_ok(g, "gemm", &changed);
  assert_string_not_equal(diff, first[2]);
  assert_contains(diff, "intermediate=2888");
  assert_contains(diff, "static constexpr int kN = 5776;");
  free(diff);
  for (int i = 0; i < NSPECS; i++)
    free(first[i]);
  mj_gen_close(other);
}

/* ---- a folder of templates ------------------------------------------------------------------- */

static void test_template_dir(void **state) {
  mj_gen *embedded = *state, *folder = NULL, *empty = NULL;
  mj_err err;
  moejit_status st = mj_gen_open(&folder, MOEJIT_SOURCE_DIR "/templates", &err);
  if (st != MOEJIT_OK)
    fail_msg("mj_gen_open(%s): %s", MOEJIT_SOURCE_DIR "/templates", err.msg);
  named_spec specs[NSPECS];
  all_specs(specs);
  for (int i = 0; i < NSPECS; i++) {
    char *a = render_ok(embedded, specs[i].template_name, &specs[i].spec);
    char *b = render_ok(folder, specs[i].template_name, &specs[i].spec);
    assert_string_equal(a, b);
    free(a);
    free(b);
  }
  /* The headers NVRTC sees are the same files, in the same order. */
  int ne = 0, nf = 0;
  const mj_gen_file *he = mj_gen_headers(embedded, &ne), *hf = mj_gen_headers(folder, &nf);
  assert_true(ne >= 5); /* prelude, route, combine, gemm, synth */
  assert_int_equal(ne, nf);
  for (int i = 0; i < ne; i++) {
    assert_string_equal(he[i].name, hf[i].name);
    assert_int_equal(he[i].len, hf[i].len);
    assert_memory_equal(he[i].text, hf[i].text, he[i].len);
    if (i > 0)
      assert_true(strcmp(he[i - 1].name, he[i].name) < 0);
  }
  mj_gen_close(folder);

  /* "" means the embedded templates. */
  assert_int_equal(mj_gen_open(&empty, "", &err), MOEJIT_OK);
  assert_non_null(empty);
  int n0 = 0;
  mj_gen_headers(empty, &n0);
  assert_int_equal(n0, ne);
  mj_gen_close(empty);

  /* A missing folder is an I/O error naming it, and returns no sandbox. */
  static const char missing[] = "/nonexistent/moejit-templates-42";
  mj_gen *none = (mj_gen *)&err;
  assert_int_equal(mj_gen_open(&none, missing, &err), MOEJIT_ERR_IO);
  assert_null(none);
  assert_contains(err.msg, missing);
}

/* Loading NVRTC again after unloading it costs nothing: each load of the library allocates what
 * it never frees (its C++ runtime's emergency pool), so a context that unloaded it would leave
 * that behind, and create/destroy cycles grew the process (about 72 KB a cycle). This suite
 * loads NVRTC nowhere else, so nothing else keeps it loaded. */
static void test_nvrtc_reload_does_not_grow(void **state) {
  (void)state;
  mj_nvrtc nv;
  mj_err err;
  if (mj_gen_nvrtc_load(&nv, &err) != MOEJIT_OK) {
    print_message("skipped: %s\n", err.msg);
    skip();
  }
  mj_gen_nvrtc_unload(&nv);
  const size_t before = mallinfo2().uordblks;
  for (int i = 0; i < 4; i++) {
    assert_int_equal(mj_gen_nvrtc_load(&nv, &err), MOEJIT_OK);
    mj_gen_nvrtc_unload(&nv);
  }
  const size_t after = mallinfo2().uordblks;
  if (after > before + 4096)
    fail_msg("4 loads of NVRTC grew the heap by %zu bytes", after - before);
}

/* MOEJIT_NVRTC decides alone: a path that does not load is an error naming it, even where the
 * toolkit's NVRTC would load (tests/nvrtc_search.sh checks the rest of the order). */
static void test_nvrtc_env_decides(void **state) {
  (void)state;
  mj_nvrtc nv;
  mj_err err;
  setenv("MOEJIT_NVRTC", "/nonexistent/libnvrtc.so.13", 1);
  moejit_status st = mj_gen_nvrtc_load(&nv, &err);
  unsetenv("MOEJIT_NVRTC");
  assert_int_equal(st, MOEJIT_ERR_NO_COMPILER);
  assert_non_null(strstr(err.msg, "MOEJIT_NVRTC=/nonexistent/libnvrtc.so.13 cannot be loaded"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_removed_globals, gen_setup, gen_teardown),
      cmocka_unit_test_setup_teardown(test_require_only_reaches_templates, gen_setup, gen_teardown),
      cmocka_unit_test(test_binary_chunks_refused),
      cmocka_unit_test(test_nvrtc_reload_does_not_grow),
      cmocka_unit_test(test_nvrtc_env_decides),
      cmocka_unit_test_setup_teardown(test_fresh_environment_per_emit, gen_setup, gen_teardown),
      cmocka_unit_test_setup_teardown(test_instruction_budget, gen_setup, gen_teardown),
      cmocka_unit_test_setup_teardown(test_budget_survives_pcall, gen_setup, gen_teardown),
      cmocka_unit_test_setup_teardown(test_memory_cap, gen_setup, gen_teardown),
      cmocka_unit_test_setup_teardown(test_errors_carry_chunk_names, gen_setup, gen_teardown),
      cmocka_unit_test_setup_teardown(test_spec_overflow_refused, gen_setup, gen_teardown),
      cmocka_unit_test_setup_teardown(test_render_is_pure, gen_setup, gen_teardown),
      cmocka_unit_test_setup_teardown(test_template_dir, gen_setup, gen_teardown),
  };
  return cmocka_run_group_tests_name("gen_sandbox", tests, NULL, NULL);
}
