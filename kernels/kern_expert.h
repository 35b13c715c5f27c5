/* kern_expert.h -- the interface every expert architecture (ffn, det_dropout, transformer, nop, ...)
 * implements, and the helpers their setup uses; kern_classes.h finds a class by its --expert_cls name.
 *
 * An expert is pure computation over caller-owned buffers: no I/O, no threads, no globals, no
 * allocation inside forward/backward (the caller hands in a workspace of the size the class asks for).
 * That lets the expert actor run it on any worker thread of the pool while the loop thread keeps the
 * actor's state.
 *
 * Parameters live in ONE flat float buffer (and their gradients in another of the same layout), so that
 * optimizers, checkpoints and the wire treat every architecture the same way. kern_model lists each
 * named tensor (PyTorch state_dict name, shape, offset into the flat buffer).
 *
 * Inputs and outputs are batches of rows: input i is a [B, dims...] tensor whose row has
 * kern_io_numel(&m->in[i]) elements of dtype m->in[i].dtype, rows contiguous (C order). Outputs and all
 * gradients are float32.
 *
 * Call order: kern_expert_find (kern_classes.h) -> cls->setup(model, cfg) -> cls->init(params, seed) once ->
 * any number of forward/backward calls, possibly concurrent on different threads as long as no
 * optimizer step writes the parameters at the same time.
 */
#ifndef DMOE_KERN_EXPERT_H
#define DMOE_KERN_EXPERT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kern_rng.h"

#define KERN_MAX_PARAMS 32   /* named parameter tensors per expert (the transformer has 12) */
#define KERN_MAX_IO     4    /* inputs or outputs per expert */
#define KERN_MAX_DIMS   4    /* dims of one row (the batch dim excluded) */

typedef enum { KERN_F32 = 0, KERN_U8 = 1 } kern_dtype;

/* kern_dtype_size returns the bytes per element of dtype. */
static inline size_t kern_dtype_size(kern_dtype d) { return d == KERN_U8 ? 1 : 4; }

typedef struct {
    char name[64];          /* PyTorch state_dict name, e.g. "ffn.weight" */
    int ndim;
    int64_t shape[2];       /* a Linear weight is [out, in]: y = x @ W^T + b */
    size_t offset;          /* in floats, into the flat parameter buffer */
    size_t numel;
} kern_param_info;

typedef struct {
    char name[32];          /* "x", "mask", ... */
    kern_dtype dtype;
    int ndim;               /* dims of one row */
    int64_t dims[KERN_MAX_DIMS];
    int mask;               /* a 0/1 mask input: the node also takes it as float32, uint8, int64 or bool */
} kern_io_info;

/* kern_io_numel returns the number of elements in one row of io. */
static inline size_t kern_io_numel(const kern_io_info *io)
{
    size_t n = 1;
    for (int i = 0; i < io->ndim; i++) n *= (size_t)io->dims[i];
    return n;
}

/* Settings an architecture may read; unused ones are ignored. */
typedef struct {
    int hidden_dim;         /* H */
    int seq_len;            /* transformer: S of its [B, S, H] input (0: the class default) */
    float dropout;          /* transformer: dropout probability in training (hivemind: 0.1) */
    int delay_ms;           /* nop_delay: how long a call takes */
} kern_config;

struct kern_class;

typedef struct kern_model {
    const struct kern_class *cls;
    kern_config cfg;
    int n_params;
    kern_param_info params[KERN_MAX_PARAMS];
    size_t n_floats;        /* total floats in the flat parameter buffer */
    int n_in, n_out;
    kern_io_info in[KERN_MAX_IO], out[KERN_MAX_IO];
} kern_model;

typedef struct kern_class {
    const char *name;        /* --expert_cls value: "ffn" */
    const char *module_name; /* hivemind's class name, for logs: "FeedforwardBlock" */

    /* setup fills m (params with offsets, io schema) for cfg; returns 0 or DMOE_EINVAL. */
    int (*setup)(kern_model *m, const kern_config *cfg);
    /* init writes PyTorch-default initial values into params (m->n_floats floats), deterministic in seed. */
    void (*init)(const kern_model *m, float *params, uint64_t seed);

    /* forward_ws / backward_ws return the workspace size in floats for a batch of B rows. */
    size_t (*forward_ws)(const kern_model *m, int64_t B);
    size_t (*backward_ws)(const kern_model *m, int64_t B);

    /* forward: in[i] points at B rows of input i; writes out[j] (B rows of output j, float32).
     * rng_seed drives any training-time randomness (dropout); deterministic classes ignore it.
     * Returns 0, or a negative DMOE_* code (e.g. DMOE_EINVAL for a bad mask value). */
    int (*forward)(const kern_model *m, const float *params, int64_t B, const void *const *in,
                   float *const *out, float *ws, uint64_t rng_seed);

    /* backward: given the inputs and grad_out[j] (B rows of d loss / d output j), writes grad_in[i]
     * (B rows, float32; NULL entries are skipped, e.g. for u8 masks) and grad_params (m->n_floats
     * floats, overwritten, not accumulated). Gradients are taken at params as given, after recomputing
     * the forward internally with the same rng_seed. Returns 0 or a negative DMOE_* code. */
    int (*backward)(const kern_model *m, const float *params, int64_t B, const void *const *in,
                    const float *const *grad_out, float *const *grad_in, float *grad_params, float *ws,
                    uint64_t rng_seed);

    /* Optional (NULL when the class keeps nothing): the activation cache, which lets a backward skip
     * recomputing the forward. saved_floats returns the floats kept per row. forward_save is forward
     * that also writes each row's activations to saved (B rows of saved_floats, row-major);
     * backward_saved is backward that takes them from saved instead of recomputing them (its workspace
     * is backward_ws). The gradients are then those of the forward that produced saved: its
     * activations, with the parameters as given for the products of the backward itself. */
    size_t (*saved_floats)(const kern_model *m);
    int (*forward_save)(const kern_model *m, const float *params, int64_t B, const void *const *in,
                        float *const *out, float *ws, uint64_t rng_seed, float *saved);
    int (*backward_saved)(const kern_model *m, const float *params, int64_t B, const void *const *in,
                          const float *saved, const float *const *grad_out, float *const *grad_in,
                          float *grad_params, float *ws, uint64_t rng_seed);

    /* Optional (NULL: the backward runs whole): the backward in two stages, so that a server can send
     * the input gradients before it computes the rest of the parameter gradients. backward_inputs is
     * backward (saved NULL) or backward_saved (saved given) up to grad_in: it writes grad_in, may
     * write some of grad_params, and leaves in ws what backward_params needs; backward_params then
     * writes the rest of grad_params from in, grad_out and ws, untouched in between. Together they give the
     * results of backward / backward_saved bit for bit (those are the two stages in one call). */
    int (*backward_inputs)(const kern_model *m, const float *params, int64_t B, const void *const *in,
                           const float *saved, const float *const *grad_out, float *const *grad_in,
                           float *grad_params, float *ws, uint64_t rng_seed);
    int (*backward_params)(const kern_model *m, int64_t B, const void *const *in, const float *const *grad_out,
                           float *grad_params, float *ws);
} kern_class;

/* kern_model_param returns the parameter called name in m, or NULL. */
const kern_param_info *kern_model_param(const kern_model *m, const char *name);
/* kern_io_set describes one input or output: name, dtype, and a row of [d0] (d1 == 0) or [d0, d1]. */
void kern_io_set(kern_io_info *io, const char *name, kern_dtype dtype, int64_t d0, int64_t d1);
/* kern_model_add_param appends a parameter of shape [d0] (d1 == 0) or [d0, d1] at the next offset;
 * a helper for setup functions. Returns 0 or DMOE_EINVAL when KERN_MAX_PARAMS is reached. */
int kern_model_add_param(kern_model *m, const char *name, int64_t d0, int64_t d1);
/* kern_model_start fills m for cls with cfg: no parameters, one input "x" and one output "output", both
 * float32 rows of [d0] (d1 == 0) or [d0, d1]; a setup then adds its parameters and further inputs. */
void kern_model_start(kern_model *m, const struct kern_class *cls, const kern_config *cfg, int64_t d0, int64_t d1);
/* kern_init_linear gives parameter w of m (a Linear weight [out, in]) and parameter w + 1 (its bias [out])
 * PyTorch's nn.Linear initialisation from r: U(-1/sqrt(in), 1/sqrt(in)), the weight drawn first. */
void kern_init_linear(const kern_model *m, float *params, int w, kern_rng *r);

#endif
