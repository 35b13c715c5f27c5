/* node_lag.h -- how late a real dmoe-node's loop ran: its dmoe_loop_lag_max_seconds gauge (a 10 ms
 * timer's worst lateness, runtime/rt_lag.h), read over HTTP from its metrics endpoint.
 *
 * For tests that start nodes with "--metrics_port", "0" (th_node_start): th_node_loop_lag_ms waits for
 * the gauges' next refresh (NODE_GAUGE_MS, 1 s) and returns the gauge in milliseconds. Wall time on a
 * machine the tests share: a real process's bound (NODE_LAG_MAX_MS) is looser than the in-process one
 * (dht_swarm.h), which meters CPU time. */
#ifndef DMOE_TEST_NODE_LAG_H
#define DMOE_TEST_NODE_LAG_H

#include "test/integration/harness.h"

/* The longest a real node's loop may run late in these tests: 250 ms of wall time. The stalls this
 * guards against (a hand-over scanning a large store on the loop) take seconds; the OS scheduling
 * the node among the other processes of a parallel `make test` on a small machine takes tens of ms. */
#define NODE_LAG_MAX_MS 250.0

/* th_node_loop_lag_ms returns node n's worst loop lateness so far in ms (a Criterion failure when its
 * metrics cannot be read). */
double th_node_loop_lag_ms(const th_node *n);

#endif
