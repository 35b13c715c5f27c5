/* batch.h -- the request and the batch of the serving path, and the mail the expert actor receives.
 *
 * This floor sits below the three rooms of serve/ that handle work: the server (server.c) builds an
 * ex_req and mails it to the expert; the expert (expert.c) queues it in a batch queue (batchq.c), which
 * builds an ex_batch out of several requests; the batch runs on the pool and comes back to the expert
 * as mail; the queue answers every request of it. The types live here so that none of those files
 * needs another's insides, and each message is a struct of its own:
 *
 *   EX_MSG_REQ         an ex_req (dir is a field), from the server
 *   EX_MSG_SCHEDULE    the expert's own signal: requests were queued, look whether a batch can start
 *   EX_MSG_TICK        one of the expert's two rt_timers (which one tells the direction)
 *   EX_MSG_JOB_DONE    an ex_batch (dir is a field), computed, from the pool
 *   EX_MSG_CHUNK_DONE  an ex_chunk (a slice of a batch), computed, from the pool
 *   EX_MSG_DELAY_DONE  the delay rt_timer embedded in an ex_batch (nop_delay answers late)
 *   EX_MSG_CKPT_DONE   a ckpt_job (actors/node/ckpt.h), written, from the pool
 *   EX_MSG_STEP_DONE   an ex_step_job (a range of an optimizer step), done, from the pool
 *   EX_MSG_PARAMS_DONE the params_job embedded in an ex_batch: a two-stage backward's parameter
 *                      gradients, computed after its reply (the job's follow-up, rt_pool.h)
 *   EX_MSG_CHUNK_PARAMS_DONE  the params_job embedded in an ex_chunk, likewise for a slice
 *
 * Requests (ex_req_*) are created and touched on the loop thread only. A batch belongs to the loop
 * thread except while its job is out: then a worker touches its buffers and nothing else.
 */
#ifndef DMOE_BATCH_H
#define DMOE_BATCH_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "actors/net/conn.h"
#include "actors/serve/actcache.h"
#include "kernels/kern_expert.h"
#include "kernels/kern_optim.h"
#include "runtime/rt_actor.h"
#include "runtime/rt_pool.h"
#include "wire/codec/wire_compress.h"
#include "wire/wire_msg.h"

enum { EX_FWD = 0, EX_BWD = 1 };

/* The message types of the expert actor (see the header comment for the struct each one is). */
enum {
    EX_MSG_REQ = 1,
    EX_MSG_SCHEDULE,
    EX_MSG_TICK,
    EX_MSG_JOB_DONE,
    EX_MSG_CHUNK_DONE,
    EX_MSG_DELAY_DONE,
    EX_MSG_CKPT_DONE,
    EX_MSG_STEP_DONE,
    EX_MSG_PARAMS_DONE,
    EX_MSG_CHUNK_PARAMS_DONE,
};

/* One forward or backward request, from the server to the expert, answered through its connection. */
typedef struct ex_req {
    rt_msg msg;                           /* EX_MSG_REQ */
    struct ex_req *next;                  /* queue or batch link */
    conn *c;                              /* referenced and held (conn_hold) while the request lives */
    uint64_t id;
    int dir;                              /* EX_FWD or EX_BWD */
    int64_t rows;
    wire_msg *wm;                         /* owns the frame the row pointers point into */
    size_t charge;                        /* quota bytes to release with the frame (conn_uncharge) */
    struct met_std_s *met;                /* where errors are counted (NULL: none) */
    const uint8_t *in[KERN_MAX_IO];       /* rows of each input (unaligned, little-endian) */
    const uint8_t *gout[KERN_MAX_IO];     /* backward: rows of each grad_output */
    void *owned[2 * KERN_MAX_IO];         /* decoded tensors (decompressed, converted) rows may point into */
    int save;                             /* forward: keep its activations for a backward (its "save") */
    uint64_t in_hash;                     /* hash of the input rows (activation cache), 0 when unused */
    act_entry *cached;                    /* backward: the saved activations of its forward, or NULL */
    uint64_t t_arrive_us;
} ex_req;

/* A backward reply's input gradients, compressed by the worker for one request of the batch. */
typedef struct ex_packed {
    uint8_t *buf[KERN_MAX_IO];            /* one per input; freed with the reply (or the batch) */
    size_t len[KERN_MAX_IO];
    int rc;                               /* 0, or why it could not be compressed (not finite) */
} ex_packed;

/* Rows of several requests of one direction, computed as one pool job (or as chunks, see ex_chunk). */
typedef struct ex_batch {
    rt_job job;                  /* its msg (EX_MSG_JOB_DONE) brings the batch back to the expert */
    struct batchq *q;            /* the queue that built it and answers it */
    int dir;
    int64_t B;
    ex_req *reqs;                /* the requests it holds, in row order */
    int nreq;
    void *in[KERN_MAX_IO];       /* B rows of each input */
    float *gout[KERN_MAX_IO];    /* backward: B rows of each grad_output */
    float *res[KERN_MAX_IO];     /* forward: outputs; backward: grad_inputs (one per input) */
    float *ws;
    size_t ws_floats;
    void *work;                  /* block holding in, gout, ws: freed when the job is back */
    act_block *saved;            /* forward: where the activations go (NULL: not kept) */
    const float *gathered;       /* backward: the requests' saved activations, in the work block, or */
    int gathered_in_place;       /* ... those of its one request, where its cache entry holds them */
    float *res_block;            /* block holding res: freed when the last reply is written */
    wire_scheme compression;     /* backward: how the worker compresses each request's grad_inputs */
    ex_packed *packed;           /* several requests or a compression: one per request, by the worker */
    int refs;
    int rc;                      /* 0, or a DMOE_* code from the kernel */
    char err[128];
    uint64_t seed;               /* randomness of this batch (dropout) */
    uint64_t t_queued_us;        /* summed queue wait of its requests */
    uint64_t t_compute_us;       /* from submission to the pool to the last job's end */
    atomic_ullong t_kernel_us;   /* on the workers: its jobs' running time, summed */
    atomic_ullong t_fill_us;     /* on the workers: copying its rows in (batchq_fill), summed */
    rt_timer delay;              /* nop_delay: holds the answer without blocking anything (EX_MSG_DELAY_DONE) */
    struct ex_batch *next_delayed;   /* the expert's list of batches held by their delay timer */
    /* set by the expert for the worker: */
    const kern_model *model;
    float *params, *grads;
    float lr;                    /* backward: of the step that follows it */
    int nchunks, chunks_left;    /* chunk jobs out (0: the batch runs as one job) */
    struct ex_chunk *chunks;
    atomic_int chunks_running;   /* workers still computing: the last one reduces and steps */
    /* a two-stage backward (kern_class backward_inputs/backward_params): job computes the input
     * gradients and the replies; params_job, its follow-up on the same worker, the rest of the
     * parameter gradients while the loop answers. The loop reads nothing params_job writes but
     * params_rc and t_params_us, and those only once it is back. */
    int staged;
    int held;                    /* answered after the first stage: a reference kept for the second */
    int params_left;             /* chunks whose second stage is not back yet */
    rt_job params_job;           /* EX_MSG_PARAMS_DONE */
    int params_rc;
    atomic_ullong t_params_us;   /* on the workers: the second stages' running time, summed */
} ex_batch;

/* A slice of rows of a batch, computed as its own job (EX_MSG_CHUNK_DONE) when a batch is split across
 * the workers. */
typedef struct ex_chunk {
    rt_job job;
    ex_batch *b;
    int idx;
    int64_t r0, r1;
    float *grads, *ws;
    int rc;
    rt_job params_job;           /* a two-stage backward's second stage for these rows (EX_MSG_CHUNK_PARAMS_DONE) */
    int params_rc;
} ex_chunk;

/* The optimizer step that follows a backward, after its reply (expert.c): phase 1 sums the per-worker
 * gradient buffers of the batch into the first one and checks them, range by range; phase 2 applies
 * the update, range by range. Owned by the expert; while its jobs are out, the workers read it and
 * write only their job's fields and their ranges of the buffers. */
enum { EX_STEP_IDLE = 0, EX_STEP_REDUCE, EX_STEP_APPLY };

typedef struct ex_step {
    int phase;                   /* EX_STEP_*: what the jobs out are doing */
    int out;                     /* jobs on the pool */
    int lost;                    /* a job of this phase could not be submitted: the step is abandoned */
    kern_optim *opt;
    const kern_model *model;
    float *params;
    float **bufs;                /* the batch's gradient buffers, bufs[0] receives the sum */
    int nbuf;
    double *sumsq;               /* clipping: one sum of squares per KERN_OPTIM_BLOCK floats */
    kern_optim_plan plan;        /* phase 2 */
    float lr;
    int njobs;                   /* ranges of phase 1 (phase 2 too, unless the optimizer is not elementwise) */
    struct ex_step_job *jobs;
    uint64_t t_start_us;
    uint64_t work_us;            /* the jobs' running time on the workers, summed so far */
} ex_step;

/* One range of an optimizer step as a pool job (EX_MSG_STEP_DONE). */
typedef struct ex_step_job {
    rt_job job;
    ex_step *s;
    size_t i0, i1;
    int finite;                  /* phase 1: the range's summed gradients are all finite */
    uint64_t run_us;             /* its running time on the worker */
} ex_step_job;

/* ex_req_free releases a request: its frame, its budget charge, its hold on the connection's
 * in-flight count and its reference to the connection. NULL is a no-op. */
void ex_req_free(ex_req *r);
/* ex_req_drop_frame frees the request's frame and decompressed tensors and releases its budget charge
 * (the rows were copied). */
void ex_req_drop_frame(ex_req *r);
/* ex_reply_error answers a request with an error (counted in its metrics) and frees it. */
void ex_reply_error(ex_req *r, int code, const char *msg);

#endif
