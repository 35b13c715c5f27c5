/* moe_impl.h -- the Mixture-of-Experts layer's internals, shared by its rooms: moe.c (the layer and its
 * forward record) and the call actor that runs a forward or backward (moe_call.c, and moe_retry.c for
 * its requests and retries). Not for other files: they use moe.h.
 *
 * moe.c owns these structs and the record's helpers below; the call actor calls them, never the other
 * way round. Everything here belongs to the loop thread, except what a gating job has out (moe_call.c): a
 * forward's scores and probabilities, or in a backward the whole record, read and its gradients written.
 */
#ifndef DMOE_MOE_IMPL_H
#define DMOE_MOE_IMPL_H

#include <stdint.h>

#include "actors/moe/moe_math.h"
#include "actors/moe/moe_types.h"
#include "kernels/kern_rng.h"

#define MOE_WARNED_MAX 32     /* distinct remote errors a layer logs at WARN; the rest go to DEBUG */

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
    int schema_ok;            /* an expert's info matched what the layer sends (checked until one does) */
    uint64_t warned[MOE_WARNED_MAX];   /* remote errors already logged at WARN (moe_call.c's keys) */
    int n_warned;
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
    int rank;                 /* the uid's place in a one-wave grouping (first use over samples in order),
                                 then failed and retried requests' uids: gradients add up in this order,
                                 whatever the waves */
    void *call;               /* the call actor's context (call_ctx, moe_op.h) while it is out, else NULL */
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
    moe_exp *exp;             /* one per expert and wave, then retries; grows (moe_fwd_group, moe_fwd_add_expert):
                                 refer to requests by index, never keep a pointer */
    int nexp, cap_exp, nuid;  /* requests, room; distinct experts (ranked: moe_fwd_group_end, then retries) */
    int ranked;               /* moe_fwd_group_end ran: new requests get their rank from moe_fwd_add_expert */
    float *y, *gx;
    int64_t bad;              /* the first sample nobody answered, or -1 (moe_fwd_mix) */
    float bal;
    moe_fwd_stats st;
};

/* moe_fwd_new makes the forward record for x[B, in_features] and the extra inputs (copied), with room
 * for the gating. Returns NULL when out of memory. */
moe_fwd *moe_fwd_new(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra);
/* moe_fwd_group turns the final choices of the samples smp[0..n) (increasing; a wave of the beam search)
 * into one request per expert of that wave: new entries f->exp[*first .. f->nexp) with each expert's
 * rows of x and of the extra inputs, the samples' slots (the first k of each sample's choices: the rest
 * are its spares for retries), and need[b] = min(k_min, slots found for b). A sample belongs to one wave;
 * an expert chosen in several waves gets a request in each. Returns 0 or DMOE_ENOMEM (f keeps what it
 * got; moe_fwd_free frees it). */
int moe_fwd_group(moe_fwd *f, const moe_beam *beam, const int64_t *smp, int64_t n, int *need, int *first);
/* moe_fwd_group_end, once every sample is grouped, ranks the experts by first use over the samples' slots
 * in order (what a single wave would have numbered them), then the uids of requests no slot refers to any
 * more (failed, their rows retried), and counts them (nuid; experts_chosen). Returns 0 or DMOE_ENOMEM. */
int moe_fwd_group_end(moe_fwd *f);
/* moe_fwd_add_expert appends a request for expert ch with no rows yet (room for B), growing f->exp; once
 * ranked, it gets its uid's rank (a new uid: the next). Returns its index, -1 when ch's uid is not a
 * coordinate of the layer's grid, or DMOE_ENOMEM. */
int moe_fwd_add_expert(moe_fwd *f, const moe_beam_expert *ch);
/* moe_fwd_inputs builds request ei's inputs (x's rows, the extra inputs' same rows) from its rows.
 * Returns 0 or DMOE_ENOMEM. */
int moe_fwd_inputs(moe_fwd *f, int ei);
/* moe_fwd_slots describes sample b's slots for moe_math: each slot's coordinates, whether it answered
 * the forward, and its output row (NULL when it did not answer or the output is not there yet). */
void moe_fwd_slots(const moe_fwd *f, int64_t b, int *coords, uint8_t *ok, const float **out);
/* Combining the answers, in three steps: */
/* moe_fwd_combine_begin (the loop) fixes the output width, counts the experts that answered and
 * allocates f->y and f->gx. Returns 0 or DMOE_ENOMEM. */
int moe_fwd_combine_begin(moe_fwd *f);
/* moe_fwd_mix (any one thread: the combine job) writes the weights and the output of every sample from
 * the answers, with g the layer's grid (a copy), and counts the samples nobody answered (f->bad: the
 * first, or -1). Touches f alone. */
void moe_fwd_mix(moe_fwd *f, const moe_grid *g);
/* moe_fwd_combine_end (the loop) folds the switch layer's utilisation into the layer and computes the
 * balancing loss. Returns 0 and *bad (the first sample nobody answered, or -1), or DMOE_ENOMEM. */
int moe_fwd_combine_end(moe_fwd *f, int64_t *bad);

#endif
