/* expert_impl.h -- the inside of the expert actor, shared by its two files: expert.c (requests,
 * batches, scheduling, checkpoints, info) and expert_step.c (the optimizer step after a backward).
 * Everything here belongs to the loop thread; see expert.c's design notes.
 */
#ifndef DMOE_EXPERT_IMPL_H
#define DMOE_EXPERT_IMPL_H

#include "actors/node/ckpt.h"
#include "actors/serve/batch.h"
#include "actors/serve/batchq.h"
#include "actors/serve/expert_types.h"
#include "kernels/kern_optim.h"

struct expert {
    rt_actor actor;
    char uid[256];
    expert_cfg cfg;
    kern_model model;
    float *params, *grads;
    float *grads_extra;     /* gradients of the chunks past the first of a split backward (expert_release_idle) */
    kern_optim opt;
    batchq *q[2];
    rt_timer tick[2];       /* a queue waits for min_batch_size rows (EX_MSG_TICK) */
    int tick_armed[2];
    rt_signal sched;        /* EX_MSG_SCHEDULE: raised by each request, runs behind the burst */
    int running[2];         /* batches of each direction on the pool */
    ex_batch *delayed;      /* batches held by nop_delay timers */
    int n_delayed;
    ex_step step;           /* the optimizer step after the last backward (step.phase: running or not) */
    int ckpt_wanted, ckpt_running;
    int64_t ckpt_step;      /* optimizer step of the newest checkpoint on disk (-1: none) */
    ckpt_job ckpt;
    int shutting;
    uint64_t batch_seq;     /* seeds per-batch randomness */
    expert_stats stats;
};

/* expert_step_start: after a good backward whose gradients are in nbuf buffers (the first, e->grads,
 * then grads_extra) and whose reply is out, sum and check them (phase 1), then step with lr. */
void expert_step_start(expert *e, int nbuf, float lr);
/* expert_step_job_done: a step job is back (EX_MSG_STEP_DONE); when its phase is complete, the next
 * starts or the step ends (e->step.phase back to EX_STEP_IDLE). */
void expert_step_job_done(expert *e, const ex_step_job *sj);

#endif
