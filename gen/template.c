/* template.c: the Lua sandbox that renders kernel templates (see gen.h).
 *
 * One lua_State per generator, with a capped allocator, only the base library (less load, loadfile,
 * dofile, print, collectgarbage), string (less dump), table and math. Template modules are text
 * chunks named "@templates/<name>.lua", reached only through a `require` that reads the embedded
 * (or folder) sources. Every render builds a fresh environment, copies of the library tables
 * included, so one render cannot change what the next one sees; an instruction hook bounds it. */
#include "gen/gen.h"

#include <dirent.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/field.h"
#include "gen/embedded.h"

#define MJ_LUA_MEM_CAP ((size_t)64 << 20)
#define MJ_LUA_BUDGET 200000000L
#define MJ_LUA_HOOK_STEP 1000

struct mj_gen {
  lua_State *L;
  size_t mem_used, mem_cap;
  long budget, steps;
  mj_gen_file *lua_files;
  int n_lua;
  mj_gen_file *headers;
  int n_headers;
};

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  mj_gen *g = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    g->mem_used -= old;
    return NULL;
  }
  if (nsize > old && g->mem_used + (nsize - old) > g->mem_cap)
    return NULL;
  void *p = realloc(ptr, nsize);
  if (p)
    g->mem_used = g->mem_used - old + nsize;
  return p;
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  void *ud;
  lua_getallocf(L, &ud);
  mj_gen *g = ud;
  g->steps += MJ_LUA_HOOK_STEP;
  if (g->steps > g->budget) {
    /* From now on every instruction fails, so a pcall inside the template cannot swallow it. */
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "template exceeded its instruction budget (%I)", (lua_Integer)g->budget);
  }
}

static void free_files(mj_gen_file *f, int n) {
  for (int i = 0; i < n; i++) {
    free(f[i].name);
    free(f[i].text);
  }
  free(f);
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static moejit_status add_file(mj_gen *g, const char *name, const char *text, size_t len) {
  int is_lua = ends_with(name, ".lua");
  if (!is_lua && !ends_with(name, ".cuh"))
    return MOEJIT_OK;
  mj_gen_file **arr = is_lua ? &g->lua_files : &g->headers;
  int *n = is_lua ? &g->n_lua : &g->n_headers;
  mj_gen_file *grown = realloc(*arr, (size_t)(*n + 1) * sizeof **arr);
  if (!grown)
    return MOEJIT_ERR_OUT_OF_MEMORY;
  *arr = grown;
  mj_gen_file *f = &grown[*n];
  f->name = strdup(name);
  f->text = malloc(len + 1);
  if (!f->name || !f->text) {
    free(f->name);
    free(f->text);
    return MOEJIT_ERR_OUT_OF_MEMORY;
  }
  memcpy(f->text, text, len);
  f->text[len] = '\0';
  f->len = len;
  (*n)++;
  return MOEJIT_OK;
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const mj_gen_file *)a)->name, ((const mj_gen_file *)b)->name);
}

static moejit_status read_folder(mj_gen *g, const char *dir, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  DIR *d = opendir(dir);
  if (!d)
    return mj_errf(err, MOEJIT_ERR_IO, "template_dir=\"%s\" cannot be opened", dir);
  struct dirent *de;
  while (st == MOEJIT_OK && (de = readdir(d)) != NULL) {
    if (!ends_with(de->d_name, ".lua") && !ends_with(de->d_name, ".cuh"))
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    FILE *f = fopen(path, "rb");
    if (!f) {
      st = mj_errf(err, MOEJIT_ERR_IO, "template file \"%s\" cannot be read", path);
      break;
    }
    char *text = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
      text = malloc((size_t)len + 1);
      if (text && fread(text, 1, (size_t)len, f) != (size_t)len)
        len = -1;
    }
    fclose(f);
    if (!text || len < 0)
      st = text ? mj_errf(err, MOEJIT_ERR_IO, "template file \"%s\" cannot be read", path)
                : mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory reading \"%s\"", path);
    else
      st = add_file(g, de->d_name, text, (size_t)len);
    free(text);
  }
  closedir(d);
  return st;
}

/* The global table every render copies from. */
static int open_sandbox(lua_State *L) {
  static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                  {LUA_STRLIBNAME, luaopen_string},
                                  {LUA_TABLIBNAME, luaopen_table},
                                  {LUA_MATHLIBNAME, luaopen_math},
                                  {NULL, NULL}};
  for (const luaL_Reg *lib = libs; lib->func; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }
  static const char *const removed[] = {"load",  "loadfile",       "dofile", "require",
                                        "print", "collectgarbage", NULL};
  for (const char *const *name = removed; *name; name++) {
    lua_pushnil(L);
    lua_setglobal(L, *name);
  }
  lua_getglobal(L, LUA_STRLIBNAME);
  lua_pushnil(L);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);
  /* Strings share one metatable; hide it so a template cannot reach the original string table. */
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 2);
  return 0;
}

moejit_status mj_gen_open(mj_gen **out, const char *template_dir, mj_err *err) {
  moejit_status st = MOEJIT_OK;
  *out = NULL;
  mj_gen *g = calloc(1, sizeof *g);
  if (!g)
    return mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory creating the template sandbox");
  g->mem_cap = MJ_LUA_MEM_CAP;
  g->budget = MJ_LUA_BUDGET;
  if (template_dir && *template_dir) {
    st = read_folder(g, template_dir, err);
  } else {
    for (const mj_embedded_file *f = mj_embedded_templates; f->name && st == MOEJIT_OK; f++)
      st = add_file(g, f->name, f->text, f->len);
    if (st != MOEJIT_OK)
      mj_errf(err, st, "out of memory copying the embedded templates");
  }
  if (st != MOEJIT_OK)
    goto fail;
  if (g->n_lua > 1)
    qsort(g->lua_files, (size_t)g->n_lua, sizeof *g->lua_files, by_name);
  if (g->n_headers > 1)
    qsort(g->headers, (size_t)g->n_headers, sizeof *g->headers, by_name);
  g->L = lua_newstate(capped_alloc, g);
  if (!g->L) {
    st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory creating the Lua state");
    goto fail;
  }
  lua_pushcfunction(g->L, open_sandbox);
  if (lua_pcall(g->L, 0, 0, 0) != LUA_OK) {
    st = mj_errf(err, MOEJIT_ERR_TEMPLATE, "opening the sandbox: %s", lua_tostring(g->L, -1));
    goto fail;
  }
  *out = g;
  return MOEJIT_OK;
fail:
  mj_gen_close(g);
  return st;
}

void mj_gen_close(mj_gen *g) {
  if (!g)
    return;
  if (g->L)
    lua_close(g->L);
  free_files(g->lua_files, g->n_lua);
  free_files(g->headers, g->n_headers);
  free(g);
}

void mj_gen_set_limits(mj_gen *g, size_t mem_bytes, long instructions) {
  if (mem_bytes)
    g->mem_cap = mem_bytes;
  if (instructions)
    g->budget = instructions;
}

const mj_gen_file *mj_gen_headers(const mj_gen *g, int *count) {
  *count = g->n_headers;
  return g->headers;
}

static const mj_gen_file *find_lua(const mj_gen *g, const char *module) {
  char name[128];
  snprintf(name, sizeof name, "%s.lua", module);
  for (int i = 0; i < g->n_lua; i++)
    if (strcmp(g->lua_files[i].name, name) == 0)
      return &g->lua_files[i];
  return NULL;
}

/* require(name): upvalue 1 the environment, upvalue 2 its table of loaded modules. */
static int sandbox_require(lua_State *L) {
  const char *module = luaL_checkstring(L, 1);
  lua_getfield(L, lua_upvalueindex(2), module);
  if (!lua_isnil(L, -1))
    return 1;
  lua_pop(L, 1);
  void *ud;
  lua_getallocf(L, &ud);
  const mj_gen_file *f = find_lua(ud, module);
  if (!f)
    return luaL_error(L, "module '%s' is not a template (templates/%s.lua)", module, module);
  char chunkname[160];
  snprintf(chunkname, sizeof chunkname, "@templates/%s.lua", module);
  if (luaL_loadbufferx(L, f->text, f->len, chunkname, "t") != LUA_OK)
    return luaL_error(L, "templates/%s.lua: %s", module, lua_tostring(L, -1));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setupvalue(L, -2, 1); /* _ENV of the chunk */
  lua_pushstring(L, module);
  lua_call(L, 1, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, lua_upvalueindex(2), module);
  return 1;
}

/* Pushes a fresh environment: a copy of the globals, library tables copied one level deep. */
static void push_env(lua_State *L) {
  lua_newtable(L);
  int env = lua_gettop(L);
  lua_pushglobaltable(L);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_istable(L, -1) && !lua_rawequal(L, -1, -3)) {
      lua_newtable(L);
      lua_pushnil(L);
      while (lua_next(L, -3)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
      }
      lua_replace(L, -2);
    }
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, env);
  }
  lua_pop(L, 1);
  lua_pushvalue(L, env);
  lua_setfield(L, env, "_G");
  lua_pushvalue(L, env);
  lua_newtable(L);
  lua_pushcclosure(L, sandbox_require, 2);
  lua_setfield(L, env, "require");
}

static void push_spec(lua_State *L, const mj_spec *spec) {
  lua_createtable(L, 0, spec->count);
  for (int i = 0; i < spec->count; i++) {
    const mj_spec_entry *e = &spec->e[i];
    switch (e->kind) {
    case MJ_SPEC_INT: lua_pushinteger(L, (lua_Integer)e->i); break;
    case MJ_SPEC_NUM: lua_pushnumber(L, e->n); break;
    case MJ_SPEC_STR: lua_pushstring(L, e->s); break;
    }
    lua_setfield(L, -2, e->key);
  }
  /* The key order, so a template can print the spec deterministically. */
  lua_createtable(L, spec->count, 0);
  for (int i = 0; i < spec->count; i++) {
    lua_pushstring(L, spec->e[i].key);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "_order");
}

typedef struct render_call {
  const char *name;  /* module to render, or NULL for eval */
  const char *chunk; /* eval: Lua text */
  const mj_spec *spec;
  mj_module_meta *meta; /* render: where the contract goes, or NULL */
} render_call;

/* The integer keys of a kernel's contract and where they go. */
static const mj_field meta_ints[] = {
    MJ_FIELD(mj_kernel_meta, threads),       MJ_FIELD(mj_kernel_meta, smem),
    MJ_FIELD(mj_kernel_meta, static_smem),   MJ_FIELD(mj_kernel_meta, per_block),
    MJ_FIELD(mj_kernel_meta, max_blocks),    MJ_FIELD(mj_kernel_meta, tile_rows),
    MJ_FIELD(mj_kernel_meta, cols),          MJ_FIELD(mj_kernel_meta, tile_cols),
    MJ_FIELD(mj_kernel_meta, depth),         MJ_FIELD(mj_kernel_meta, splits),
    MJ_FIELD(mj_kernel_meta, box_rows),      MJ_FIELD(mj_kernel_meta, box_cols),
    MJ_FIELD(mj_kernel_meta, blocks_per_sm), MJ_FIELD(mj_kernel_meta, max_slots),
};

/* Copies a string field of the table at the top into buf; raises a Lua error naming the kernel when
 * it is missing, not a string or too long. */
static void meta_string(lua_State *L, const char *module, const char *kernel, const char *what,
                        char *buf, size_t len) {
  size_t n = 0;
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
  if (!s || n == 0 || n >= len)
    luaL_error(L, "templates/%s.lua: the contract of %s: %s must be a name of 1..%d bytes", module,
               kernel, what, (int)len - 1);
  memcpy(buf, s, n + 1);
}

/* Reads one kernel's contract, the table at the top of the stack. */
static void read_kernel(lua_State *L, const char *module, mj_kernel_meta *k) {
  memset(k, 0, sizeof *k);
  lua_getfield(L, -1, "entry");
  meta_string(L, module, "a kernel", "entry", k->entry, sizeof k->entry);
  lua_pop(L, 1);
  lua_pushnil(L);
  while (lua_next(L, -2)) { /* every key must be one the runtime reads */
    const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    int known = !strcmp(key, "entry");
    if (!strcmp(key, "params")) {
      known = 1;
      if (!lua_istable(L, -1))
        luaL_error(L, "templates/%s.lua: the contract of %s: params must be a list", module,
                   k->entry);
      k->nparams = (int)luaL_len(L, -1);
      if (k->nparams > MJ_KERNEL_PARAMS)
        luaL_error(L, "templates/%s.lua: the contract of %s has %d params, at most %d", module,
                   k->entry, k->nparams, MJ_KERNEL_PARAMS);
      for (int i = 0; i < k->nparams; i++) {
        lua_geti(L, -1, i + 1);
        meta_string(L, module, k->entry, "each param", k->params[i], sizeof k->params[i]);
        lua_pop(L, 1);
      }
    }
    const mj_field *f =
        known ? NULL : mj_field_find(meta_ints, sizeof meta_ints / sizeof meta_ints[0], key);
    if (f) {
      known = 1;
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > INT32_MAX)
        luaL_error(L, "templates/%s.lua: the contract of %s: %s must be an integer >= 0", module,
                   k->entry, key);
      *(int *)((char *)k + f->offset) = (int)lua_tointeger(L, -1);
    }
    if (!known)
      luaL_error(L, "templates/%s.lua: the contract of %s has an unknown key '%s'", module,
                 k->entry, key);
    lua_pop(L, 1);
  }
  if (k->threads < 1 || k->threads > 1024)
    luaL_error(L, "templates/%s.lua: the contract of %s: threads=%d is outside [1, 1024]", module,
               k->entry, k->threads);
}

/* Reads the contract, the value at the top of the stack, into rc->meta. */
static void read_contract(lua_State *L, const render_call *rc) {
  mj_module_meta *m = rc->meta;
  if (!lua_istable(L, -1))
    luaL_error(L,
               "templates/%s.lua returned no launch contract (a list of kernel tables) beside "
               "its source",
               rc->name);
  int n = (int)luaL_len(L, -1);
  if (n < 1 || n > MJ_MODULE_KERNELS)
    luaL_error(L, "templates/%s.lua: the contract lists %d kernels, expected 1..%d", rc->name, n,
               MJ_MODULE_KERNELS);
  memset(m, 0, sizeof *m);
  for (int i = 0; i < n; i++) {
    if (lua_geti(L, -1, i + 1) != LUA_TTABLE)
      luaL_error(L, "templates/%s.lua: the contract's kernel %d is not a table", rc->name, i + 1);
    read_kernel(L, rc->name, &m->kernel[i]);
    lua_pop(L, 1);
  }
  m->count = n;
}

static int render_protected(lua_State *L) {
  const render_call *rc = lua_touserdata(L, 1);
  push_env(L);
  int env = lua_gettop(L);
  if (rc->name) {
    lua_getfield(L, env, "require");
    lua_pushstring(L, rc->name);
    lua_call(L, 1, 1);
    if (!lua_isfunction(L, -1))
      return luaL_error(L, "templates/%s.lua must return function(spec) -> string", rc->name);
    push_spec(L, rc->spec);
    lua_call(L, 1, 2);
    if (lua_type(L, -2) != LUA_TSTRING)
      return luaL_error(L, "templates/%s.lua returned a %s, not a string", rc->name,
                        luaL_typename(L, -2));
    if (rc->meta)
      read_contract(L, rc);
    lua_pop(L, 1); /* the source is the result */
  } else {
    if (luaL_loadbufferx(L, rc->chunk, strlen(rc->chunk), "=eval", "t") != LUA_OK)
      return lua_error(L);
    lua_pushvalue(L, env);
    lua_setupvalue(L, -2, 1);
    lua_call(L, 0, 1);
    luaL_tolstring(L, -1, NULL);
  }
  return 1;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

static moejit_status run(mj_gen *g, const render_call *rc, char **result, mj_err *err) {
  lua_State *L = g->L;
  *result = NULL;
  if (rc->spec && rc->spec->overflow)
    return mj_errf(err, MOEJIT_ERR_INTERNAL, "spec for %s has more than %d entries", rc->name,
                   MJ_SPEC_MAX);
  lua_settop(L, 0);
  g->steps = 0;
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, MJ_LUA_HOOK_STEP);
  lua_pushcfunction(L, traceback);
  lua_pushcfunction(L, render_protected);
  lua_pushlightuserdata(L, (void *)rc);
  int rv = lua_pcall(L, 1, 1, 1);
  lua_sethook(L, NULL, 0, 0);
  moejit_status st = MOEJIT_OK;
  if (rv != LUA_OK) {
    st = rv == LUA_ERRMEM ? MOEJIT_ERR_OUT_OF_MEMORY : MOEJIT_ERR_TEMPLATE;
    const char *msg = lua_tostring(L, -1);
    mj_errf(err, st, "%s: %s", rc->name ? rc->name : "eval",
            rv == LUA_ERRMEM ? "template sandbox out of memory" : (msg ? msg : "?"));
  } else {
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    *result = malloc(len + 1);
    if (!*result)
      st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory copying rendered source");
    else
      memcpy(*result, s, len + 1);
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  return st;
}

moejit_status mj_gen_render(mj_gen *g, const char *name, const mj_spec *spec, char **source,
                            mj_module_meta *meta, mj_err *err) {
  render_call rc = {name, NULL, spec, meta};
  return run(g, &rc, source, err);
}

moejit_status mj_gen_eval(mj_gen *g, const char *chunk, char **result, mj_err *err) {
  render_call rc = {NULL, chunk, NULL, NULL};
  return run(g, &rc, result, err);
}

const mj_kernel_meta *mj_gen_kernel(const mj_module_meta *meta, const char *entry) {
  for (int i = 0; i < meta->count; i++)
    if (!strcmp(meta->kernel[i].entry, entry))
      return &meta->kernel[i];
  return NULL;
}
