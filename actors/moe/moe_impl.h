/* moe_impl.h -- the Mixture-of-Experts layer's internals, shared by its two rooms: moe.c (the layer and
 * its forward record) and moe_call.c (the call actor that runs a forward or backward). Not for other
 * files: they use moe.h.
 *
 * moe.c owns these structs and the record's helpers below; moe_call.c calls them, never the other way
 * round. Everything here belongs to the loop thread, except the buffers a gating job has out (moe_call.c).
 */
#ifndef DMOE_MOE_IMPL_H
#define DMOE_MOE_IMPL_H

#include <stdint.h>

#include "actors/moe/moe_math.h"
#include "actors/moe/moe_types.h"
#include "kernels/kern_rng.h"

struct moe_layer {
    rt_loop *loop;
    rt_pool *own_pool;        /* the pool the layer started when cfg.pool was NULL */
    moe_cfg c;                /* c.pool: the pool the gating GEMMs run on */
    moe_grid g;
    float *params, *grads;    /* W[total, in] then b[total] */
    size_t nparams;
    float *util;              /* switch: utilisation EMA */
    kern_rng rng;
    moe_succ_provider succ;
    moe_caller caller;
    int out_dim;              /* learned from the first answer */
};

typedef struct {
    char uid[UID_MAX_LEN + 1];
    wire_maddr addr;
    int coords[MOE_MAX_DIMS];
    int64_t *rows;            /* samples routed here */
    int64_t nrows;
    rx_tensor in[KERN_MAX_IO];  /* x's rows routed here, then the extra inputs' same rows */
    rx_tensor out, gx;
    int ok, bok;
    void *call;               /* moe_call.c's context of this request's call while it is out, else NULL */
} moe_exp;

struct moe_fwd {
    moe_layer *m;
    int64_t B;
    int in, D, k;
    float *x, *noise;         /* input; switch jitter factors (NULL otherwise) */
    rx_tensor extra[KERN_MAX_IO - 1];   /* extra inputs for all B samples (copies) */
    int n_extra;
    float *xg, *S, *P;        /* gating input, scores [B, total], switch probabilities */
    int *slot_exp;            /* [B, k]: expert index or -1 */
    int64_t *slot_row;        /* [B, k]: row within the expert's request */
    float *w;                 /* [B, k]: weight of the slot in the output (0 when not answered) */
    moe_exp *exp;             /* grows with retries: refer to requests by index, never keep a pointer */
    int nexp, cap_exp;
    float *y, *gx;
    float bal;
    moe_fwd_stats st;
};

/* moe_fwd_new makes the forward record for x[B, in_features] and the extra inputs (copied), with room
 * for the gating. Returns NULL when out of memory. */
moe_fwd *moe_fwd_new(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra);
/* moe_fwd_group turns the beam search's per-sample choices into one request per expert: f->exp with
 * each expert's rows of x and of the extra inputs, the slots, and need[b] = min(k_min, experts found
 * for b). Returns 0 or DMOE_ENOMEM (f keeps what it got; moe_fwd_free frees it). */
int moe_fwd_group(moe_fwd *f, const moe_beam *beam, int *need);
/* moe_fwd_add_expert appends a request for expert ch with no rows yet (room for B), growing f->exp.
 * Returns its index, -1 when ch's uid is not a coordinate of the layer's grid, or DMOE_ENOMEM. */
int moe_fwd_add_expert(moe_fwd *f, const moe_beam_expert *ch);
/* moe_fwd_inputs builds request ei's inputs (x's rows, the extra inputs' same rows) from its rows.
 * Returns 0 or DMOE_ENOMEM. */
int moe_fwd_inputs(moe_fwd *f, int ei);
/* moe_fwd_slots describes sample b's slots for moe_math: each slot's coordinates, whether it answered
 * the forward, and its output row (NULL when it did not answer or the output is not there yet). */
void moe_fwd_slots(const moe_fwd *f, int64_t b, int *coords, uint8_t *ok, const float **out);
/* moe_fwd_combine combines the answers: the output width, the weights, the output, the switch layer's
 * utilisation and balancing loss; it allocates f->y and f->gx. Returns 0 and *bad (the first sample
 * nobody answered, or -1), or DMOE_ENOMEM. */
int moe_fwd_combine(moe_fwd *f, int64_t *bad);

#endif
