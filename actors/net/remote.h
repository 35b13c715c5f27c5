/* remote.h -- the client's view of a remote expert (hivemind's RemoteExpert): host tensors, the
 * expert's schema from its info reply, request building and checking, and reading results.
 *
 * rx_tensor is an owned, aligned host tensor whose buffer is reference-counted: a request references
 * the buffer (no copy) and drops its reference once the bytes have left for the socket, so a caller may
 * free its tensors as soon as a call ends, whatever state the connection is in.
 *
 * Answers are hostile until checked: rx_tensor_check / rx_reply_check are the one place where a
 * client compares what an expert answered with what it asked for (count, dtype, shape, rows, and
 * NaN/Inf when the caller detects anomalies). dmoe-call, the Mixture-of-Experts layer (moe_adapt.c,
 * moe.c), dmoe-train and libdmoe's expert calls use them.
 *
 * Pure functions plus allocation; no I/O. dmoe-call and the Mixture-of-Experts layer build on it.
 */
#ifndef DMOE_REMOTE_H
#define DMOE_REMOTE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kern_expert.h"
#include "wire/wire_msg.h"

typedef struct rx_buf {
    int refs;
    size_t nbytes;
    uint8_t *data;      /* 64-byte aligned */
    uint64_t handle;    /* the activation handle a node returned for a forward of these bytes (0: none) */
} rx_buf;

typedef struct {
    wire_dtype dtype;
    int ndim;
    int64_t shape[WIRE_MAX_NDIM];
    size_t numel;
    rx_buf *buf;        /* NULL for an empty tensor */
} rx_tensor;

typedef struct {
    char uid[256];
    char expert_cls[32];
    char module[64];
    int hidden_dim;
    uint64_t n_params;
    int64_t max_batch_size;
    wire_scheme compression;   /* the node asks for inputs compressed this way (info "compression") */
    int n_in, n_out;
    kern_io_info in[KERN_MAX_IO], out[KERN_MAX_IO];
} rx_schema;

/* rx_tensor_alloc makes an uninitialised tensor of dtype and shape. Returns 0 or DMOE_ENOMEM /
 * DMOE_ETOOBIG. */
int rx_tensor_alloc(rx_tensor *t, wire_dtype dtype, int ndim, const int64_t *shape);
/* rx_buf_ref / rx_buf_unref take and drop a reference to a tensor buffer (freed with the last). */
void rx_buf_ref(rx_buf *b);
void rx_buf_unref(rx_buf *b);
/* rx_tensor_free drops t's reference to its buffer and zeroes t. */
void rx_tensor_free(rx_tensor *t);
/* rx_tensor_f32 returns the data as floats (NULL unless dtype is float32). */
float *rx_tensor_f32(const rx_tensor *t);
/* rx_tensor_from_wire copies (decompressing if needed) a decoded wire tensor into a fresh host tensor.
 * Returns 0, DMOE_ENOMEM or DMOE_EPROTO (malformed compressed bytes; fewer bytes than values is refused
 * before anything is allocated). */
int rx_tensor_from_wire(rx_tensor *t, const wire_tensor *w);

/* rx_schema_parse reads an expert's info map (wire/PROTOCOL.md). Returns 0 or DMOE_EINVAL with err. */
int rx_schema_parse(const msgpack_object *info, rx_schema *s, char *err, size_t errlen);
/* rx_check verifies tensors against the schema before sending: count, dtype, row shape, one common
 * batch size within max_batch_size, finite floats. gout is only checked when n_gout >= 0 (backward).
 * Returns 0 or DMOE_ESHAPE / DMOE_ENONFINITE / DMOE_ETOOBIG with err. */
int rx_check(const rx_schema *s, const rx_tensor *in, int n_in, const rx_tensor *gout, int n_gout, char *err,
             size_t errlen);
/* rx_request builds a forward (gout NULL) or backward request for uid. The tensors' buffers are
 * referenced, not copied, unless comp (the schema's compression) is not NONE: float32 tensors are then
 * compressed into buffers of the request's own. Its forward says "save": false (its caller brings no
 * handle to a backward, so the node keeps no activations). Returns NULL when out of memory or when a
 * tensor cannot be compressed (non-finite values). */
wire_out *rx_request(uint64_t id, const char *uid, const rx_tensor *in, int n_in, const rx_tensor *gout,
                     int n_gout, wire_scheme comp);
/* rx_request_with_handle is rx_request for a caller that uses handles: its forward lets the node keep
 * the activations, its backward returns the handle its forward's reply carried (rx_reply_handle), so
 * that the node can skip recomputing the forward; 0 means none. */
wire_out *rx_request_with_handle(uint64_t id, const char *uid, const rx_tensor *in, int n_in, const rx_tensor *gout,
                                 int n_gout, wire_scheme comp, uint64_t handle);
/* rx_reply_handle returns the activation handle of a forward reply, or 0 when the node kept none. */
uint64_t rx_reply_handle(const wire_msg *reply);
/* RX_ANY_DTYPE, as rx_tensor_check's dtype: float32 or uint8 (a forward's outputs without a schema). */
#define RX_ANY_DTYPE (-1)

/* rx_tensor_check is the one check of a tensor an expert answered, before anything uses it: dtype
 * (a wire_dtype, or RX_ANY_DTYPE), rows rows (shape[0]), then row_ndim row dims equal to row_dims
 * (an entry <= 0 takes any size; row_ndim < 0 takes any row shape), and with finite no NaN or Inf in
 * float32 data. what names the tensor in err ("outputs[0]"). Returns 0, or DMOE_ESHAPE /
 * DMOE_ENONFINITE with err saying what was wrong. */
int rx_tensor_check(const rx_tensor *t, int dtype, int64_t rows, int row_ndim, const int64_t *row_dims, int finite,
                    const char *what, char *err, size_t errlen);
/* rx_reply_check checks the out[0..n) a node answered to a forward (backward 0: "outputs") or a
 * backward ("grad_inputs") of the request's inputs in[0..n_in): with the expert's schema s, one tensor
 * per schema output (forward) or input (backward), of its dtype (float32 for gradients) and row shape;
 * without one (s NULL), at least one output of float32 or uint8, or exactly one float32 gradient per
 * input with that input's shape. Every tensor has in[0]'s rows; with finite, float32 data has no NaN or
 * Inf. Returns 0 or DMOE_ESHAPE / DMOE_ENONFINITE with err (rx_tensor_check). */
int rx_reply_check(const rx_schema *s, int backward, const rx_tensor *in, int n_in, const rx_tensor *out, int n,
                   int finite, char *err, size_t errlen);
/* rx_result reads the tensor array under key ("outputs", "grad_inputs") of a reply's result into
 * out[0..max). Returns the count, or DMOE_EPROTO / DMOE_ENOMEM with err. */
int rx_result(const wire_msg *reply, const char *key, rx_tensor *out, int max, char *err, size_t errlen);

#endif
