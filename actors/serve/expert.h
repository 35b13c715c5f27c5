/* expert.h -- the expert actor: one hosted expert, its two batch queues, its schedule.
 *
 * The expert actor owns one hosted expert: its architecture (kern_model), flat parameters, gradient
 * buffer, optimizer state, statistics and its two batch queues (batchq.c: forward, backward). It never
 * computes on the loop thread: requests arrive as mail (EX_MSG_REQ, from the server through
 * expert_submit) and wait in their queue; when the expert can start a batch it takes one from the queue,
 * hands it to the worker pool as a job, and when the job comes back (EX_MSG_JOB_DONE) it gives the
 * batch back to the queue, which answers the callers. batch.h lists every message it receives.
 *
 * Scheduling inside one expert: forwards may run several at a time (they only read the parameters, up
 * to max_parallel_fwd batches, so one busy expert can use every worker); a backward runs alone, since
 * its step writes the parameters. Backward work waiting stops new forwards from starting, so steps are
 * never starved.
 *
 * Reply, then step (one step per backward batch). A backward's job computes the parameter gradients
 * (into one buffer, or one per chunk when the batch was split across workers: at most 3 chunks, since
 * each extra buffer is a whole copy of the gradients, kept and reused) and the input gradients
 * at the weights as they are; as soon as the input gradients exist, the callers are answered (a class
 * with a two-stage backward computes the rest of its parameter gradients after that, on the same
 * worker; see expert.c). Then the optimizer step
 * runs on the pool in ranges of the parameter vector: phase 1 sums the buffers into the first, in their
 * fixed order, and checks that the sums are finite; phase 2 updates each range (kern_optim.h). Nothing
 * else of the expert -- no forward, backward or checkpoint -- starts until the step has ended, so every
 * output, gradient and parameter is bit for bit what a step inside the backward's job gave. Gradients
 * that are not finite skip the step (counted as a backward error and logged); the reply is out by then. A batch is taken
 * only when it can start right away, so batches grow with load and a lone request waits for nobody;
 * requests that arrive together (in one mailbox run) are queued before the expert looks (EX_MSG_SCHEDULE
 * goes behind them), so they share a batch.
 *
 * Requests reach the expert already validated against its schema by the server (server.c).
 *
 * Loop thread only, except the jobs' run functions: a batch's touches nothing but the batch's buffers
 * and, for a backward, the gradient buffers; a step's touches its ranges of the parameters, gradients
 * and optimizer state, which the schedule gives it alone.
 */
#ifndef DMOE_EXPERT_H
#define DMOE_EXPERT_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "actors/serve/batch.h"
#include "actors/serve/expert_types.h"   /* expert_cfg, expert_stats, expert */


/* expert_new creates the expert actor for uid and its queues, with its newest usable checkpoint from
 * cfg->ckpt_dir or else freshly initialised parameters. Blocking (file reads): call before the loop
 * runs. Returns NULL and fills err on failure (settings the class refuses, checkpoints that exist but
 * are all unusable, out of memory). */
expert *expert_new(rt_loop *l, const char *uid, const expert_cfg *cfg, char *err, size_t errlen);
/* expert_uid / expert_model / expert_stats_get / expert_cfg_get: read-only views (loop thread). */
const char *expert_uid(const expert *e);
const kern_model *expert_model(const expert *e);
const expert_stats *expert_stats_get(const expert *e);
const expert_cfg *expert_cfg_get(const expert *e);
/* expert_submit mails a validated request (EX_MSG_REQ) to the expert, which owns it from now on; when
 * the expert is stopped, the request is answered with DMOE_ESHUTDOWN here. */
void expert_submit(expert *e, ex_req *req);
/* expert_pack_info packs the expert's schema and stats map (wire/PROTOCOL.md, method info). */
void expert_pack_info(const expert *e, msgpack_packer *pk);
/* expert_busy returns the number of requests queued or computing. */
int expert_busy(const expert *e);
/* expert_shutdown fails every queued request with DMOE_ESHUTDOWN (and those that arrive later) and
 * lets running batches finish and answer; the owner waits for expert_busy() == 0, then expert_free. */
void expert_shutdown(expert *e);
/* expert_checkpoint asks for a checkpoint of the current state (a no-op without a checkpoint root, or
 * when nothing changed since the last one). It is written on the pool as soon as no backward is
 * running; forwards go on meanwhile. */
void expert_checkpoint(expert *e);
/* expert_checkpoint_pending returns whether a checkpoint is asked for or being written. */
int expert_checkpoint_pending(const expert *e);
/* expert_stepping returns whether the optimizer step of the last backward is still running (its reply
 * is out; nothing else of the expert starts until it ends). */
int expert_stepping(const expert *e);
/* expert_free stops the expert actor (the loop reaps it, with its queues, once no job of it is out;
 * batches still held by a delay timer are answered then); call it after expert_shutdown once
 * expert_busy() is 0, or at teardown. NULL is a no-op. */
void expert_free(expert *e);
/* expert_release_idle frees what only a busy expert needs: the extra gradient buffers a backward split
 * across workers keeps from one backward to the next (one per chunk past the first, the size of the
 * parameters). The node calls it when its pool has been idle a while (before returning the heap's free
 * pages, runtime/rt_mem.h); the next split backward makes them again. No-op while a backward or its
 * step runs. */
void expert_release_idle(expert *e);

#endif
