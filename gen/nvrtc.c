/* nvrtc.c: dlopen of NVRTC and compilation of generated sources to cubins (see nvrtc.h). */
#include "gen/nvrtc.h"

#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Appends "where (why); " to the list of places tried, as far as it fits. */
static void tried(char *list, size_t cap, const char *where, const char *why) {
  size_t used = strlen(list);
  if (used + 1 < cap &&
      snprintf(list + used, cap - used, "%s%s (%s)", used ? "; " : "", where, why ? why : "?") < 0)
    list[used] = '\0';
}

/* dlopen of libnvrtc.so.13, .12 or libnvrtc.so in folder ("" for the loader's path). */
static void *open_in(const char *folder, char *list, size_t cap) {
  static const char *const names[] = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"};
  for (int i = 0; i < 3; i++) {
    char path[4200];
    snprintf(path, sizeof path, "%s%s%s", folder, *folder ? "/" : "", names[i]);
    /* Never unloaded once loaded (RTLD_NODELETE): each load of NVRTC allocates what it never
     * frees (about 71 KB of its C++ runtime), so unloading and loading it again with every
     * context would grow the process by that much a context. */
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (lib)
      return lib;
    if (i == 0 || *folder == '\0') /* a folder's .12 and .so say the same as its .13 */
      tried(list, cap, path, dlerror());
    else
      dlerror();
  }
  return NULL;
}

/* The path the loader opened lib from ("?" when it cannot say). */
static void loaded_path(void *lib, char *out, size_t cap) {
  struct link_map *lm = NULL;
  snprintf(out, cap, "%s",
           dlinfo(lib, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name ? lm->l_name : "?");
}

moejit_status mj_gen_nvrtc_load(mj_nvrtc *nv, mj_err *err) {
  char list[2048] = "";
  memset(nv, 0, sizeof *nv);
  const char *env = getenv("MOEJIT_NVRTC");
  if (env && *env) { /* the user's choice, alone: no other NVRTC stands in for it */
    if (!(nv->lib = dlopen(env, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE)))
      return mj_errf(err, MOEJIT_ERR_NO_COMPILER, "NVRTC: MOEJIT_NVRTC=%s cannot be loaded: %s",
                     env, dlerror());
  }
  /* $CUDA_HOME's toolkit, /usr/local/cuda's, the loader's path, then the folders of
   * $MOEJIT_NVRTC_SEARCH (the Python package names the nvidia-cuda-nvrtc wheel's and torch's) */
  const char *home = getenv("CUDA_HOME");
  if (!nv->lib && home && *home) {
    char folder[4096];
    snprintf(folder, sizeof folder, "%s/lib64", home);
    nv->lib = open_in(folder, list, sizeof list);
  }
  if (!nv->lib)
    nv->lib = open_in("/usr/local/cuda/lib64", list, sizeof list);
  if (!nv->lib)
    nv->lib = open_in("", list, sizeof list);
  const char *search = getenv("MOEJIT_NVRTC_SEARCH");
  for (const char *p = search; !nv->lib && p && *p;) {
    size_t n = strcspn(p, ":");
    char folder[4096];
    snprintf(folder, sizeof folder, "%.*s", (int)(n < sizeof folder ? n : sizeof folder - 1), p);
    if (n > 0)
      nv->lib = open_in(folder, list, sizeof list);
    p += n + (p[n] == ':');
  }
  if (!nv->lib)
    return mj_errf(err, MOEJIT_ERR_NO_COMPILER,
                   "NVRTC not found; tried: %s. Set MOEJIT_NVRTC to a libnvrtc.so.13 or .12, "
                   "install the CUDA toolkit, or pip install nvidia-cuda-nvrtc (the moejit "
                   "package finds it)",
                   list);
  struct {
    void **slot;
    const char *symbol;
  } syms[] = {
      {(void **)&nv->Version, "nvrtcVersion"},
      {(void **)&nv->CreateProgram, "nvrtcCreateProgram"},
      {(void **)&nv->CompileProgram, "nvrtcCompileProgram"},
      {(void **)&nv->GetProgramLogSize, "nvrtcGetProgramLogSize"},
      {(void **)&nv->GetProgramLog, "nvrtcGetProgramLog"},
      {(void **)&nv->GetCUBINSize, "nvrtcGetCUBINSize"},
      {(void **)&nv->GetCUBIN, "nvrtcGetCUBIN"},
      {(void **)&nv->DestroyProgram, "nvrtcDestroyProgram"},
      {(void **)&nv->GetErrorString, "nvrtcGetErrorString"},
  };
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    *syms[i].slot = dlsym(nv->lib, syms[i].symbol);
    if (!*syms[i].slot) {
      char where[4200];
      loaded_path(nv->lib, where, sizeof where);
      mj_gen_nvrtc_unload(nv);
      return mj_errf(err, MOEJIT_ERR_NO_COMPILER, "NVRTC %s lacks %s: not an NVRTC 12 or 13", where,
                     syms[i].symbol);
    }
  }
  nv->Version(&nv->major, &nv->minor);
  /* NVRTC opens its builtins by name when it first compiles; a toolkit's copy has no RPATH, so
   * from a folder off the loader's path they would not be found: load them from NVRTC's own
   * folder first, and NVRTC's open finds them loaded. */
  char path[4200];
  loaded_path(nv->lib, path, sizeof path);
  char *slash = strrchr(path, '/');
  if (slash) {
    char builtins[4300];
    snprintf(builtins, sizeof builtins, "%.*s/libnvrtc-builtins.so.%d.%d", (int)(slash - path),
             path, nv->major, nv->minor);
    if (access(builtins, F_OK) == 0 && !dlopen(builtins, RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE))
      dlerror(); /* NVRTC says so at its first compile */
  }
  return MOEJIT_OK;
}

void mj_gen_nvrtc_unload(mj_nvrtc *nv) {
  if (nv->lib)
    dlclose(nv->lib);
  memset(nv, 0, sizeof *nv);
}

void mj_cubin_free(mj_cubin *c) {
  if (!c)
    return;
  free(c->data);
  free(c->log);
  memset(c, 0, sizeof *c);
}

#define MJ_MAX_OPTIONS 8

static int build_options(const char *arch, int flags, char *arch_opt, size_t arch_len,
                         const char **opts) {
  int n = 0;
  snprintf(arch_opt, arch_len, "--gpu-architecture=%s", arch);
  opts[n++] = arch_opt;
  opts[n++] = "--std=c++17";
  opts[n++] = "--device-as-default-execution-space";
  if (flags & MJ_COMPILE_LINEINFO)
    opts[n++] = "--generate-line-info";
  if (flags & MJ_COMPILE_PTXAS_VERBOSE)
    opts[n++] = "--ptxas-options=-v";
  return n;
}

void mj_gen_compile_options(const char *arch, int flags, char *buf, size_t len) {
  char arch_opt[64];
  const char *opts[MJ_MAX_OPTIONS];
  int n = build_options(arch, flags, arch_opt, sizeof arch_opt, opts);
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < n && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? " " : "", opts[i]);
}

moejit_status mj_gen_compile(const mj_nvrtc *nv, const mj_gen *gen, const char *source,
                             const char *name, const char *arch, int flags, mj_cubin *out,
                             mj_err *err) {
  moejit_status st = MOEJIT_OK;
  void *prog = NULL;
  const char **hdr_text = NULL, **hdr_name = NULL;
  memset(out, 0, sizeof *out);
  int nh = 0;
  const mj_gen_file *headers = mj_gen_headers(gen, &nh);
  hdr_text = calloc((size_t)nh + 1, sizeof *hdr_text);
  hdr_name = calloc((size_t)nh + 1, sizeof *hdr_name);
  if (!hdr_text || !hdr_name) {
    st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory compiling %s", name);
    goto fail;
  }
  for (int i = 0; i < nh; i++) {
    hdr_text[i] = headers[i].text;
    hdr_name[i] = headers[i].name;
  }
  char unit[160];
  snprintf(unit, sizeof unit, "%s.cu", name);
  int r = nv->CreateProgram(&prog, source, unit, nh, hdr_text, hdr_name);
  if (r != 0) {
    st =
        mj_errf(err, MOEJIT_ERR_COMPILE, "nvrtcCreateProgram(%s): %s", unit, nv->GetErrorString(r));
    goto fail;
  }
  char arch_opt[64];
  const char *opts[MJ_MAX_OPTIONS];
  int nopt = build_options(arch, flags, arch_opt, sizeof arch_opt, opts);
  int cr = nv->CompileProgram(prog, nopt, opts);
  size_t log_size = 0;
  nv->GetProgramLogSize(prog, &log_size);
  out->log = malloc(log_size + 1);
  if (!out->log) {
    st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory reading the NVRTC log");
    goto fail;
  }
  out->log[0] = '\0';
  if (log_size > 0)
    nv->GetProgramLog(prog, out->log);
  out->log[log_size] = '\0';
  if (cr != 0) {
    st = mj_errf(err, MOEJIT_ERR_COMPILE, "NVRTC %d.%d failed to compile %s for %s (%s):\n%s",
                 nv->major, nv->minor, unit, arch, nv->GetErrorString(cr), out->log);
    goto fail;
  }
  r = nv->GetCUBINSize(prog, &out->size);
  if (r == 0 && out->size > 0) {
    out->data = malloc(out->size);
    if (!out->data) {
      st = mj_errf(err, MOEJIT_ERR_OUT_OF_MEMORY, "out of memory for the cubin of %s", unit);
      goto fail;
    }
    r = nv->GetCUBIN(prog, out->data);
  }
  if (r != 0 || out->size == 0) {
    st = mj_errf(err, MOEJIT_ERR_COMPILE, "NVRTC produced no cubin for %s (arch %s)", unit, arch);
    goto fail;
  }
  goto done;
fail:
  free(out->data);
  out->data = NULL;
  out->size = 0;
done:
  if (prog)
    nv->DestroyProgram(&prog);
  free(hdr_text);
  free(hdr_name);
  return st;
}
