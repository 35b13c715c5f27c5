/* moe_retry.h -- the requests of a MoE call, their retries on spares and the hedge (moe_retry.c).
 *
 * Internal to the layer: moe_call.c calls these on the loop thread; nothing here calls back into
 * moe_call.c except through o->answer, the callback every request is sent with.
 */
#ifndef DMOE_MOE_RETRY_H
#define DMOE_MOE_RETRY_H

#include "actors/moe/moe_op.h"

/* moe_retry_send sends request ei of o's record (gout: a backward's output gradient, which stays the
 * caller's, else NULL), with o->answer as its callback. Returns 0 (the request is out: counted in
 * pending, live and its rows' left) or the caller's error (logged; the request stays failed). */
int moe_retry_send(op *o, int ei, const rx_tensor *gout);

/* moe_retry_account counts request ei's rows as answered (ok) or not: it is no longer out for them. */
void moe_retry_account(op *o, int ei, int ok);

/* moe_retry_lost gives up on request ei (failed, or abandoned): in a forward with retries on, its rows
 * move to their samples' next live spares, sent at once; then they no longer wait on it. */
void moe_retry_lost(op *o, int ei);

/* moe_retry_peer_down puts peer a down for the rest of the forward and abandons (and retries) every
 * request still out to it. */
void moe_retry_peer_down(op *o, const wire_maddr *a);

/* moe_retry_spares_cover returns 1 when every row of the requests out to peer a has a spare left on
 * another peer that is not down (a forward with retries on), else 0. */
int moe_retry_spares_cover(const op *o, const wire_maddr *a);

/* moe_retry_hedge gives up on the stalled requests (the hedge time passed): those samples wait on, to
 * peers that answered nothing in this forward, when spares can take all their rows. The caller settles. */
void moe_retry_hedge(op *o);

#endif
