/* bench.h -- what the files of dmoe-bench share (cmd/bench/, linked into build/dmoe-bench only): the
 * figures of one run (bench), the tunables, and each file's entry points.
 *
 * The files, in the order main (cmd/dmoe-bench.c) runs them:
 *   bench_kernel.c  the limit (cblas) and the ffn kernel in-process, over bench_batches, on b->threads
 *                   threads; the 1-row kernel latency and one Adam step;
 *   bench_node.c    dmoe-node as a subprocess (started with rt_spawn, ready by node_banner_wait), driven
 *                   by loadgen_run: throughput, latency, memory, and where a batch's time goes;
 *   bench_probe.c   what the node's threads and its expert report before and after each load run;
 *   bench_moe.c     the Mixture-of-Experts layer over two such nodes;
 *   bench_ident.c   Ed25519 signatures and verifications per second (the DHT's identity proofs);
 *   bench_record.c  the signed records' share of an expert lookup (an in-memory swarm, virtual time);
 *   bench_report.c  the table on stdout and the JSON file.
 * Each measuring function fills its fields of bench, sets its have_* flag on success and counts
 * b->failures otherwise. Single-threaded except inside bench_kernel.c's measurements, whose threads are
 * joined before they return.
 */
#ifndef DMOE_BENCH_H
#define DMOE_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "actors/dht/io/dht_memnet.h"
#include "kernels/kern_expert.h"
#include "wire/wire_maddr.h"

#define NB 4                     /* batch sizes of the throughput figures (bench_batches) */
#define BENCH_CLIENTS 8          /* concurrent clients for the node's throughput figures */
#define BENCH_REPEATS 3          /* in-process figures: the best of this many runs */
#define BENCH_MEM_EXPERTS 5      /* experts in the memory figure */
#define BENCH_WARM_SLICE_S 0.5   /* a node figure's warm-up: its own load in slices of this (times
                                  * --seconds) until the node's memory stops growing ... */
#define BENCH_WARM_SLICES 4      /* ... at most this many (each is a load of its own: connections) */
#define BENCH_WARM_PAGES 256     /* a slice in which the node touches fewer fresh pages (1 MiB): grown */
#define BENCH_MEM_REQUESTS 100   /* requests of the memory load: ~10 backwards per expert, each steps */
#define BENCH_MEM_MAX_S 60.0     /* a fence on that load (the count ends it long before) */
#define BENCH_MEM_WORKERS_LO 2   /* memory after load on few workers ... */
#define BENCH_MEM_WORKERS_HI 14  /* ... and on many (issue 12: at most 1.3 x, a 16-core machine's pool) */
#define BENCH_MEM_SETTLE_MS 1600 /* after the load: the node returns its free heap after 1 s idle (rt_mem.h) */
#define BENCH_DHT_NODES 1024
#define BENCH_DHT_LOOKUPS 256
#define BENCH_DHT_LATENCY_MS 1   /* each way, per message */
#define NODE_START_S 20          /* longest wait for a node's "Server started" line */
#define NODE_STOP_S 20           /* longest wait for a node to exit after SIGTERM */
#define MOE_GRID 250             /* the tutorial's grid: expert.[0:250], 15 of them live */
#define MOE_K_BEST 2
#define MOE_LIVE 15              /* experts the two nodes host (5 + 10) */
#define MOE_VISIBLE_S 15         /* longest wait for the layer to see every live expert */
#define MOE_N_SMALL 60           /* forwards of 3 rows timed */
#define MOE_N_BIG 20             /* forwards, and training steps, of 256 rows timed */
#define MOE_MAX_S 20.0           /* a fence on each timed series (the counts end it long before) */

/* The batch sizes of the throughput figures: 1, 64, 256, 1024 rows (bench_kernel.c). */
extern const int64_t bench_batches[NB];

/* Where a load run's time went, per sample (one row; a training sample is a forward and a backward
 * row): from the probes around the run (bench_probe.c). */
typedef struct {
    double loop_us;              /* the node's loop thread on the CPU */
    double workers_us;           /* its other threads (the pool's workers) on the CPU */
    double kernel_us;            /* expert kernels: the forward and backward jobs on the workers */
    double optimizer_us;         /* optimizer steps: their jobs on the workers */
    double optimizer_wall_us;    /* optimizer steps, from the reply to the end of the update */
    double step_wait_us;         /* requests held back by a running step */
    double copy_in_us;           /* loop: batches built (their rows are copied in by their jobs) */
    double fill_us;              /* workers: the jobs copying their batches' rows in */
    double params_us;            /* workers: of kernel_us, parameter gradients after the reply */
    double reply_us;             /* loop: replies built and queued */
    double loop_busy_pct;        /* the loop thread's CPU time over the run's wall time */
    double warm_s;               /* the warm-up before the run (bench_node.c: warm) */
    double requests, mib;        /* of the whole run: requests answered, MiB both ways */
} bench_split;

/* A MoE training step (forward, backward, the gating's Adam step) against its parts, in ms per step, means
 * over one series, every part measured in the same run: */
typedef struct {
    double step;                 /* the step, wall time */
    double search;               /* the beam search, wall time from the call (the gating GEMM included) */
    double expert_kernels;       /* the experts' forward and backward jobs on the nodes' workers, summed */
    double expert_steps;         /* the experts' optimizer jobs on the nodes' workers, summed */
    double gating_step;          /* the gating's Adam step (in the client) */
    double client_loop;          /* the client's loop thread on the CPU, the gating step left out */
    int have;
} bench_moe_parts;

/* bench_moe_parts_sum returns the sum of p's parts (the step left out). */
double bench_moe_parts_sum(const bench_moe_parts *p);

/* The node's part of a 1-row round trip, means per request (one at a time: a batch each), from the
 * probes around the run: arrival to reply queued (the batch's wait, its submit to its last job back, and
 * the reply's building), the kernel's part of it, and the loop thread's CPU. */
typedef struct {
    double node_us, kernel_us, loop_us;
    int have;
} bench_rtt_part;

/* One run's settings and figures. */
typedef struct {
    int threads;
    double seconds;              /* per in-process measurement */
    int hidden;
    const char *node_path;
    /* results */
    double gemm_gflops[NB], kfwd[NB], kfwdbwd[NB], nfwd[NB], nfwdbwd[NB];
    double lat_fwd_p50, lat_fwd_p99, lat_bwd_p50, lat_bwd_p99, kfwd_b1_p50, kfwd_b1_p99;
    double kbwd_b1_p50, kbwd_b1_p99;   /* in-process backward of 1 row (recomputing its forward), no step */
    double kbwd_saved_b1_p50, kbwd_saved_b1_p99;   /* the same from the forward's saved activations */
    double lat_train_fwd_p50, lat_train_bwd_p50;   /* 1 client, 1 row, forward then backward (with handle) */
    double lat_fwd_1cpu_p50, lat_fwd_1cpu_p99;      /* lat_fwd with the node and the client on one CPU */
    bench_rtt_part rtt_part[2];  /* the node's part of those two round trips: [0] lat_fwd, [1] on one CPU */
    double adam_step_p50;
    double rss_idle_mb, rss_loaded_mb, hwm_loaded_mb, rss_settled_mb, weights_mb;
    double rss_workers_mb[2];    /* after the same load on BENCH_MEM_WORKERS_LO and _HI workers, settled */
    double rss_workers_end_mb[2], hwm_workers_mb[2];   /* the same, as the load ended, and the peak */
    int have_mem_workers;
    double moe_fwd3[2], moe_fwd256[2], moe_train256[2];   /* ms: p50, p99 */
    bench_split split_fwd[NB], split_fb[NB];             /* the node's throughput runs, by batch size */
    double loop_us_per_req, loop_us_per_mib;             /* the loop thread's cost fitted over those runs */
    int have_split;
    double moe_train3[2];                                /* ms: p50, p99 */
    int moe_experts, moe_n[4];                           /* calls timed: fwd 3, fwd 256, train 256, train 3 */
    bench_moe_parts moe_parts[2];                        /* the training steps of 3 and of 256 rows */
    double sign_per_s, verify_per_s;                     /* Ed25519 on one thread (bench_ident.c) */
    double rec_lookup_us, rec_verifies_per_lookup, rec_verify_share, rec_verify_us;   /* bench_record.c */
    int have_node, have_mem, have_dht, have_moe, have_ident, have_record;
    dht_memnet_stats dht;
    int failures;
} bench;

/* ---- bench_ident.c ---- */

/* bench_ident_figures fills sign_per_s and verify_per_s: what a node identity's proofs cost. */
void bench_ident_figures(bench *b);

/* ---- bench_record.c ---- */

/* bench_record_figures fills rec_*: the CPU of one expert lookup (dht_get_experts, every node of an
 * in-memory swarm together), the signature checks it makes and their share of it. */
void bench_record_figures(bench *b);

/* ---- bench_kernel.c ---- */

enum { W_GEMM, W_FWD, W_FWDBWD };   /* what a measurement runs: cblas limit, kernel forward, fwd + bwd */

/* bench_alloc_normal returns n seeded normal floats (times 0.1), malloc'd; NULL when out of memory. */
float *bench_alloc_normal(size_t n, uint64_t seed);
/* bench_measure returns the rows per second of kind (W_*) over B rows split across b->threads threads,
 * the best of BENCH_REPEATS runs sharing b->seconds; 0 (and a failure counted) on error. m and params
 * are the ffn expert (NULL for W_GEMM). */
double bench_measure(bench *b, int kind, const kern_model *m, const float *params, int64_t B);
/* bench_kernel_latency fills kfwd_b1_*, kbwd_b1_* and kbwd_saved_b1_*: one thread, one row, the
 * kernel's forward and its backward (no optimizer), recomputing the forward or from its activations. */
void bench_kernel_latency(bench *b, const kern_model *m, const float *params);
/* bench_optimizer_latency fills adam_step_p50: one Adam step over the expert's parameters. */
void bench_optimizer_latency(bench *b, const kern_model *m, const float *params);

/* ---- bench_node.c ---- */

/* A dmoe-node started by the bench. */
typedef struct {
    pid_t pid;
    char log[64];
    wire_maddr addr;
    char dht_maddr[256];         /* from "Running DHT node on ['...']" */
} bench_child;

/* bench_node_start starts dmoe-node with n_experts ffn experts on workers threads (0: b->threads) and the
 * NULL-terminated extra flags (or NULL), and waits for its "Server started". Returns 0, or DMOE_EIO with the node's log on stderr; c
 * must be given to bench_node_stop in both cases. */
int bench_node_start(bench *b, bench_child *c, int n_experts, int workers, const char *const *extra);
/* bench_node_stop stops c's node (SIGTERM, then SIGKILL after NODE_STOP_S) and removes its log. */
void bench_node_stop(bench_child *c);
/* bench_node_figures fills the node's throughput (nfwd, nfwdbwd) and 1-row latency figures. */
void bench_node_figures(bench *b);
/* bench_memory_figures fills the memory figures of a node with BENCH_MEM_EXPERTS experts, on b->threads
 * workers and again on BENCH_MEM_WORKERS_LO and _HI. */
void bench_memory_figures(bench *b, const kern_model *m);

/* ---- bench_probe.c ---- */

/* What bench_probe_take reads from a node: CPU time of its threads and one expert's summed timers. */
typedef struct {
    double loop_ns, others_ns;   /* the loop (main) thread, every other thread */
    double compute_us, step_us, step_wait_us, batch_build_us, batch_fill_us, reply_us;   /* info stats */
    double params_us;            /* params_after_reply_us: a part of compute_us */
    double step_wall_us;         /* compute_us and step_us are the jobs' time on the workers; this the
                                  * steps' wall time, from the reply to the end of the update */
    double wait_us, batch_us;    /* queue_wait_us and compute_us: the batches' wait, and their wall time
                                  * from the submit to the last job back */
    double batches;              /* forward_batches + backward_batches */
} bench_probe;

/* bench_probe_take fills *p for the node pid serving at addr, with expert uid's stats, or every expert's
 * added up when uid is NULL (one info call on a loop of its own). Returns 0, or a negative code (the
 * call failed, /proc unreadable). */
int bench_probe_take(pid_t pid, const wire_maddr *addr, const char *uid, bench_probe *p);
/* bench_probe_diff writes after - before into *d, field by field. */
void bench_probe_diff(const bench_probe *before, const bench_probe *after, bench_probe *d);

/* ---- bench_moe.c ---- */

/* bench_moe_figures fills the MoE figures: two nodes, one in-process client layer. */
void bench_moe_figures(bench *b);

/* ---- bench_report.c ---- */

/* One target of issue 12 ("Training at the hardware's limit"): measured against bound. */
#define BENCH_MAX_TARGETS 16
typedef struct {
    char name[160];
    double measured, bound;
    int at_most;                 /* 1: measured <= bound passes; 0: measured >= bound */
    int have;                    /* 0: not measured in this run ("n/a") */
    const char *unit;
} bench_target;

/* bench_targets fills t[0..BENCH_MAX_TARGETS) with the targets of issue 12 from b and returns how many. */
int bench_targets(const bench *b, bench_target *t);
/* bench_target_result returns "PASS", "MISS", or "n/a" (not measured). */
const char *bench_target_result(const bench_target *t);
/* bench_loop_core_share returns the node's loop thread, in cores, at the fwd+bwd rate of workers threads
 * for batch bench_batches[i]: its CPU per training sample (the breakdown) times the kernel's fwd+bwd rate
 * per thread (measured on b->threads) times workers; 0 without a breakdown. */
double bench_loop_core_share(const bench *b, int i, int workers);
/* bench_cpu_name writes the CPU's model name (or "unknown") into buf. */
void bench_cpu_name(char *buf, size_t cap);
/* bench_write_json writes every figure of b as JSON to path; 0 or DMOE_EIO. */
int bench_write_json(const bench *b, const char *path, const char *cpu, long cores);
/* bench_print_table prints the figures as a table on stdout. */
void bench_print_table(const bench *b, const char *cpu, long cores);

#endif
