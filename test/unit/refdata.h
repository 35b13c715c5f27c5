/* refdata.h -- a small loader for the PyTorch reference vectors in the test/data msgpack files, and the
 * checks the kernel tests share against them (test-only).
 *
 * A file is a msgpack map from a name ("input0", "output", "param.ffn.weight", "grad.ffn.bias", ...)
 * to a tensor {"shape": [d0, ...], "dtype": "f32" | "u8", "data": <bin, row-major, little-endian>}
 * (see test/data/README.md). refdata_load copies every tensor into its own aligned buffer, so the
 * pointers the accessors return are valid, suitably aligned, until refdata_free.
 *
 * Typical use in a Criterion test:
 *     refdata *rd = refdata_load("ffn_h16_b3.msgpack");
 *     cr_assert(rd);
 *     size_t n; const float *out = refdata_f32(rd, "output", &n);
 *     ...
 *     refdata_free(rd);
 */
#ifndef DMOE_TEST_REFDATA_H
#define DMOE_TEST_REFDATA_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kern_classes.h"
#include "kernels/kern_expert.h"

#define REFDATA_MAX_DIMS 8

typedef struct refdata refdata;

/* refdata_dir returns the data folder: $DMOE_TEST_DATA, or "test/data" when that is unset or empty. */
const char *refdata_dir(void);
/* refdata_load reads and parses refdata_dir()/file. Returns a new refdata the caller frees with
 * refdata_free, or NULL (with a line on stderr) when the file is missing or malformed. */
refdata *refdata_load(const char *file);
/* refdata_free releases rd and every buffer its accessors returned; NULL is a no-op. */
void refdata_free(refdata *rd);

/* refdata_count returns the number of tensors in rd; refdata_name returns the i-th name (0 <= i <
 * refdata_count), owned by rd, or NULL. Names keep the file's order. */
int refdata_count(const refdata *rd);
const char *refdata_name(const refdata *rd, int i);

/* refdata_f32 returns the data of the f32 tensor called name (owned by rd) and stores its element
 * count in *numel (numel may be NULL); NULL when there is no such tensor or it is not f32. */
const float *refdata_f32(const refdata *rd, const char *name, size_t *numel);
/* refdata_u8 is refdata_f32 for u8 tensors. */
const uint8_t *refdata_u8(const refdata *rd, const char *name, size_t *numel);
/* refdata_shape copies the dims of tensor name into shape[REFDATA_MAX_DIMS] (shape may be NULL) and
 * returns the number of dims, or -1 when there is no such tensor. */
int refdata_shape(const refdata *rd, const char *name, int64_t *shape);

/* ---- Criterion checks against the vectors (they fail the running test) ---- */

/* refdata_expect_close asserts got[i] finite and |got[i] - want[i]| <= atol + rtol |want[i]| for i < n;
 * what names the tensor in the message. (The expert vectors use 1e-5, 1e-5: test/data/README.md.) */
void refdata_expect_close(const char *what, const float *got, const float *want, size_t n, float atol, float rtol);
/* refdata_load_params copies every "param.<name>" tensor of rd into m's flat buffer params, asserting
 * that each is there with m's shape. */
void refdata_load_params(const refdata *rd, const kern_model *m, float *params);
/* refdata_expect_grads asserts each of m's parameter gradients in grads close (as refdata_expect_close)
 * to rd's "grad.<name>" tensor. */
void refdata_expect_grads(const refdata *rd, const kern_model *m, const float *grads, float atol, float rtol);

/* refdata_model finds the expert class cls_name and sets *m up for hidden size hidden, asserting both
 * succeed. Returns the class. */
const kern_class *refdata_model(const char *cls_name, int hidden, kern_model *m);

/* ---- one expert class against one reference file (float32 inputs) ---- */

typedef struct {
    refdata *rd;
    const kern_class *cls;
    kern_model m;                 /* set up for the file's hidden size */
    int64_t B;
    size_t nx;                    /* elements of input0 and of the output */
    float *params, *grads, *ws;   /* the file's parameters; gradients; workspace for either pass */
    float *in[KERN_MAX_IO];       /* the file's input<i> as float32 (a u8 mask converted) */
    size_t n_in_elems[KERN_MAX_IO];
    float *gin[KERN_MAX_IO];      /* the input gradients of the last backward with grad_in */
    float *y;                     /* the output of the last forward */
} refdata_case;

/* refdata_case_open loads file (input0 [B, H]), sets the class cls_name up for H and fills c: the
 * file's parameters and inputs, buffers for the rest. Asserts on any failure. */
void refdata_case_open(refdata_case *c, const char *cls_name, const char *file);
/* refdata_case_forward runs the forward of c's inputs into c->y; returns the class's code. */
int refdata_case_forward(refdata_case *c, uint64_t seed);
/* refdata_case_backward runs the backward of the file's grad_output into c->grads (and c->gin when
 * with_grad_in); returns the class's code. */
int refdata_case_backward(refdata_case *c, int with_grad_in, uint64_t seed);
/* refdata_case_check asserts the forward's output, and the backward's grad_input0 and parameter
 * gradients (each first filled with NaN), close to the file's within atol + rtol |want|. */
void refdata_case_check(refdata_case *c, float atol, float rtol, uint64_t seed);
/* refdata_case_check_stages runs a two-stage class's backward_inputs, then backward_params, on the
 * file's data (gradients first filled with NaN) and asserts grad_input0 close to the file's after the
 * first, the parameter gradients close to the file's after the second, and both bit for bit those of
 * the whole backward. refdata_case_check calls it for such a class. */
void refdata_case_check_stages(refdata_case *c, float atol, float rtol, uint64_t seed);
/* refdata_case_close frees what c holds. */
void refdata_case_close(refdata_case *c);

#endif
