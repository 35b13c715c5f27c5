/* loadgen.h -- a closed-loop load generator: against one dmoe node (`dmoe-call --peer ADDR load`), a
 * Mixture-of-Experts layer over a live DHT (`load --moe`), or the DHT itself (`load --dht`).
 *
 * C simulated users, each with its own client (so its own TCP connection and request stream), each
 * keeping exactly one forward or backward request in flight: when a reply (or an error) arrives the
 * user sends its next request at once. The run is bounded by a request count and by a duration; after
 * the last request is sent the generator waits for the replies still in flight (at most the call
 * timeout and a second), and any request that got neither a reply nor an error by then is "lost".
 *
 * Modes. LOADGEN_NODE: each user sends forward/backward requests to the node's experts directly.
 * LOADGEN_MOE: each user joins the DHT through initial_peers as a client (its own connection and
 * client-mode DHT node) and runs a MoE layer (moe.h; uid_prefix, grid, k_best over the live experts):
 * each request is one layer forward of the batch, or -- as the mix says -- the backward of the user's
 * previous forward; a forward where a chosen expert did not answer counts as an error. LOADGEN_DHT:
 * each user is a client-mode DHT peer; a "forward" is a store of a fresh key with a value of batch
 * bytes, a "backward" a get of a random key stored (successfully) earlier in the same run by any user;
 * a get that finds nothing, or another value, is an error. Stores and gets count one row each.
 *
 * Order: loadgen_default_cfg -> set peer and bounds -> loadgen_run (blocks: its own rt_loop on the
 * calling thread) -> read the report -> loadgen_report_free. `dmoe-call load` (cmd/call/load_cmd.c)
 * wraps that for the command line. The calling thread must not run another loop meanwhile; any number
 * of runs may follow each other (or run on different threads: they share nothing).
 *
 * The files: loadgen_cfg.h (the settings and the report), loadgen.c (this front: pick the mode, run,
 * print), loadgen_engine.c (the run's state machine and figures), loadgen_node.c, loadgen_moe.c and
 * loadgen_dht.c (the modes, each one lg_mode_ops table the engine calls through).
 */
#ifndef DMOE_LOADGEN_H
#define DMOE_LOADGEN_H

#include <stddef.h>
#include <stdio.h>

#include "actors/load/loadgen_cfg.h"

/* loadgen_run runs one load test on a fresh loop on the calling thread and fills *r (free its samples
 * with loadgen_report_free; r is zeroed first). Returns 0 when the run took place (look at r->errors
 * and r->lost for its outcome), or a negative code with err filled when it could not: DMOE_EINVAL (bad
 * cfg, unknown expert, targets with different schemas, batch over the node's max_batch_size, a bad
 * MoE layer setting), the error of the info call or of joining the DHT (DMOE_ECONN, DMOE_ETIMEDOUT, ...),
 * DMOE_ENOMEM, DMOE_EIO (CSV file). */
int loadgen_run(const loadgen_cfg *c, loadgen_report *r, char *err, size_t errlen);

/* loadgen_print writes r as a human summary (json == 0) or one JSON object to f. */
void loadgen_print(FILE *f, const loadgen_cfg *c, const loadgen_report *r, int json);

#endif
