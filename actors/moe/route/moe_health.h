/* moe_health.h -- keeping a Mixture-of-Experts layer away from peers that are gone.
 *
 * A peer that is killed stays declared in the DHT until its declarations expire (a few update periods),
 * and meanwhile a beam search keeps choosing its experts: every step would lose the samples routed only
 * to them. moe_health wraps a layer's successors provider and expert caller: a call that ends with
 * "connection failed", "shutting down" or a timeout marks its peer's address as gone for dead_s
 * seconds, and the wrapped provider leaves every expert of that peer out of the successors it reports,
 * so the next search picks live experts. A call times out only at its forward's or backward's deadline
 * (the layer gives each call what is left), long after the layer stopped waiting for a straggler: by
 * then the peer is partitioned, stalled or overloaded, and the next steps are better off without it.
 *
 * Order: moe_health_new (over the inner provider and caller, whose impl must outlive it) -> give
 * moe_health_succ / moe_health_caller to moe_layer_new -> ... -> moe_health_free after the layer.
 * Loop thread only.
 */
#ifndef DMOE_MOE_HEALTH_H
#define DMOE_MOE_HEALTH_H

#include "actors/moe/moe.h"
#include "actors/moe/route/moe_beam.h"

#define MOE_HEALTH_DEAD_S 10.0    /* how long a peer that refused a call is left out */
#define MOE_HEALTH_MAX_PEERS 256  /* peers remembered; the one whose sentence ends first is forgotten */

typedef struct moe_health moe_health;

/* moe_health_new wraps succ and caller (copied). Returns NULL when out of memory. */
moe_health *moe_health_new(const moe_succ_provider *succ, const moe_caller *caller, double dead_s);
/* moe_health_succ / moe_health_caller return the wrapped provider and caller (owned by h). */
const moe_succ_provider *moe_health_succ(moe_health *h);
const moe_caller *moe_health_caller(moe_health *h);
/* moe_health_is_dead returns whether addr is left out now. */
int moe_health_is_dead(const moe_health *h, const wire_maddr *addr);
/* moe_health_free frees h; calls and searches still out must have completed. NULL is a no-op. */
void moe_health_free(moe_health *h);

#endif
