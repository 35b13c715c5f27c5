/* dmoe-bench -- performance you can see: the ffn expert measured against the machine's own limit.
 *
 *   dmoe-bench [--node build/dmoe-node] [--out build/bench/results.json] [--seconds 1] [--num_workers N]
 *
 * In one run, on the same thread count throughout (the node's pool size, OpenBLAS single-threaded in
 * each thread, as in the node):
 *   1. the limit: plain cblas_sgemm on the ffn shapes (B x H x 4H, then B x 4H x H) -> GFLOP/s;
 *   2. the kernel in-process: kern_ffn forward, and forward + backward, one batch of B rows split across
 *      the threads (each thread computes its share, as the node's pool would run parallel batches);
 *   3. the node over loopback TCP: build/dmoe-node as a subprocess (1 expert), driven in-process by
 *      loadgen_run with several concurrent clients; then one client with 1 row for latency;
 *   4. memory: a node with 5 experts, its VmRSS idle and after a forward/backward load; the same after
 *      a counted load on 2 and on 14 workers;
 *   5. the DHT: lookups on 1024 in-memory nodes in virtual time (dht_memnet_measure: the lookup times
 *      are network time, hops times the link latency, whatever the machine's speed);
 *   6. the Mixture-of-Experts layer, as in the tutorial: two nodes (5 experts expert.[0:5], then 10 from
 *      expert.[5:250] joining the first through the DHT), and in-process a client-mode DHT peer with a
 *      MoE layer (grid 250, k_best 2) timing forwards of 3 and 256 rows and training steps of 256 and 3
 *      rows (forward, backward through the experts -- which step their own weights -- and an Adam step
 *      of the gating); the median and the 99th percentile of a fixed number of calls, and each
 *      training step against the sum of its parts measured around it;
 *   7. node identities: Ed25519 signatures and verifications per second (the DHT's proofs of ids);
 *   8. signed records: the signature checks' share of an expert lookup (bench_record.c).
 * Each in-process figure is the best of 3 runs (the least disturbed by other work on the machine).
 * It prints a table (with kernel efficiency = kernel forward FLOP rate / gemm FLOP rate, and node/kernel
 * ratios) ending with the targets of issue 12 (measured, bound, PASS/MISS), and writes every figure as
 * JSON to --out. A benchmark, not a test: nothing is asserted, and
 * the whole run takes a few minutes at most on 2 cores.
 *
 * Threads: the measuring threads of steps 1-2 are joined before step 3; each node is a child process
 * that dies with the bench (PR_SET_PDEATHSIG) and is always stopped with SIGTERM and waited for.
 * Exits 0, 1 when a step failed (the node would not start, a load run had errors), 2 on bad flags or bad
 * local input (--out cannot be written, --node is not a program), checked before measuring.
 *
 * This file reads the flags and runs the steps in order; the steps are cmd/bench/ (see bench.h):
 * bench_kernel.c (1-2), bench_node.c (3-4), bench_moe.c (6), bench_ident.c (7), bench_record.c (8), bench_report.c (the
 * table and the JSON);
 * step 5 is dht_memnet_measure.
 */
#include <cblas.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/dht/io/dht_memnet.h"
#include "cmd/bench/bench.h"
#include "kernels/kern_classes.h"
#include "runtime/rt_mem.h"
#include "runtime/files/rt_outfile.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/text/rt_args.h"

int main(int argc, char **argv)
{
    (void)rt_mem_tune();   /* big buffers stay in the heap (runtime/rt_mem.h) */
    bench b = {.seconds = 1.0, .hidden = 512, .node_path = "build/dmoe-node"};
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    b.threads = cores > 0 ? (int)cores : 1;
    const char *out = "build/bench/results.json", *log_level = NULL;
    int skip_node = 0, skip_dht = 0, skip_moe = 0;
    const rt_arg flags[] = {
        {"node", ARG_STR, &b.node_path, "the dmoe-node program to measure", "Bench", NULL, "PATH"},
        {"out", ARG_STR, &out, "where to write the figures as JSON", "Bench", NULL, "PATH"},
        {"seconds", ARG_F64, &b.seconds, "seconds per in-process figure (node figures take twice that)", "Bench", NULL, "S"},
        {"num_workers", ARG_INT, &b.threads, "threads for the kernel figures and the node's pool (default: cores)", "Bench"},
        {"hidden_dim", ARG_INT, &b.hidden, "the ffn's hidden size", "Bench"},
        {"skip_node", ARG_FLAG, &skip_node, "leave out the node and memory figures", "Bench"},
        {"skip_dht", ARG_FLAG, &skip_dht, "leave out the DHT figure", "Bench"},
        {"skip_moe", ARG_FLAG, &skip_moe, "leave out the Mixture-of-Experts figures (two nodes)", "Bench"},
        {"log_level", ARG_STR, &log_level, "DEBUG, INFO, WARN or ERROR", "Bench", NULL, "LEVEL"},
    };
    const int nflags = (int)(sizeof flags / sizeof flags[0]);
    char err[256];
    char *pos[1];
    int npos;
    int rc = rt_args_parse(argc, argv, flags, nflags, pos, 0, &npos, err, sizeof err);
    if (rc == RT_ARGS_HELP) { rt_args_usage(stdout, "dmoe-bench [flags]   (figures against the machine's limit)", flags, nflags); return 0; }
    if (rc == RT_ARGS_VERSION) { rt_args_version(stdout, "dmoe-bench"); return 0; }
    if (rc != 0) { fprintf(stderr, "dmoe-bench: %s\n", err); return 2; }
    if (b.threads < 1 || b.threads > 256 || !(b.seconds > 0 && b.seconds <= 60) || b.hidden < 1 || b.hidden > 8192) {
        fprintf(stderr, "dmoe-bench: need 1 <= --num_workers <= 256, 0 < --seconds <= 60, 1 <= --hidden_dim <= 8192\n");
        return 2;
    }
    /* bad local input is found before minutes of measuring: the JSON's path, the node program */
    if (rt_outfile_check(out, err, sizeof err) != 0) { fprintf(stderr, "dmoe-bench: --out: %s\n", err); return 2; }
    if ((!skip_node || !skip_moe) && access(b.node_path, X_OK) != 0) {
        fprintf(stderr, "dmoe-bench: --node %s: %s (build it with make, or give --skip_node --skip_moe)\n", b.node_path,
                strerror(errno));
        return 2;
    }
    if (log_level && rt_log_parse_level(log_level) >= 0) rt_log_set_level(rt_log_parse_level(log_level));
    else if (!getenv("DMOE_LOG")) rt_log_set_level(RT_LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    openblas_set_num_threads(1);   /* as in the node: the threads are the parallelism */

    const kern_class *cls = kern_expert_find("ffn");
    kern_model m;
    memset(&m, 0, sizeof m);
    kern_config kc = {.hidden_dim = b.hidden};
    if (!cls || cls->setup(&m, &kc) != 0) { fprintf(stderr, "dmoe-bench: no ffn expert class\n"); return 1; }
    m.cls = cls;
    float *params = malloc(m.n_floats * sizeof(float));
    if (!params) { fprintf(stderr, "dmoe-bench: out of memory\n"); return 1; }
    cls->init(&m, params, 1);

    char cpu[256];
    bench_cpu_name(cpu, sizeof cpu);
    fprintf(stderr, "dmoe-bench: measuring (about %.0f s) ",
            15 * b.seconds + (skip_node ? 0 : 28 * b.seconds + 12) + (skip_dht ? 0 : 8) + (skip_moe ? 0 : 25));
    double flop_row = 16.0 * b.hidden * (double)b.hidden;
    for (int i = 0; i < NB; i++) {
        b.gemm_gflops[i] = bench_measure(&b, W_GEMM, NULL, NULL, bench_batches[i]) * flop_row / 1e9;
        b.kfwd[i] = bench_measure(&b, W_FWD, &m, params, bench_batches[i]);
        b.kfwdbwd[i] = bench_measure(&b, W_FWDBWD, &m, params, bench_batches[i]);
        fprintf(stderr, ".");
    }
    bench_kernel_latency(&b, &m, params);
    bench_optimizer_latency(&b, &m, params);
    if (!skip_node) {
        bench_node_figures(&b);
        bench_memory_figures(&b, &m);
    }
    if (!skip_dht) {
        rc = dht_memnet_measure(BENCH_DHT_NODES, BENCH_DHT_LOOKUPS, BENCH_DHT_LATENCY_MS, 7, &b.dht);
        if (rc == 0) b.have_dht = 1;
        else { fprintf(stderr, "dmoe-bench: dht measurement failed: %s\n", dmoe_strerror(rc)); b.failures++; }
    }
    if (!skip_moe) bench_moe_figures(&b);
    bench_ident_figures(&b);
    if (!skip_dht) bench_record_figures(&b);
    fprintf(stderr, " done\n");
    free(params);
    bench_print_table(&b, cpu, cores);
    rc = bench_write_json(&b, out, cpu, cores);
    if (rc) { fprintf(stderr, "dmoe-bench: cannot write %s: %s\n", out, strerror(errno)); return 1; }
    printf("figures written to %s\n", out);
    rt_args_free(flags, nflags);
    return b.failures ? 1 : 0;
}
