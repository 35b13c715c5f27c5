/* loadgen_cfg.h -- what a load run is asked to do (loadgen_cfg) and what it measured (loadgen_report):
 * the settings with their defaults and checks, and the report with its release. No I/O and no loop here:
 * loadgen.h runs a cfg and prints a report; loadgen_engine.h is how the run is made.
 */
#ifndef DMOE_LOADGEN_CFG_H
#define DMOE_LOADGEN_CFG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "wire/wire_maddr.h"

#define LOADGEN_MAX_CLIENTS 4096   /* one socket each: stays under common fd limits on both ends */
#define LOADGEN_MAX_TARGETS 1024   /* experts one run may address */
#define LOADGEN_N_CODES 16         /* error counters by -code: 1..15 are the DMOE_* codes, 0 any other */

#define LOADGEN_MAX_DIMS 8         /* MoE grid dimensions (moe_beam.h's MOE_MAX_DIMS) */
#define LOADGEN_DHT_MAX_VALUE 60000 /* DHT value bytes: under the DHT's 64 KiB bound with the msgpack header */

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
    double mix;                 /* fraction of requests that are backwards, each its user's previous forward's:
                                 * 0..0.5 (0.5: every forward has its backward); DHT: fraction of gets,
                                 * 0..1 excluded (loadgen_engine.c, "Mix") */
    int64_t batch_min, batch_max; /* rows per forward (DHT: value bytes): fixed (min == max) or uniform in [min, max] */
    const char *const *uids;    /* NULL-terminated experts to target (a random one per forward) */
    int all;                    /* target every expert of the node instead (read from info) */
    uint64_t seed;              /* inputs, batch sizes and targets */
    uint64_t timeout_ms;        /* per call */
    const char *csv_path;       /* per-second samples, or NULL */
    FILE *progress;             /* a progress line rewritten here every second ("\r"; a terminal), or NULL */
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
    /* MoE: where the window's successful forwards spent their time (moe_fwd_stats), summed */
    uint64_t moe_fwds, moe_retried;
    double moe_search_ms, moe_dispatch_ms, moe_wait_ms, moe_total_ms;
    /* per-second samples (also written to csv_path) */
    int n_samples;
    struct loadgen_sample {
        double t_s;                   /* end of the interval, seconds since the first request */
        uint64_t requests, rows, errors;
        double p50_ms, p99_ms;        /* over the interval's successful replies (0 when none) */
    } *samples;
} loadgen_report;

/* loadgen_default_cfg fills c: mode LOADGEN_NODE, 1 client, 10 s, no count bound, forward only, batch
 * 1, seed 0, timeout 30 s, no warm-up, no CSV, no progress line; MoE: prefix "expert.", k_best 2, in_features 1024, no
 * grid. Peer (or initial peers and grid) and targets must be set by the caller. */
void loadgen_default_cfg(loadgen_cfg *c);

/* loadgen_check_cfg returns 0 when c describes a run loadgen_run can attempt, else DMOE_EINVAL with err
 * saying what is wrong (bounds, mix, batch sizes, targets or peers missing for the mode, the grid). */
int loadgen_check_cfg(const loadgen_cfg *c, char *err, size_t errlen);

/* loadgen_report_free releases r's samples; NULL is a no-op. */
void loadgen_report_free(loadgen_report *r);

#endif
