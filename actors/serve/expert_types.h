/* expert_types.h -- the expert actor's public types (settings, statistics, the opaque handle), apart
 * from its functions (expert.h) so that the actor's inside (expert_impl.h) can use them without
 * including expert.h.
 */
#ifndef DMOE_EXPERT_TYPES_H
#define DMOE_EXPERT_TYPES_H

#include <stdint.h>

#include "actors/serve/batch.h"
#include "kernels/kern_expert.h"
#include "kernels/kern_optim.h"
#include "kernels/kern_sched.h"

typedef struct {
    const kern_class *cls;
    kern_config kcfg;
    kern_optim_cfg opt;
    kern_sched_cfg sched;     /* learning rate per optimizer step */
    int64_t max_batch_size;   /* rows per batch, and per request */
    int64_t min_batch_size;   /* a queue waits up to batch_wait_ms for this many rows */
    int batch_wait_ms;
    int max_parallel_fwd;     /* forward batches of this expert computing at once */
    uint64_t seed;            /* initialisation */
    rt_pool *pool;
    struct met_std_s *met;    /* the node's metrics (NULL: none) */
    wire_scheme compression;  /* how returned input gradients are compressed; advertised in info */
    actcache *cache;          /* the node's activation cache (NULL: none) */
    const char *ckpt_dir;     /* checkpoint root (NULL: none); must outlive the expert */
    int keep_ckpts;           /* checkpoint files kept per expert */
} expert_cfg;

typedef struct {
    uint64_t calls[2], batches[2], rows[2], errors[2];
    uint64_t steps, samples_seen;
    uint64_t backward_cached;    /* backward batches that ran from saved activations */
    uint64_t queue_wait_us[2];   /* summed over requests */
    uint64_t latency_us[2];      /* arrival to the batch's result, summed over requests */
    uint64_t compute_us[2];      /* summed over batches, from submission to the pool to the end */
    uint64_t kernel_us;          /* the batches' jobs running on the workers (worker time, summed) */
    uint64_t step_us;            /* optimizer steps, from the reply to the end of the update, summed */
    uint64_t step_work_us;       /* the steps' jobs running on the workers (worker time, summed) */
    uint64_t step_wait_us;       /* requests' wait for a running step to end (per direction, from the
                                  * later of the step's start and the oldest request's arrival) */
    uint64_t batch_build_ns;     /* loop thread: building batches (batchq_take) */
    uint64_t batch_fill_us;      /* the jobs on the workers: copying the batches' rows in (batchq_fill) */
    uint64_t params_after_reply_us;   /* two-stage backwards: their second stage on the workers, after
                                         the reply (a part of kernel_us) */
    uint64_t reply_ns;           /* loop thread: building and queueing replies (batchq_answer) */
} expert_stats;

typedef struct expert expert;

#endif
