/* moe_op.h -- the call actor's own structs, shared by its two rooms: moe_call.c (the op actor: dispatch,
 * timing, the schema check, the backward) and moe_retry.c (the requests out, the retries on spares and
 * the hedge). Not for other files: they use moe.h.
 *
 * moe_call.c creates, arms and frees an op; moe_retry.c only reads and updates the request bookkeeping of
 * one (pending, live, left, got, next, down, last_sent) and the forward record's requests. Everything here
 * belongs to the loop thread, except the gate_job while it is out on the pool (see moe_call.c).
 */
#ifndef DMOE_MOE_OP_H
#define DMOE_MOE_OP_H

#include <stdint.h>

#include "actors/moe/moe.h"
#include "actors/moe/moe_impl.h"

/* One gating GEMM for a worker: only these buffers, which nothing else touches while the job is out. */
typedef struct {
    rt_job job;
    int backward;
    int combine;              /* forward: 0 the gating, 1 the combine of the answers (moe_fwd_mix of f) */
    moe_grid g;
    int64_t B;
    int in;
    const float *W, *b;       /* the op's parameter snapshot */
    const float *xg, *noise;
    const uint8_t *keep;      /* forward, switch: the dropout mask, or NULL */
    float *S, *P;             /* forward: the moe_fwd's scores and probabilities */
    char prefix[UID_MAX_LEN + 1];   /* forward: the grid, to start the beam search from S (copies) */
    int grid[MOE_MAX_DIMS], ndim, k;
    moe_beam *beam;           /* forward: the search, its first round gathered; the loop's once back */
    int beam_rc;
    const float *gS;          /* backward: d loss / d scores */
    float *gW, *gb, *gx, *gxg;  /* backward: the op's gradients, the moe_fwd's input gradient, scratch */
    /* backward, first: the experts' input gradients and d loss / d scores from the answers */
    moe_fwd *f;               /* the record (also a forward's combine): the loop leaves it alone meanwhile */
    const int *order;         /* f's requests in rank order */
    const float *gy, *util;   /* the output gradient; switch: the utilisation as the backward began */
    float *gSw, *gP;          /* d loss / d scores (written), switch: d loss / d probabilities */
    float bal_coef;
} gate_job;

/* One expert call out (heap: the caller holds it until its callback, which may come after the op
 * abandoned the request). */
typedef struct {
    struct op *o;
    int e;
    int abandoned;            /* the op gave up on it: the answer is dropped */
} call_ctx;

typedef struct op {
    rt_actor actor;
    rt_timer timer;
    rt_msg start;             /* backward: dispatch on the next loop round */
    gate_job gj;
    int job_out;              /* the gating job is on the pool */
    moe_layer *m;
    moe_fwd *f;
    int backward;
    moe_beam *beam;
    moe_search *search;
    int pending, live, finished;   /* callbacks outstanding (expert calls and the info request); of
                                      those, the ones not abandoned */
    int info_out;             /* forward: the schema check's info request is out */
    int *need, *got, *left;   /* per sample: answers wanted, answers received, requests still out (one block) */
    int64_t *wave;            /* forward: the samples of the wave being grouped (room for B) */
    uint8_t *sent;            /* forward: per sample, whether its requests went out */
    int *next;                /* forward with retries, per sample: its next spare in the beam's result */
    wire_maddr down[MOE_MAX_DOWN];   /* peers down for the rest of this forward */
    int ndown;
    uint64_t t0, deadline, finish_at;   /* microseconds, rt_clock_us */
    uint64_t t_searched, t_sent, last_answer, last_sent, hedge_at;   /* hedge_at 0: no hedge armed */
    float *wsnap;             /* the gating parameters when the GEMM was handed out */
    int *order;               /* backward: f's requests in rank order */
    float *usnap;             /* backward, switch: the utilisation when the job was handed out */
    uint8_t *keep;            /* forward, switch with grid_dropout < 1: the dropout mask */
    /* backward, one block from gy: */
    float *gy;                /* the output gradient [B, D] (a copy) */
    float *gS, *gP;           /* d loss / d scores, d loss / d probabilities (switch, else NULL) [B, total] */
    float *gxg, *gW;          /* the job's scratch [B, in] and gradients [total, in + 1] */
    float bal_coef;
    moe_fwd_cb fcb;
    moe_bwd_cb bcb;
    void *arg;
    moe_call_cb answer;       /* moe_call.c's on_answer: each request's callback (moe_retry_send) */
} op;

#endif
