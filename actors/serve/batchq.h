/* batchq.h -- the batch queue in front of one expert and direction: a data structure, not an actor.
 *
 * Requests for one expert and direction (forward or backward) queue here. While the expert is busy,
 * they accumulate; when the expert can start a batch, it takes one: whole requests in arrival order up
 * to max_batch_size rows, and no more once it holds 1,024 (BATCHQ_MERGE_ROWS), with one input matrix per input that the batch's jobs fill from the frames
 * on the workers (batchq_fill: the one copy a row makes on its way in, none on the loop thread); the
 * frames are freed when the jobs are back. When the batch comes back computed, the expert hands it back and
 * the queue splits the outputs by row counts and answers each caller, in order, with replies that
 * reference the output matrix instead of copying it.
 *
 * Order: batchq_new -> (batchq_push | batchq_wait_us | batchq_take | batchq_answer)... -> batchq_free.
 * batchq_fill and batchq_pack_replies are the functions a worker calls (on a batch it holds).
 *
 * Only its expert calls it, on the loop thread; it calls nothing of the expert's (batch.h is the shared
 * floor). Owns the queued requests until they are taken; a batch owns its requests until it is answered.
 */
#ifndef DMOE_BATCHQ_H
#define DMOE_BATCHQ_H

#include <stdint.h>

#include "actors/serve/batch.h"

typedef struct batchq batchq;

typedef struct {
    int64_t max_batch_size;   /* rows per batch */
    int64_t min_batch_size;   /* wait up to batch_wait_ms for this many rows */
    int batch_wait_ms;
    wire_scheme compression;  /* backward: how returned input gradients are compressed */
    actcache *cache;          /* forward: where saved activations are kept (NULL: none) */
    struct met_std_s *met;    /* requests answered and their latency (NULL: none) */
} batchq_cfg;

/* batchq_new creates the queue for direction dir of model (uid labels its metrics). Returns NULL when
 * out of memory. The model must outlive the queue. */
batchq *batchq_new(int dir, const batchq_cfg *cfg, const kern_model *model, const char *uid);
/* batchq_push queues req (the queue owns it now). */
void batchq_push(batchq *q, ex_req *req);
/* batchq_wait_us returns -1 when nothing waits, 0 when a batch can be taken now, else the microseconds
 * until the oldest request has waited batch_wait_ms (min_batch_size is not reached yet). */
int64_t batchq_wait_us(const batchq *q, uint64_t now_us);
/* batchq_take builds the next batch when batchq_wait_us would return 0, and returns it (the caller
 * sets model, params... and runs it); NULL when none is ready or when it cannot be allocated -- then
 * the requests it would have held are answered with DMOE_ENOMEM. Requests whose callers left are
 * dropped first. */
ex_batch *batchq_take(batchq *q, uint64_t now_us);
/* batchq_pack_replies, on a worker after the kernel: gives each request of a batch of several its own
 * copy of its rows of the results (backward with a compression: compressed) in b->packed, which its
 * reply then sends; a batch of one request replies from the result block. Touches only b. */
void batchq_pack_replies(ex_batch *b);
/* batchq_answer answers every request of a computed (or failed: b->rc < 0) batch and gives the batch
 * up; its output block lives on in the replies until they are written. */
void batchq_answer(batchq *q, ex_batch *b);
/* batchq_abandon fails every request of a batch dropped from the pool (its expert stopped) with
 * DMOE_ESHUTDOWN, as batchq_answer does. */
void batchq_abandon(ex_batch *b);
/* batchq_hold keeps a batch alive past batchq_answer, for a job still running on its buffers (a
 * two-stage backward's second stage); batchq_unhold gives that up and frees the batch when nothing
 * else (an unwritten reply) holds it. */
void batchq_hold(ex_batch *b);
void batchq_unhold(ex_batch *b);
/* batchq_fill copies rows [r0, r1) of the batch's requests (inputs, grad_outputs, saved activations)
 * into its work block: the first thing each of its jobs does, on a worker (the rows stay in their
 * frames until then, so the loop thread copies nothing). Reads the requests, writes only those rows. */
void batchq_fill(ex_batch *b, int64_t r0, int64_t r1);
/* batchq_release_work frees a batch's work block (inputs, workspace) once its job is back, and the
 * frames (and saved activations) its rows came from. Loop thread. */
void batchq_release_work(ex_batch *b);
/* batchq_oldest_us returns the arrival time of the oldest waiting request, 0 when none waits. */
uint64_t batchq_oldest_us(const batchq *q);
/* batchq_waiting returns the requests waiting to be taken. */
int batchq_waiting(const batchq *q);
/* batchq_pending returns the requests waiting plus those inside batches not yet answered. */
int batchq_pending(const batchq *q);
/* batchq_fail_waiting answers every waiting request with code and msg. */
void batchq_fail_waiting(batchq *q, int code, const char *msg);
/* batchq_free fails the waiting requests with DMOE_ESHUTDOWN and frees the queue; batches it built must
 * be answered before. NULL is a no-op. */
void batchq_free(batchq *q);

#endif
