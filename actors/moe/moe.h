/* moe.h -- the client-side Mixture-of-Experts layer (hivemind's RemoteMixtureOfExperts and
 * RemoteSwitchMixtureOfExperts): a local gating projection, beam search over the DHT for the best
 * live experts, fault-tolerant dispatch to them, and the backward pass through the experts that
 * answered.
 *
 * Order: moe_cfg_default -> set the fields -> moe_layer_new (with a successors provider, moe_beam.h,
 * and an expert caller, below) -> moe_forward (cb gets a moe_fwd) -> moe_backward(fwd, grad_output)
 * (fills the layer's gating gradients and the input gradient; the servers update their own experts)
 * -> step the gating parameters (moe_layer_params / moe_layer_grads with kern_optim) -> moe_fwd_free
 * -> ... -> moe_layer_free once no call is running. moe_forward_run and moe_backward_run are blocking
 * drivers for programs: they run the loop until their call ends.
 *
 * Forward, for a batch x[B, in_features]: scores = x W^T + b split per grid dimension; the beam search
 * picks up to k_best experts per sample; ONE request per expert carries every row routed to it. The
 * requests go out as the search finishes samples: after each round of the search, the samples whose best
 * experts are final go as one wave (one request per expert of the wave) while the next round is out; the
 * last wave goes when the search ends (a 1-d grid of up to 256 coordinates: one wave, at the end). An
 * expert chosen in several waves gets a request per wave; the result is bit for bit that of a single
 * dispatch at the end (stats.waves says how many there were). Answers are collected until every sample has
 * k_min of them (or can get no more), then for at most timeout_after_k_min more, never past
 * forward_timeout (the beam search counts against forward_timeout too). A request that fails (refused,
 * connection lost, a bad answer) or stalls (MOE_HEDGE_MIN_S, once the search has ended) has its rows sent
 * again, within the same forward, to each sample's next-best spare expert (cfg.retry_rounds); a peer that
 * refused or stalled is down for the rest of the forward, every expert it hosts with it. Failed and late
 * answers, answers
 * that are not float32 [the expert's rows, D] (rx_tensor_check), and -- with detect_anomalies, on by
 * default -- non-finite answers are masked out. Until one matches, the first expert's schema is checked
 * against what the layer sends (the caller's info port): experts of another width end the forward with
 * DMOE_ESHAPE and a message naming both shapes. Each distinct remote error is logged once at WARN. Output row b = sum over the experts that answered of
 * softmax(logits of those experts)_j * output_j, where an expert's logit is the sum of its coordinates'
 * scores. A sample nobody answered is an error unless allow_zero_outputs (its row is then zeros, never
 * NaN).
 * Switch mode (is_switch): per-dimension softmax of the scores (grid_dropout keeps each coordinate with
 * that probability), an expert's weight is the product of its coordinates' probabilities (not
 * renormalised), the output adds the input (residual), the gating input is jittered by a factor in
 * [1 - jitter_eps, 1 + jitter_eps] (on a copy), and the layer keeps an exponential moving average of
 * grid utilisation that the load-balancing loss uses, exactly as hivemind defines them.
 *
 * Threads: the layer belongs to the loop thread. Each forward or backward call is an actor with a
 * deadline timer; the gating GEMMs (forward and backward), the beam search's set-up and first round, the
 * combine of the answers and the backward's arithmetic run on a worker of a pool (cfg.pool, or one
 * worker the layer starts for itself) and come back as mail. Callbacks run on the loop, never inside
 * the call that started them.
 *
 * Files: moe.c (the layer and its forward record), moe_call.c (the call actor: dispatch, timing, the
 * schema check, the backward), moe_retry.c (the call actor's requests, retries on spares and hedge),
 * moe_op.h (the call actor's structs), moe_impl.h (the layer's shared structs), moe_types.h (this
 * interface's types), moe_math.c (the arithmetic); route/ finds the experts: moe_beam.c (the search),
 * moe_adapt.c (the DHT and the client behind the two ports), moe_health.c (leaving dead peers out),
 * moe_net.c (the set-up programs share).
 */
#ifndef DMOE_MOE_H
#define DMOE_MOE_H

#include <stddef.h>
#include <stdint.h>

#include "actors/moe/moe_types.h"   /* moe_cfg, moe_caller, moe_fwd_stats */
#include "runtime/rt_actor.h"

/* Retries (moe_retry.c). A failed expert costs its rows only when no spare is left: the search keeps
 * k_best * retry_rounds more experts per sample, best first, and a failed slot takes the next live one.
 * 4: enough that a sample's spares almost never all sit on the one peer that failed (free on a 1-d grid,
 * which the search reads in one round anyway). */
#define MOE_RETRY_ROUNDS 4
/* A request still out to a peer that has answered nothing in this forward, while samples wait on it,
 * this long after the last answer and at least twice as long as the answers so far took, is presumed
 * lost (a stalled or partitioned peer) when spares can take all that peer's rows: its rows go to them. Short enough to save the step, long enough
 * not to fire on a busy but live node (a loaded one answers within a few times the others' latency). */
#define MOE_HEDGE_MIN_S 0.5
/* No retry is sent with less time than this left before the deadline: it could not come back. */
#define MOE_RETRY_MIN_MS 20
/* Peers remembered as down within one forward (the rest are still skipped by moe_health next step). */
#define MOE_MAX_DOWN 32

/* moe_cfg_default fills c with hivemind's defaults (k_best 1 in switch mode, else 4; the caller sets
 * in_features, grid_size, ndim, uid_prefix), except detect_anomalies, which is on. */
void moe_cfg_default(moe_cfg *c);

/* ---- the layer ---- */

/* moe_layer_new creates a layer on loop l; succ and caller are copied (their impl must outlive the layer).
 * The gating weights get PyTorch's Linear initialisation from c->seed. Without c->pool the layer starts
 * a one-worker pool of its own. Returns 0 and *out,
 * or DMOE_EINVAL with err naming the bad setting, or DMOE_ENOMEM (also when the pool cannot start). */
int moe_layer_new(rt_loop *l, const moe_cfg *c, const moe_succ_provider *succ, const moe_caller *caller,
                  moe_layer **out, char *err, size_t errlen);
/* moe_layer_cfg returns the layer's configuration (with defaults filled in). */
const moe_cfg *moe_layer_cfg(const moe_layer *m);
/* moe_layer_params returns the gating parameters, W[total, in] then b[total], as one flat buffer of *n
 * floats (owned by the layer; write it to load weights). moe_layer_grads returns their gradients from
 * the last backward, same layout. */
float *moe_layer_params(moe_layer *m, size_t *n);
float *moe_layer_grads(moe_layer *m, size_t *n);
/* moe_layer_utilization returns the switch layer's grid utilisation EMA (sum(grid) floats, per
 * dimension concatenated). */
const float *moe_layer_utilization(const moe_layer *m);
/* moe_layer_free frees m (no call may still be running). NULL is a no-op. */
void moe_layer_free(moe_layer *m);

/* ---- calls ---- */

/* Completion of moe_forward: err 0 and f (the caller's now: moe_fwd_free), or an error with f NULL. */
typedef void (*moe_fwd_cb)(void *arg, int err, const char *msg, moe_fwd *f);
/* moe_forward starts a forward of x[B, in_features] (copied). Returns 0 (cb runs later, also with the
 * errors found on the way: the search's, DMOE_ETIMEDOUT, DMOE_ENOMEM) or DMOE_EINVAL (bad B, or with
 * detect_anomalies a non-finite x) / DMOE_ENOMEM / the pool's error, cb not called. */
int moe_forward(moe_layer *m, const float *x, int64_t B, moe_fwd_cb cb, void *arg);
/* moe_forward_ex is moe_forward for experts with several inputs (hivemind's extra positional inputs,
 * e.g. det_dropout's 0/1 mask or a transformer's uint8 padding mask): extra[0..n_extra) (n_extra <
 * KERN_MAX_IO; float32 or uint8, shape [B, ...]; copied) go to every chosen expert as inputs 1..n_extra,
 * each expert getting the rows routed to it, in the forward and again in the backward. They get no
 * gradient. moe_forward is moe_forward_ex with n_extra 0. Returns as moe_forward (DMOE_EINVAL also for a
 * bad extra tensor). */
int moe_forward_ex(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra, moe_fwd_cb cb,
                   void *arg);
/* moe_fwd_output returns the output [B, D] (owned by f) and sets *B and *D. */
const float *moe_fwd_output(const moe_fwd *f, int64_t *B, int *D);
/* moe_fwd_balancing_loss returns the switch layer's load-balancing loss (0 otherwise). */
float moe_fwd_balancing_loss(const moe_fwd *f);
/* moe_fwd_stats_of returns what the forward did. */
const moe_fwd_stats *moe_fwd_stats_of(const moe_fwd *f);
/* moe_fwd_expert_weight returns the weight the forward gave expert uid in sample b (0 if none). */
float moe_fwd_expert_weight(const moe_fwd *f, int64_t b, const char *uid);
/* moe_fwd_free frees f (no backward of f may still be running). NULL is a no-op. */
void moe_fwd_free(moe_fwd *f);

/* Completion of moe_backward: err 0 and gx[B, in_features] (owned by f), or an error. */
typedef void (*moe_bwd_cb)(void *arg, int err, const char *msg, const float *gx);
/* moe_backward sends grad_output gy[B, D] (copied) back through the experts that answered f's forward,
 * collecting answers with backward_k_min / backward_timeout / timeout_after_k_min, and computes the
 * gating gradients (moe_layer_grads, overwritten) and the input gradient locally; balance_coef scales
 * the switch layer's load-balancing loss added to the objective (0: none). Returns 0 (cb runs later) or
 * DMOE_EINVAL / DMOE_ENOMEM, cb not called. */
int moe_backward(moe_layer *m, moe_fwd *f, const float *gy, float balance_coef, moe_bwd_cb cb, void *arg);

/* moe_forward_run runs moe_forward on the layer's loop until it ends. Returns 0 and *out, or the error
 * with err filled. */
int moe_forward_run(moe_layer *m, const float *x, int64_t B, moe_fwd **out, char *err, size_t errlen);
/* moe_forward_run_ex runs moe_forward_ex until it ends, like moe_forward_run. */
int moe_forward_run_ex(moe_layer *m, const float *x, int64_t B, const rx_tensor *extra, int n_extra, moe_fwd **out,
                       char *err, size_t errlen);
/* moe_backward_run runs moe_backward until it ends. Returns 0 and *gx (owned by f), or the error. */
int moe_backward_run(moe_layer *m, moe_fwd *f, const float *gy, float balance_coef, const float **gx, char *err,
                     size_t errlen);

#endif
