/* bench_report.c -- dmoe-bench's output (see bench.h): the table on stdout (with kernel efficiency =
 * kernel forward FLOP rate / gemm FLOP rate, and node/kernel ratios) and every figure as JSON in one
 * file. Reads the figures only.
 */
#include <stdio.h>
#include <string.h>

#include "cmd/bench/bench.h"
#include "runtime/rt_err.h"

void bench_cpu_name(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        char *p = strchr(line, ':');
        if (!p) continue;
        p += 1 + strspn(p + 1, " \t");
        p[strcspn(p, "\r\n")] = 0;
        snprintf(buf, cap, "%s", p);
        break;
    }
    if (f) fclose(f);
}

static void json_batches(FILE *f, const char *key, const double *v, int last)
{
    fprintf(f, "    \"%s\": {", key);
    for (int i = 0; i < NB; i++) fprintf(f, "%s\"%lld\": %.1f", i ? ", " : "", (long long)bench_batches[i], v[i]);
    fprintf(f, "}%s\n", last ? "" : ",");
}

/* The breakdown of the node's runs of one kind (fwd or fwdbwd), by batch size, in us per sample. */
static void json_split(FILE *f, const char *key, const bench_split *s, int last)
{
    fprintf(f, "    \"%s\": {", key);
    for (int i = 0; i < NB; i++)
        fprintf(f, "%s\"%lld\": {\"loop_us\": %.2f, \"workers_us\": %.2f, \"kernel_us\": %.2f, \"optimizer_us\": %.2f, "
                   "\"optimizer_wall_us\": %.2f, \"step_wait_us\": %.2f, \"copy_in_us\": %.2f, \"fill_us\": %.2f, "
                   "\"params_after_reply_us\": %.2f, \"reply_us\": %.2f, \"loop_busy_pct\": %.1f, \"warm_s\": %.1f}",
                i ? ",\n      " : "\n      ", (long long)bench_batches[i], s[i].loop_us, s[i].workers_us, s[i].kernel_us,
                s[i].optimizer_us, s[i].optimizer_wall_us, s[i].step_wait_us, s[i].copy_in_us, s[i].fill_us,
                s[i].params_us, s[i].reply_us, s[i].loop_busy_pct, s[i].warm_s);
    fprintf(f, "}%s\n", last ? "" : ",");
}

/* A MoE training step's parts (bench_moe_parts), in ms per step. */
static void json_moe_parts(FILE *f, const char *key, const bench_moe_parts *p)
{
    if (!p->have) return;
    double sum = bench_moe_parts_sum(p);
    fprintf(f, ",\n  \"%s\": {\"step_mean\": %.2f, \"beam_search\": %.2f, \"expert_kernels\": %.2f, "
               "\"expert_optimizer_steps\": %.2f, \"gating_optimizer_step\": %.2f, \"client_loop\": %.2f, "
               "\"sum_of_parts\": %.2f, \"step_over_sum\": %.2f}",
            key, p->step, p->search, p->expert_kernels, p->expert_steps, p->gating_step, p->client_loop, sum,
            sum > 0 ? p->step / sum : 0.0);
}

/* ---- the targets of issue 12 ---- */

const char *bench_target_result(const bench_target *t)
{
    if (!t->have) return "n/a";
    return (t->at_most ? t->measured <= t->bound : t->measured >= t->bound) ? "PASS" : "MISS";
}

static void target(bench_target *t, int *n, const char *name, int have, double measured, int at_most, double bound,
                   const char *unit)
{
    bench_target *x = &t[(*n)++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->have = have;
    x->measured = have ? measured : 0;
    x->at_most = at_most;
    x->bound = bound;
    x->unit = unit;
}

double bench_loop_core_share(const bench *b, int i, int workers)
{
    if (!b->have_split || b->threads < 1) return 0;
    double rate = b->kfwdbwd[i] / (double)b->threads * (double)workers;   /* the kernel's per-thread rate, scaled */
    return b->split_fb[i].loop_us * rate / 1e6;
}

int bench_targets(const bench *b, bench_target *t)
{
    int n = 0;
    char name[160];
    const bench_moe_parts *p3 = &b->moe_parts[0], *p256 = &b->moe_parts[1];
    double s3 = bench_moe_parts_sum(p3), s256 = bench_moe_parts_sum(p256);
    target(t, &n, "MoE training step of 3 rows / sum of its parts", b->have_moe && p3->have && s3 > 0,
           s3 > 0 ? p3->step / s3 : 0, 1, 1.3, "x");
    target(t, &n, "MoE training step of 256 rows / sum of its parts", b->have_moe && p256->have && s256 > 0,
           s256 > 0 ? p256->step / s256 : 0, 1, 1.3, "x");
    for (int i = 1; i < NB; i++) {
        snprintf(name, sizeof name, "node fwd+bwd / kernel fwd+bwd, batch %lld, %d workers%s", (long long)bench_batches[i],
                 b->threads, b->threads == 2 ? "" : " (set for 2)");
        target(t, &n, name, b->have_node && b->kfwdbwd[i] > 0, b->kfwdbwd[i] > 0 ? 100.0 * b->nfwdbwd[i] / b->kfwdbwd[i] : 0,
               0, 90.0, "%");
    }
    target(t, &n, "1-row backward reply p50 <= kernel backward p50 + 150 us", b->have_node && b->kbwd_b1_p50 > 0,
           b->lat_bwd_p50, 1, b->kbwd_b1_p50 + 150.0, "us");
    target(t, &n, "1-row forward round trip p50 <= kernel forward p50 + 100 us", b->have_node && b->kfwd_b1_p50 > 0,
           b->lat_fwd_p50, 1, b->kfwd_b1_p50 + 100.0, "us");
    snprintf(name, sizeof name, "memory after load, %d workers / %d workers", BENCH_MEM_WORKERS_HI, BENCH_MEM_WORKERS_LO);
    target(t, &n, name, b->have_mem_workers, b->have_mem_workers ? b->rss_workers_mb[1] / b->rss_workers_mb[0] : 0, 1,
           1.3, "x");
    double worst = 0;
    for (int i = 1; i < NB; i++) {
        double c = bench_loop_core_share(b, i, BENCH_MEM_WORKERS_HI);
        worst = c > worst ? c : worst;
    }
    snprintf(name, sizeof name, "loop thread at the %d-worker rate (extrapolated), worst of batch 64-1024",
             BENCH_MEM_WORKERS_HI);
    target(t, &n, name, b->have_split, worst, 1, 0.5, "cores");
    return n;
}

int bench_write_json(const bench *b, const char *path, const char *cpu, long cores)
{
    FILE *f = fopen(path, "w");
    if (!f) return DMOE_EIO;
    double flop_row = 16.0 * b->hidden * (double)b->hidden;
    double eff[NB];
    for (int i = 0; i < NB; i++) eff[i] = b->gemm_gflops[i] > 0 ? 100.0 * b->kfwd[i] * flop_row / 1e9 / b->gemm_gflops[i] : 0;
    fprintf(f, "{\n  \"machine\": {\"cores\": %ld, \"cpu\": ", cores);
    fprintf(f, "\"");
    for (const char *p = cpu; *p; p++)
        if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) fputc(*p, f);
    fprintf(f, "\"},\n  \"threads\": {\"pool\": %d, \"openblas\": 1},\n", b->threads);
    fprintf(f, "  \"ffn_h%d\": {\n", b->hidden);
    json_batches(f, "gemm_gflops", b->gemm_gflops, 0);
    json_batches(f, "kernel_fwd_samples_per_s", b->kfwd, 0);
    json_batches(f, "kernel_fwdbwd_samples_per_s", b->kfwdbwd, 0);
    json_batches(f, "kernel_fwd_efficiency_pct", eff, 0);
    if (b->have_node) {
        json_batches(f, "node_fwd_samples_per_s", b->nfwd, 0);
        json_batches(f, "node_fwdbwd_samples_per_s", b->nfwdbwd, 0);
        fprintf(f, "    \"node_clients\": %d,\n", BENCH_CLIENTS);
        fprintf(f, "    \"latency_fwd_b1_us\": {\"p50\": %.0f, \"p99\": %.0f},\n", b->lat_fwd_p50, b->lat_fwd_p99);
        fprintf(f, "    \"latency_fwd_b1_one_cpu_us\": {\"p50\": %.0f, \"p99\": %.0f},\n", b->lat_fwd_1cpu_p50,
                b->lat_fwd_1cpu_p99);
        for (int k = 0; k < 2; k++)
            fprintf(f, "    \"latency_fwd_b1%s_node_part_us\": {\"arrival_to_reply\": %.1f, \"kernel\": %.1f, "
                    "\"loop_cpu\": %.1f},\n", k ? "_one_cpu" : "", b->rtt_part[k].node_us, b->rtt_part[k].kernel_us,
                    b->rtt_part[k].loop_us);
        fprintf(f, "    \"latency_bwd_b1_us\": {\"p50\": %.0f, \"p99\": %.0f},\n", b->lat_bwd_p50, b->lat_bwd_p99);
        fprintf(f, "    \"latency_train_b1_us\": {\"forward_p50\": %.0f, \"backward_p50\": %.0f},\n", b->lat_train_fwd_p50,
                b->lat_train_bwd_p50);
    }
    fprintf(f, "    \"adam_step_us\": {\"p50\": %.0f},\n", b->adam_step_p50);
    fprintf(f, "    \"kernel_bwd_b1_us\": {\"p50\": %.0f, \"p99\": %.0f},\n", b->kbwd_b1_p50, b->kbwd_b1_p99);
    fprintf(f, "    \"kernel_bwd_saved_b1_us\": {\"p50\": %.0f, \"p99\": %.0f},\n", b->kbwd_saved_b1_p50, b->kbwd_saved_b1_p99);
    fprintf(f, "    \"kernel_fwd_b1_us\": {\"p50\": %.0f, \"p99\": %.0f}\n  }", b->kfwd_b1_p50, b->kfwd_b1_p99);
    if (b->have_split) {
        fprintf(f, ",\n  \"breakdown\": {\n    \"units\": \"microseconds per sample (a training sample: one forward and one "
                   "backward row), %d clients, expert.0 of the node above\",\n", BENCH_CLIENTS);
        fprintf(f, "    \"loop_us_per_request\": %.2f,\n    \"loop_us_per_mib\": %.1f,\n", b->loop_us_per_req,
                b->loop_us_per_mib);
        json_split(f, "fwd", b->split_fwd, 0);
        json_split(f, "fwdbwd", b->split_fb, 1);
        fprintf(f, "  }");
    }
    if (b->have_dht)
        fprintf(f, ",\n  \"dht\": {\"nodes\": %zu, \"lookups\": %zu, \"latency_ms_each_way\": %d, \"lookup_hops_p50\": %d, "
                   "\"lookup_hops_p99\": %d, \"lookup_ms_p50\": %.2f, \"lookup_ms_p99\": %.2f, \"rpcs_per_lookup\": %.2f, "
                   "\"success_rate\": %.4f}",
                b->dht.nodes, b->dht.lookups, BENCH_DHT_LATENCY_MS, b->dht.hops_p50, b->dht.hops_p99, b->dht.lat_p50_ms,
                b->dht.lat_p99_ms, b->dht.rpcs_per_lookup, b->dht.lookups ? (double)b->dht.found / (double)b->dht.lookups : 0);
    if (b->have_ident)
        fprintf(f, ",\n  \"identity\": {\"ed25519_signs_per_s\": %.0f, \"ed25519_verifies_per_s\": %.0f, "
                   "\"verify_us_per_lookup_at_most\": %.1f}",
                b->sign_per_s, b->verify_per_s, b->have_dht ? b->dht.rpcs_per_lookup * 1e6 / b->verify_per_s : 0.0);
    if (b->have_record)
        fprintf(f, ",\n  \"signed_records\": {\"lookup_cpu_us\": %.1f, \"verifies_per_lookup\": %.2f, "
                   "\"record_verify_us\": %.1f, \"verify_share_of_lookup_cpu\": %.3f, "
                   "\"verify_share_of_networked_lookup\": %.4f}",
                b->rec_lookup_us, b->rec_verifies_per_lookup, b->rec_verify_us, b->rec_verify_share,
                b->have_dht && b->dht.lat_p50_ms > 0
                    ? b->rec_verifies_per_lookup * b->rec_verify_us / (b->dht.lat_p50_ms * 1000.0) : 0.0);
    if (b->have_mem)
        fprintf(f, ",\n  \"memory_mb\": {\"node_idle_5x_h%d\": %.1f, \"node_loaded_5x_h%d\": %.1f, \"node_peak_5x_h%d\": %.1f, "
                   "\"node_settled_5x_h%d\": %.1f, \"weights_and_optimizer_5x_h%d\": %.1f}",
                b->hidden, b->rss_idle_mb, b->hidden, b->rss_loaded_mb, b->hidden, b->hwm_loaded_mb, b->hidden,
                b->rss_settled_mb, b->hidden, b->weights_mb);
    if (b->have_moe)
        fprintf(f, ",\n  \"moe\": {\"hidden\": %d, \"grid\": %d, \"k_best\": %d, \"live_experts\": %d, "
                   "\"fwd_b3_ms_p50\": %.2f, \"fwd_b3_ms_p99\": %.2f, \"fwd_b256_ms_p50\": %.2f, \"fwd_b256_ms_p99\": %.2f, "
                   "\"train_step_b256_ms_p50\": %.2f, \"train_step_b256_ms_p99\": %.2f, "
                   "\"train_step_b3_ms_p50\": %.2f, \"train_step_b3_ms_p99\": %.2f, \"calls\": [%d, %d, %d, %d]}",
                b->hidden, MOE_GRID, MOE_K_BEST, b->moe_experts, b->moe_fwd3[0], b->moe_fwd3[1], b->moe_fwd256[0],
                b->moe_fwd256[1], b->moe_train256[0], b->moe_train256[1], b->moe_train3[0], b->moe_train3[1],
                b->moe_n[0], b->moe_n[1], b->moe_n[2], b->moe_n[3]);
    if (b->have_moe) {
        json_moe_parts(f, "moe_train_step_b3_parts_ms", &b->moe_parts[0]);
        json_moe_parts(f, "moe_train_step_parts_ms", &b->moe_parts[1]);
    }
    if (b->have_mem_workers)
        fprintf(f, ",\n  \"memory_by_workers_mb\": {\"node_loaded_5x_h%d_%d_workers\": %.1f, "
                   "\"node_loaded_5x_h%d_%d_workers\": %.1f, \"ratio\": %.3f, \"at_load_end\": [%.1f, %.1f], "
                   "\"peak\": [%.1f, %.1f], \"peak_ratio\": %.3f}",
                b->hidden, BENCH_MEM_WORKERS_LO, b->rss_workers_mb[0], b->hidden, BENCH_MEM_WORKERS_HI,
                b->rss_workers_mb[1], b->rss_workers_mb[1] / b->rss_workers_mb[0], b->rss_workers_end_mb[0],
                b->rss_workers_end_mb[1], b->hwm_workers_mb[0], b->hwm_workers_mb[1],
                b->hwm_workers_mb[0] > 0 ? b->hwm_workers_mb[1] / b->hwm_workers_mb[0] : 0.0);
    bench_target t[BENCH_MAX_TARGETS];
    int nt = bench_targets(b, t);
    fprintf(f, ",\n  \"targets\": [");
    for (int i = 0; i < nt; i++)
        fprintf(f, "%s\n    {\"target\": \"%s\", \"measured\": %.3f, \"bound\": %.3f, \"unit\": \"%s\", \"result\": \"%s\"}",
                i ? "," : "", t[i].name, t[i].measured, t[i].bound, t[i].unit, bench_target_result(&t[i]));
    fprintf(f, "\n  ]");
    fprintf(f, "\n}\n");
    return fclose(f) == 0 ? 0 : DMOE_EIO;
}

static void row(const char *name, const double *v, const char *fmt)
{
    printf("  %-30s", name);
    for (int i = 0; i < NB; i++) {
        if (v[i] > 0) printf(fmt, v[i]);
        else printf("%12s", "-");
    }
    printf("\n");
}

void bench_print_table(const bench *b, const char *cpu, long cores)
{
    double flop_row = 16.0 * b->hidden * (double)b->hidden;
    double eff[NB], eff_fb[NB], rf[NB], rfb[NB];
    for (int i = 0; i < NB; i++) {
        eff[i] = b->gemm_gflops[i] > 0 ? 100.0 * b->kfwd[i] * flop_row / 1e9 / b->gemm_gflops[i] : 0;
        eff_fb[i] = b->gemm_gflops[i] > 0 ? 100.0 * b->kfwdbwd[i] * 3.0 * flop_row / 1e9 / b->gemm_gflops[i] : 0;
        rf[i] = b->kfwd[i] > 0 ? 100.0 * b->nfwd[i] / b->kfwd[i] : 0;
        rfb[i] = b->kfwdbwd[i] > 0 ? 100.0 * b->nfwdbwd[i] / b->kfwdbwd[i] : 0;
    }
    printf("\ndmoe-bench: %s, %ld cores; %d kernel threads (= the node's --num_workers), OpenBLAS 1 thread each\n",
           cpu, cores, b->threads);
    printf("ffn, hidden %d (%.1f MFLOP per row forward)\n", b->hidden, flop_row / 1e6);
    printf("  %-30s", "batch rows");
    for (int i = 0; i < NB; i++) printf("%12lld", (long long)bench_batches[i]);
    printf("\n");
    row("BLAS limit, GFLOP/s", b->gemm_gflops, "%12.1f");
    row("kernel fwd, samples/s", b->kfwd, "%12.0f");
    row("  efficiency vs gemm, %", eff, "%12.1f");
    row("kernel fwd+bwd, samples/s", b->kfwdbwd, "%12.0f");
    row("  efficiency vs gemm, %", eff_fb, "%12.1f");
    if (b->have_node) {
        char name[64];
        snprintf(name, sizeof name, "node fwd (%d clients), samples/s", BENCH_CLIENTS);
        row(name, b->nfwd, "%12.0f");
        row("  node / kernel, %", rf, "%12.1f");
        row("node fwd+bwd, samples/s", b->nfwdbwd, "%12.0f");
        row("  node / kernel, %", rfb, "%12.1f");
        printf("  latency, 1 client, 1 row, forwards only: p50 %.0f us, p99 %.0f us\n", b->lat_fwd_p50, b->lat_fwd_p99);
        printf("  the same, the node's threads and the client on one CPU: p50 %.0f us, p99 %.0f us (no wake-up\n"
               "  crosses CPUs)\n", b->lat_fwd_1cpu_p50, b->lat_fwd_1cpu_p99);
        for (int k = 0; k < 2; k++) {
            const bench_rtt_part *q = &b->rtt_part[k];
            if (q->have)
                printf("  %s, the node's part (means): arrival to reply %.0f us, of it the kernel %.0f us; loop\n"
                       "  thread CPU %.0f us per request\n", k ? "on one CPU" : "forwards only", q->node_us, q->kernel_us,
                       q->loop_us);
        }
        printf("  latency, 1 client, 1 row, forward then its backward (with handle): forward p50 %.0f us, "
               "backward p50 %.0f us, p99 %.0f us\n", b->lat_train_fwd_p50, b->lat_bwd_p50, b->lat_bwd_p99);
    }
    if (b->have_split) {
        double v[11][NB];
        for (int i = 0; i < NB; i++) {
            const bench_split *s = &b->split_fb[i];
            double row[11] = {s->loop_us, s->copy_in_us, s->reply_us, s->workers_us, s->kernel_us, s->optimizer_us,
                              s->step_wait_us, s->loop_busy_pct, s->optimizer_wall_us, s->fill_us, s->params_us};
            for (int k = 0; k < 11; k++) v[k][i] = row[k];
        }
        printf("  where a training sample's time goes (node fwd+bwd above), us per sample:\n");
        row("    loop thread CPU", v[0], "%12.2f");
        row("      building batches", v[1], "%12.2f");
        row("      building replies", v[2], "%12.2f");
        row("    worker threads CPU", v[3], "%12.2f");
        row("      kernels (jobs on workers)", v[4], "%12.2f");
        row("        weight grads after reply", v[10], "%12.2f");
        row("      optimizer (jobs on workers)", v[5], "%12.2f");
        row("      copying rows into batches", v[9], "%12.2f");
        row("    optimizer steps, reply to end", v[8], "%12.2f");
        row("    waiting for a running step", v[6], "%12.2f");
        row("    loop thread busy, % of wall", v[7], "%12.1f");
        printf("  loop thread (all runs, fitted): %.1f us per request + %.1f us per MiB\n", b->loop_us_per_req,
               b->loop_us_per_mib);
    }
    printf("  in-process, 1 thread: kernel forward of 1 row p50 %.0f us, p99 %.0f us; backward of 1 row (no step)\n"
           "  p50 %.0f us, p99 %.0f us, from saved activations p50 %.0f us; one Adam step p50 %.0f us\n",
           b->kfwd_b1_p50, b->kfwd_b1_p99, b->kbwd_b1_p50, b->kbwd_b1_p99, b->kbwd_saved_b1_p50, b->adam_step_p50);
    printf("  notes: the limit is cblas_sgemm on the ffn's two shapes (sgemv for 1 row, as the kernel does); fwd+bwd\n"
           "  counts 3x the forward's FLOPs: the backward takes the forward's saved activations (in-process and\n"
           "  in the node, whose load sends each backward with its forward's handle). The node merges the\n"
           "  requests waiting for an expert into one batch and splits big batches across its workers; an\n"
           "  expert's backwards run one at a time; each replies once its input gradients exist (the ffn's weight\n"
           "  gradients follow on the same worker), then takes an Adam step over all its parameters in ranges\n"
           "  across the workers before the expert's next batch starts.\n");
    if (b->have_mem)
        printf("memory, node with %d ffn experts (hidden %d): idle %.1f MiB, as the load ends %.1f MiB (peak %.1f MiB), "
               "%.1f s later %.1f MiB;\n  weights + grads + Adam state %.1f MiB\n",
               BENCH_MEM_EXPERTS, b->hidden, b->rss_idle_mb, b->rss_loaded_mb, b->hwm_loaded_mb,
               BENCH_MEM_SETTLE_MS / 1000.0, b->rss_settled_mb, b->weights_mb);
    if (b->have_dht)
        printf("dht, %zu in-memory nodes (%d ms each way): %zu/%zu lookups found, hops p50 %d p99 %d, "
               "%.1f ms p50, %.1f ms p99, %.1f RPCs per lookup\n",
               b->dht.nodes, BENCH_DHT_LATENCY_MS, b->dht.found, b->dht.lookups, b->dht.hops_p50, b->dht.hops_p99,
               b->dht.lat_p50_ms, b->dht.lat_p99_ms, b->dht.rpcs_per_lookup);
    if (b->have_ident) {
        printf("identity (Ed25519, one thread): %.0f signatures/s, %.0f verifications/s (%.1f us each)", b->sign_per_s,
               b->verify_per_s, 1e6 / b->verify_per_s);
        if (b->have_dht)
            printf("; a lookup of %.1f RPCs verifies at most that many proofs: <= %.0f us of CPU", b->dht.rpcs_per_lookup,
                   b->dht.rpcs_per_lookup * 1e6 / b->verify_per_s);
        printf("\n");
    }
    if (b->have_record)
        printf("signed records: an expert lookup costs %.0f us of CPU (16 in-memory nodes), of which %.2f record "
               "checks (%.0f us each) take %.0f%%; %.1f%% of a %.1f ms networked lookup\n",
               b->rec_lookup_us, b->rec_verifies_per_lookup, b->rec_verify_us, 100.0 * b->rec_verify_share,
               b->have_dht && b->dht.lat_p50_ms > 0
                   ? 100.0 * b->rec_verifies_per_lookup * b->rec_verify_us / (b->dht.lat_p50_ms * 1000.0) : 0.0,
               b->dht.lat_p50_ms);
    if (b->have_moe) {
        printf("moe, grid %d, k_best %d over %d live ffn experts (hidden %d) on 2 nodes, one client:\n", MOE_GRID,
               MOE_K_BEST, b->moe_experts, b->hidden);
        printf("  forward 3 rows p50 %.2f ms p99 %.2f ms;  forward 256 rows p50 %.2f ms p99 %.2f ms;\n"
               "  training step (forward, backward, Adam on the gating) 3 rows p50 %.2f ms p99 %.2f ms;\n"
               "  256 rows p50 %.2f ms p99 %.2f ms\n",
               b->moe_fwd3[0], b->moe_fwd3[1], b->moe_fwd256[0], b->moe_fwd256[1], b->moe_train3[0], b->moe_train3[1],
               b->moe_train256[0], b->moe_train256[1]);
        static const int rows[2] = {3, 256};
        for (int k = 0; k < 2; k++) {
            const bench_moe_parts *p = &b->moe_parts[k];
            if (!p->have) continue;
            double sum = bench_moe_parts_sum(p);
            printf("  training step of %d rows, mean %.2f ms, against its parts (ms per step): beam search %.2f,\n"
                   "    expert kernels %.2f, expert optimizer steps %.2f, gating Adam %.2f, client loop %.2f;\n"
                   "    sum %.2f ms, step / sum %.2f\n",
                   rows[k], p->step, p->search, p->expert_kernels, p->expert_steps, p->gating_step, p->client_loop, sum,
                   sum > 0 ? p->step / sum : 0.0);
        }
        printf("  notes: the experts' parts are summed over every expert (they run in parallel on 2 nodes); the\n"
               "  search's wall time includes the client's CPU for the DHT's replies, which client loop counts too.\n");
    }
    if (b->have_mem_workers)
        printf("memory, node with %d ffn experts after the same load (%.1f s later; as it ended; peak): %d workers "
               "%.1f; %.1f; %.1f MiB, %d workers %.1f; %.1f; %.1f MiB\n",
               BENCH_MEM_EXPERTS, BENCH_MEM_SETTLE_MS / 1000.0, BENCH_MEM_WORKERS_LO, b->rss_workers_mb[0],
               b->rss_workers_end_mb[0], b->hwm_workers_mb[0], BENCH_MEM_WORKERS_HI, b->rss_workers_mb[1],
               b->rss_workers_end_mb[1], b->hwm_workers_mb[1]);
    if (b->have_split) {
        printf("loop thread at %d workers (its CPU per training sample x the kernel's fwd+bwd rate per thread x %d):",
               BENCH_MEM_WORKERS_HI, BENCH_MEM_WORKERS_HI);
        for (int i = 1; i < NB; i++)
            printf(" batch %lld %.2f", (long long)bench_batches[i], bench_loop_core_share(b, i, BENCH_MEM_WORKERS_HI));
        printf(" cores\n");
    }
    bench_target t[BENCH_MAX_TARGETS];
    int nt = bench_targets(b, t);
    printf("targets (issue 12):\n");
    for (int i = 0; i < nt; i++) {
        if (t[i].have)
            printf("  %-4s %-74s %9.2f %-5s (%s %.2f)\n", bench_target_result(&t[i]), t[i].name, t[i].measured, t[i].unit,
                   t[i].at_most ? "<=" : ">=", t[i].bound);
        else
            printf("  %-4s %-74s not measured in this run\n", bench_target_result(&t[i]), t[i].name);
    }
}
