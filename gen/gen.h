/* gen.h: kernel generation. A sandboxed Lua state renders a template module with a spec into a
 * whole CUDA translation unit; NVRTC (nvrtc.h) compiles it. Uses base/error.h only. */
#ifndef MJ_GEN_GEN_H
#define MJ_GEN_GEN_H
#include <stddef.h>

#include "gen/spec.h"
#include "base/error.h"

typedef struct mj_gen mj_gen;

/* A template source file, embedded or read from a folder. */
typedef struct mj_gen_file {
  char *name; /* "gemm.lua", "prelude.cuh" */
  char *text;
  size_t len;
} mj_gen_file;

/* Opens the sandbox. template_dir NULL: the embedded templates; else every *.lua and *.cuh of that
 * folder, read now. MOEJIT_ERR_OUT_OF_MEMORY, MOEJIT_ERR_IO (folder), MOEJIT_ERR_TEMPLATE. */
moejit_status mj_gen_open(mj_gen **gen, const char *template_dir, mj_err *err);
void mj_gen_close(mj_gen *gen);

#define MJ_MODULE_KERNELS 6 /* kernels of one module at most */
#define MJ_KERNEL_PARAMS 24 /* parameters of one kernel at most */
#define MJ_NAME_LEN 40      /* an entry name's bytes at most, NUL included */
#define MJ_PARAM_LEN 24     /* a parameter name's */

/* One kernel's launch contract, as its template states it: what the runtime launches it with.
 * The grid rules that read the integers below live beside each family's launch (runtime/). */
typedef struct mj_kernel_meta {
  char entry[MJ_NAME_LEN]; /* the extern "C" name */
  int threads;             /* blockDim.x */
  int smem;                /* dynamic shared memory, bytes */
  int static_smem;         /* static shared memory, bytes at most */
  /* The inputs of the kernel's grid rule; 0 where its rule has no use for one. */
  int per_block;     /* work items of one block along x: tokens, slots, 16-byte chunks, elements */
  int max_blocks;    /* blocks along x at most */
  int tile_rows;     /* rows of one tile of the sorted rows (routing's tile height) */
  int cols;          /* work items of a row: a GEMM's output columns, combine's, the activation's;
                        the gather's 16-byte chunks of x */
  int tile_cols;     /* output columns of one block along y (or of one item) */
  int depth;         /* a GEMM's K: the length of its sums (the extent of its tensor maps) */
  int splits;        /* blocks along z: K split into that many partial sums */
  int box_rows;      /* rows of one TMA box of A */
  int box_cols;      /* elements of one TMA box's row (its swizzle width) */
  int blocks_per_sm; /* resident blocks per SM of a persistent grid */
  int max_slots;     /* slots one launch takes at most */
  int nparams;
  char params[MJ_KERNEL_PARAMS][MJ_PARAM_LEN]; /* the kernel's parameters by name, in order */
} mj_kernel_meta;

/* The launch contracts of a rendered module's kernels, in the order the template lists them. */
typedef struct mj_module_meta {
  int count;
  mj_kernel_meta kernel[MJ_MODULE_KERNELS];
} mj_module_meta;

/* Renders templates/<name>.lua, a module returning function(spec) -> source, contract, in a fresh
 * environment under an instruction budget. The contract is a list of tables, one a kernel, with the
 * keys of mj_kernel_meta (entry, threads, smem, params: a list of names, and the grid rule's
 * integers); meta (may be NULL, then the contract is not read) receives it. *source is malloc'd,
 * owned by the caller. MOEJIT_ERR_TEMPLATE with the Lua error and traceback in err, also for a
 * contract that is missing, malformed or names an unknown key. */
moejit_status mj_gen_render(mj_gen *gen, const char *name, const mj_spec *spec, char **source,
                            mj_module_meta *meta, mj_err *err);
/* The contract of the kernel named entry in meta, or NULL. */
const mj_kernel_meta *mj_gen_kernel(const mj_module_meta *meta, const char *entry);

/* The *.cuh files, handed to NVRTC as in-memory headers. */
const mj_gen_file *mj_gen_headers(const mj_gen *gen, int *count);

/* Test hook: runs a chunk of Lua in a fresh sandbox environment and returns its first result
 * converted to a string (malloc'd). */
moejit_status mj_gen_eval(mj_gen *gen, const char *chunk, char **result, mj_err *err);

/* Caps the sandbox's memory (bytes) and instruction budget (count); 0 keeps the current value. */
void mj_gen_set_limits(mj_gen *gen, size_t mem_bytes, long instructions);

#endif
