/* batchq.h -- the batch queue actor in front of one expert and direction, and the batch it builds.
 *
 * Requests for one expert and direction (forward or backward) queue here. While the expert is busy,
 * they accumulate; when the expert pulls, the queue takes whole requests in arrival order up to
 * max_batch_size rows, copies their rows into one input matrix per input (the one copy a row makes on
 * its way in), frees their frames, and sends the batch to the expert. When the batch comes back
 * computed, the queue splits the outputs by row counts and answers each caller, in order, with replies
 * that reference the output matrix instead of copying it.
 *
 * Mail in: BQ_REQ (an ex_req, from the server through expert_submit), BQ_PULL (signal, from the expert),
 * BQ_DONE (the computed batch, from the expert), BQ_TICK (its min-batch timer), BQ_SHUTDOWN (signal).
 * Mail out: to the expert, a "work waiting" signal, a batch, or a "nothing to give" signal.
 *
 * Loop thread only. Owns the queued requests until they are answered or failed.
 */
#ifndef DMOE_BATCHQ_H
#define DMOE_BATCHQ_H

#include <stdatomic.h>

#include "actors/serve/expert.h"

typedef struct batchq batchq;

typedef struct ex_batch {
    rt_job job;                  /* its msg carries the batch through every hop */
    batchq *q;
    int dir;
    int64_t B;
    ex_req *reqs;                /* the requests it holds, in row order */
    void *in[KERN_MAX_IO];       /* B rows of each input */
    float *gout[KERN_MAX_IO];    /* backward: B rows of each grad_output */
    float *res[KERN_MAX_IO];     /* forward: outputs; backward: grad_inputs (one per input) */
    float *ws;
    size_t ws_floats;
    void *work;                  /* block holding in, gout, ws: freed when the job is back */
    act_block *saved;            /* forward: where the activations go (NULL: not kept) */
    float *gathered;             /* backward: the requests' saved activations, in the work block */
    float *res_block;            /* block holding res: freed when the last reply is written */
    int refs;
    int rc;                      /* 0, or a DMOE_* code from the kernel */
    char err[128];
    uint64_t seed;               /* randomness of this batch (dropout) */
    uint64_t t_queued_us;        /* summed queue wait of its requests */
    uint64_t t_compute_us;
    rt_timer delay;              /* nop_delay: holds the answer without blocking anything */
    /* set by the expert for the worker: */
    const kern_model *model;
    float *params, *grads;
    float *grads_extra;          /* backward split in chunks: one more gradient buffer per chunk past the first */
    kern_optim *opt;
    float lr;
    int nchunks, chunks_left;    /* chunk jobs out (0: the batch runs as one job) */
    struct ex_chunk *chunks;
    atomic_int chunks_running;   /* workers still computing: the last one reduces and steps */
} ex_batch;

/* A slice of rows of a batch, computed as its own job when a batch is split across the workers. */
typedef struct ex_chunk {
    rt_job job;
    ex_batch *b;
    int idx;
    int64_t r0, r1;
    float *grads, *ws;
    int rc;
} ex_chunk;

/* Message types the expert receives from its queues. */
enum { EX_MSG_WORK = 1, EX_MSG_BATCH, EX_MSG_NOTHING, EX_MSG_JOB_DONE, EX_MSG_DELAY_DONE, EX_MSG_CKPT_DONE, EX_MSG_CHUNK_DONE };

/* batchq_new creates the queue for (ex, dir) of the expert uid (for metrics labels). Returns NULL when
 * out of memory. */
batchq *batchq_new(rt_loop *l, rt_actor *ex, int dir, const expert_cfg *cfg, const kern_model *model,
                   const char *uid);
/* batchq_push queues req (the queue owns it). */
void batchq_push(batchq *q, ex_req *req);
/* batchq_pull asks for a batch: the queue answers with EX_MSG_BATCH or EX_MSG_NOTHING mail. */
void batchq_pull(batchq *q);
/* batchq_done hands a computed (or failed) batch back for answering. */
void batchq_done(batchq *q, ex_batch *b);
/* batchq_pending returns the requests waiting plus those inside batches not yet answered. */
int batchq_pending(const batchq *q);
/* batchq_shutdown fails the waiting requests with DMOE_ESHUTDOWN and refuses new ones; batches in
 * flight still answer. The expert stops the queue actor (batchq_stop) when it is destroyed. */
void batchq_shutdown(batchq *q);
/* batchq_stop stops the queue actor; anything still waiting is failed when it is reaped. */
void batchq_stop(batchq *q);
/* batchq_free_batch releases a batch's work block (after the job); the result block lives on in the
 * replies. */
void batchq_release_work(ex_batch *b);

#endif
