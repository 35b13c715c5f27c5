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
 * calling thread) -> read the report -> loadgen_report_free. loadgen_main wraps that for the command
 * line. The calling thread must not run another loop meanwhile; any number of runs may follow each
 * other (or run on different threads: they share nothing).
 */
#ifndef DMOE_LOADGEN_H
#define DMOE_LOADGEN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "wire/wire_maddr.h"

#define LOADGEN_MAX_CLIENTS 4096   /* one socket each: stays under common fd limits on both ends */
#define LOADGEN_MAX_TARGETS 1024   /* experts one run may address */
#define LOADGEN_N_CODES 16         /* error counters by -code: 1..15 are the DMOE_* codes, 0 any other */

#define LOADGEN_MAX_DIMS 8         /* MoE grid dimensions (moe_beam.h's MOE_MAX_DIMS) */

typedef enum { LOADGEN_NODE = 0, LOADGEN_MOE = 1, LOADGEN_DHT = 2 } loadgen_mode;

typedef struct {
    int mode;                   /* loadgen_mode */
    wire_maddr peer;            /* the node (LOADGEN_NODE) */
    const char *const *initial_peers; /* NULL-terminated DHT multiaddrs to join (LOADGEN_MOE, LOADGEN_DHT) */
    const char *uid_prefix;     /* MoE: the experts' uid prefix ("expert.") */
    int grid_size[LOADGEN_MAX_DIMS], ndim;   /* MoE: the grid */
    int k_best;                 /* MoE: experts per sample */
    int in_features;            /* MoE: the experts' input width */
    int clients;                /* concurrent connections, one request in flight each (>= 1) */
    uint64_t max_requests;      /* stop sending after this many (0: no count bound) */
    double duration_s;          /* stop sending after this long (0: no time bound; one bound is needed) */
    double warmup_s;            /* replies in the first warmup_s count as errors/lost but not in the figures */
    double mix;                 /* fraction of requests that are backwards (DHT: gets), 0..1 (see loadgen.c) */
    int64_t batch_min, batch_max; /* rows per forward (DHT: value bytes): fixed (min == max) or uniform in [min, max] */
    const char *const *uids;    /* NULL-terminated experts to target (a random one per forward) */
    int all;                    /* target every expert of the node instead (read from info) */
    uint64_t seed;              /* inputs, batch sizes and targets */
    uint64_t timeout_ms;        /* per call */
    const char *csv_path;       /* per-second samples, or NULL */
} loadgen_cfg;

/* Latency percentiles in microseconds over the measured window. */
typedef struct {
    uint64_t n;
    double p50, p90, p99, max, mean;
} loadgen_lat;

typedef struct {
    /* what ran */
    int n_targets;              /* node: experts targeted; MoE: most experts one forward chose */
    char first_target[256];     /* node: the first expert; MoE: the uid prefix; DHT: "" */
    int64_t row_elems;          /* elements per row of the first input (H for ffn; DHT: value bytes) */
    double run_s;               /* from the first request to the last reply (or the end of the wait) */
    /* every request of the run */
    uint64_t sent, ok, errors, lost;
    uint64_t err_by_code[LOADGEN_N_CODES];
    char first_error[256];      /* "code name: message" of the first error, "" when none */
    uint64_t bytes_sent, bytes_received;   /* whole frames with headers: handed to the connection, decoded */
    /* the measured window: replies after warmup_s */
    double window_s;
    uint64_t requests, rows, fwd_requests, bwd_requests, fwd_rows, bwd_rows;
    double req_per_s, rows_per_s;
    loadgen_lat lat, lat_fwd, lat_bwd;
    /* per-second samples (also written to csv_path) */
    int n_samples;
    struct loadgen_sample {
        double t_s;                   /* end of the interval, seconds since the first request */
        uint64_t requests, rows, errors;
        double p50_ms, p99_ms;        /* over the interval's successful replies (0 when none) */
    } *samples;
} loadgen_report;

/* loadgen_default_cfg fills c: mode LOADGEN_NODE, 1 client, 10 s, no count bound, forward only, batch
 * 1, seed 0, timeout 30 s, no warm-up, no CSV; MoE: prefix "expert.", k_best 2, in_features 1024, no
 * grid. Peer (or initial peers and grid) and targets must be set by the caller. */
void loadgen_default_cfg(loadgen_cfg *c);

/* loadgen_run runs one load test on a fresh loop on the calling thread and fills *r (free its samples
 * with loadgen_report_free; r is zeroed first). Returns 0 when the run took place (look at r->errors
 * and r->lost for its outcome), or a negative code with err filled when it could not: DMOE_EINVAL (bad
 * cfg, unknown expert, targets with different schemas, batch over the node's max_batch_size, a bad
 * MoE layer setting), the error of the info call or of joining the DHT (DMOE_ECONN, DMOE_ETIMEDOUT, ...),
 * DMOE_ENOMEM, DMOE_EIO (CSV file). */
int loadgen_run(const loadgen_cfg *c, loadgen_report *r, char *err, size_t errlen);

/* loadgen_report_free releases r's samples; NULL is a no-op. */
void loadgen_report_free(loadgen_report *r);

/* loadgen_print writes r as a human summary (json == 0) or one JSON object to f. */
void loadgen_print(FILE *f, const loadgen_cfg *c, const loadgen_report *r, int json);

/* loadgen_main is `dmoe-call ... load [flags]`: argv is the whole command line (the word "load" and
 * dmoe-call's --peer, --initial_peers, --json, --log_level, --seed, --timeout are accepted). Prints the summary and returns the
 * exit status: 0 all replies arrived without error, 1 errors, lost replies or a failed run, 2 bad usage. */
int loadgen_main(int argc, char **argv);

#endif
