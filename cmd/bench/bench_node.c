/* bench_node.c -- dmoe-bench's node figures (see bench.h): build/dmoe-node as a subprocess on loopback
 * (rt_spawn: it dies with the bench; node_banner_wait: its address once it serves), driven in-process by
 * loadgen_run with BENCH_CLIENTS concurrent clients per batch size, then one client with 1 row for
 * latency; and a node with BENCH_MEM_EXPERTS experts for its memory (VmRSS idle and after a load).
 * Every node started here is stopped here (bench_node_stop), SIGTERM first.
 */
#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/load/loadgen.h"
#include "actors/node/node_banner.h"
#include "cmd/bench/bench.h"
#include "runtime/rt_err.h"
#include "runtime/proc/rt_spawn.h"

int bench_node_start(bench *b, bench_child *c, int n_experts, int workers, const char *const *extra)
{
    memset(c, 0, sizeof *c);
    snprintf(c->log, sizeof c->log, "/tmp/dmoe-bench-node-XXXXXX");
    int fd = mkstemp(c->log);
    if (fd < 0) return DMOE_EIO;
    char nworkers[16], experts[16], hidden[16];
    snprintf(nworkers, sizeof nworkers, "%d", workers > 0 ? workers : b->threads);
    snprintf(experts, sizeof experts, "%d", n_experts);
    snprintf(hidden, sizeof hidden, "%d", b->hidden);
    const char *argv[32] = {b->node_path, "--expert_cls", "ffn", "--hidden_dim", hidden, "--num_experts", experts,
                            "--num_workers", nworkers, "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--log_level", "INFO"};
    int na = 13;
    for (int i = 0; extra && extra[i] && na < 31; i++) argv[na++] = extra[i];
    argv[na] = NULL;
    pid_t pid = rt_spawn(b->node_path, argv, RT_SPAWN_INHERIT, fd, fd);   /* dies with the bench */
    close(fd);
    if (pid < 0) { unlink(c->log); return DMOE_EIO; }
    c->pid = pid;
    node_banner nb;
    int rc = node_banner_wait(c->log, pid, NODE_START_S, &nb);
    if (rc == 0) {
        c->addr = nb.addr;
        snprintf(c->dht_maddr, sizeof c->dht_maddr, "%s", nb.dht_maddr);
        return 0;
    }
    if (rc == DMOE_EIO) c->pid = 0;   /* it exited (and is reaped) */
    fprintf(stderr, "dmoe-bench: the node did not start; its log (%s):\n", c->log);
    FILE *f = fopen(c->log, "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) fputs(line, stderr);
    if (f) fclose(f);
    return DMOE_EIO;
}

void bench_node_stop(bench_child *c)
{
    if (c->pid > 0) rt_spawn_stop(c->pid, SIGTERM, NODE_STOP_S);
    c->pid = 0;
    if (c->log[0]) unlink(c->log);
}

/* VmRSS (or VmHWM) of pid in MiB, or -1. */
static double proc_mb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    double mb = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') mb = strtod(line + kl + 1, NULL) / 1024.0;
    if (f) fclose(f);
    return mb;
}

/* Minor page faults of pid so far (its first touches of fresh pages), or -1. */
static long proc_minflt(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');   /* the name may hold spaces; the fields follow its ')' */
    long v = -1;
    /* after ')': state ppid pgrp session tty_nr tpgid flags minflt (fields 3..10) */
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %ld", &v) != 1) return -1;
    return v;
}

/* load_run runs a load of at most max_requests requests (0: no count bound) and seconds, after the load
 * generator's own warm-up of warmup_s (not counted in r). */
static int load_run(bench *b, const wire_maddr *addr, int clients, int64_t batch, double mix, int all, double seconds,
                    double warmup_s, uint64_t max_requests, loadgen_report *r)
{
    static const char *const one[] = {"expert.0", NULL};
    loadgen_cfg c;
    loadgen_default_cfg(&c);
    c.peer = *addr;
    c.clients = clients;
    c.batch_min = c.batch_max = batch;
    c.mix = mix;
    c.all = all;
    c.uids = all ? NULL : one;
    c.duration_s = seconds;
    c.warmup_s = warmup_s;
    c.duration_s += c.warmup_s;
    c.seed = 42;
    c.max_requests = max_requests;
    char err[256];
    int rc = loadgen_run(&c, r, err, sizeof err);
    if (rc) { fprintf(stderr, "dmoe-bench: load failed: %s\n", err); b->failures++; return rc; }
    if (r->errors || r->lost) {
        fprintf(stderr, "dmoe-bench: load batch %lld had %llu errors, %llu lost (%s)\n", (long long)batch,
                (unsigned long long)r->errors, (unsigned long long)r->lost, r->first_error);
        b->failures++;
    }
    return 0;
}

static int load(bench *b, const wire_maddr *addr, int clients, int64_t batch, double mix, int all, double seconds,
                loadgen_report *r)
{
    return load_run(b, addr, clients, batch, mix, all, seconds, seconds > 1.5 ? 0.5 : 0.2, 0, r);
}

/* The breakdown of one load run r of batch rows per request (mix: the share of backwards), from the
 * probes before and after it; 0, or -1 when a probe failed or nothing was answered. */
static int split_of(const bench_probe *before, const bench_probe *after, const loadgen_report *r, int64_t batch,
                    double mix, bench_split *s)
{
    bench_probe d;
    bench_probe_diff(before, after, &d);
    double samples = (double)r->ok * (double)batch * (mix > 0 ? 0.5 : 1.0);
    if (samples <= 0 || r->run_s <= 0) return -1;
    s->loop_us = d.loop_ns / 1e3 / samples;
    s->workers_us = d.others_ns / 1e3 / samples;
    s->kernel_us = d.compute_us / samples;
    s->optimizer_us = d.step_us / samples;
    s->optimizer_wall_us = d.step_wall_us / samples;
    s->step_wait_us = d.step_wait_us / samples;
    s->copy_in_us = d.batch_build_us / samples;
    s->fill_us = d.batch_fill_us / samples;
    s->params_us = d.params_us / samples;
    s->reply_us = d.reply_us / samples;
    s->loop_busy_pct = 100.0 * d.loop_ns / 1e9 / r->run_s;
    s->requests = (double)r->ok;
    s->mib = (double)(r->bytes_sent + r->bytes_received) / 1048576.0;
    return 0;
}

/* Fit the loop thread's CPU time of the runs as a per request + b per MiB (least squares, no constant):
 * the 1-row runs pin the first, the 1024-row runs the second. */
static void fit_loop(bench *b)
{
    double rr = 0, rm = 0, mm = 0, ry = 0, my = 0;
    for (int k = 0; k < 2 * NB; k++) {
        const bench_split *s = k < NB ? &b->split_fwd[k] : &b->split_fb[k - NB];
        int64_t batch = bench_batches[k % NB];
        double y = s->loop_us * s->requests * (double)batch * (k < NB ? 1.0 : 0.5);   /* us of the run */
        rr += s->requests * s->requests;
        rm += s->requests * s->mib;
        mm += s->mib * s->mib;
        ry += s->requests * y;
        my += s->mib * y;
    }
    double det = rr * mm - rm * rm;
    if (det <= 0) return;
    b->loop_us_per_req = (ry * mm - my * rm) / det;
    b->loop_us_per_mib = (my * rr - ry * rm) / det;
}

/* warm runs a figure's own load in slices of BENCH_WARM_SLICE_S times --seconds until the node's
 * memory stops growing (a slice in which it touches fewer than BENCH_WARM_PAGES fresh pages), at most
 * BENCH_WARM_SLICES of them, and returns the seconds it took. A node grows its heap to the working set
 * of a batch size (batches, saved activations, replies) over its first seconds at it, a page fault per
 * fresh 4 KiB (a fresh node at 1,024 rows: about 60,000, 3-6 s on the 2-core machine; here the smaller
 * figures before it have done most of that); the figures are those of a node that has, as one serving
 * for hours. */
static double warm(bench *b, const bench_child *c, int64_t batch, double mix)
{
    double t = 0, slice = BENCH_WARM_SLICE_S * b->seconds;
    long f0 = proc_minflt(c->pid);
    for (int k = 0; f0 >= 0 && k < BENCH_WARM_SLICES; k++) {
        loadgen_report r;
        int rc = load_run(b, &c->addr, BENCH_CLIENTS, batch, mix, 0, slice, 0, 0, &r);   /* no warm-up of its own */
        loadgen_report_free(&r);
        t += slice;
        long f1 = proc_minflt(c->pid);
        if (rc != 0 || f1 < 0 || f1 - f0 < BENCH_WARM_PAGES) break;
        f0 = f1;
    }
    return t;
}

/* One throughput run with its breakdown, once the node is warm: returns the rows per second (0 on
 * failure). */
static double run_split(bench *b, const bench_child *c, int64_t batch, double mix, double secs, bench_split *s,
                        int *probes_ok)
{
    bench_probe before, after;
    loadgen_report r;
    double rate = 0;
    s->warm_s = warm(b, c, batch, mix);
    int pb = bench_probe_take(c->pid, &c->addr, "expert.0", &before);
    if (load(b, &c->addr, BENCH_CLIENTS, batch, mix, 0, secs, &r) == 0) {
        rate = r.rows_per_s;
        if (pb != 0 || bench_probe_take(c->pid, &c->addr, "expert.0", &after) != 0 ||
            split_of(&before, &after, &r, batch, mix, s) != 0)
            *probes_ok = 0;
    } else {
        *probes_ok = 0;
    }
    loadgen_report_free(&r);
    fprintf(stderr, ".");
    return rate;
}

/* pin_to sets the affinity of every thread of process pid (0: only the calling thread) to the one CPU
 * cpu. Returns 0, or -1 when a thread could not be moved. */
static int pin_to(pid_t pid, int cpu)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (pid == 0) return sched_setaffinity(0, sizeof one, &one);
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    if (!d) return -1;
    int rc = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.' && sched_setaffinity((pid_t)atoi(e->d_name), sizeof one, &one) != 0) rc = -1;
    closedir(d);
    return rc;
}

/* One client sending 1-row forwards, one at a time: the round trip's p50 and p99 into lat[0..1], and the
 * node's part of it from the probes around the run into *part. Returns 0, or -1 when the load failed. */
static int rtt_run(bench *b, bench_child *c, double secs, double lat[2], bench_rtt_part *part)
{
    bench_probe before, after, d;
    loadgen_report r;
    int pb = bench_probe_take(c->pid, &c->addr, "expert.0", &before);
    int rc = load(b, &c->addr, 1, 1, 0.0, 0, secs, &r);
    if (rc == 0) { lat[0] = r.lat.p50; lat[1] = r.lat.p99; }
    loadgen_report_free(&r);
    if (rc != 0) return -1;
    if (pb == 0 && bench_probe_take(c->pid, &c->addr, "expert.0", &after) == 0) {
        bench_probe_diff(&before, &after, &d);
        if (d.batches > 0) {
            part->node_us = (d.wait_us + d.batch_us + d.reply_us) / d.batches;
            part->kernel_us = d.compute_us / d.batches;
            part->loop_us = d.loop_ns / 1e3 / d.batches;
            part->have = 1;
        }
    }
    return 0;
}

/* The 1-row forward round trip again with the node's threads and this one on a single CPU (the first
 * this process may use): every wake-up then stays on that CPU. Against lat_fwd it shows what the
 * wake-ups from one CPU to another cost on this machine. Pins the node for good (it is stopped next). */
static void latency_one_cpu(bench *b, bench_child *c, double secs)
{
    cpu_set_t mine;
    if (sched_getaffinity(0, sizeof mine, &mine) != 0) return;
    int cpu = 0;
    while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &mine)) cpu++;
    if (cpu == CPU_SETSIZE || pin_to(c->pid, cpu) != 0 || pin_to(0, cpu) != 0) {
        sched_setaffinity(0, sizeof mine, &mine);
        return;
    }
    double lat[2];
    if (rtt_run(b, c, secs, lat, &b->rtt_part[1]) == 0) { b->lat_fwd_1cpu_p50 = lat[0]; b->lat_fwd_1cpu_p99 = lat[1]; }
    sched_setaffinity(0, sizeof mine, &mine);
}

void bench_node_figures(bench *b)
{
    bench_child c;
    if (bench_node_start(b, &c, 1, 0, NULL) != 0) { b->failures++; bench_node_stop(&c); return; }
    double secs = 2.0 * b->seconds;
    int probes_ok = 1;
    for (int i = 0; i < NB; i++) b->nfwd[i] = run_split(b, &c, bench_batches[i], 0.0, secs, &b->split_fwd[i], &probes_ok);
    for (int i = 0; i < NB; i++)   /* forward then backward per batch: training samples per second */
        b->nfwdbwd[i] = run_split(b, &c, bench_batches[i], 0.5, secs, &b->split_fb[i], &probes_ok) / 2.0;
    if (probes_ok) {
        fit_loop(b);
        b->have_split = 1;
    }
    double lat[2];
    if (rtt_run(b, &c, secs, lat, &b->rtt_part[0]) == 0) { b->lat_fwd_p50 = lat[0]; b->lat_fwd_p99 = lat[1]; }
    loadgen_report r;
    /* as a training client: forward, then its backward with the forward's handle (a backward always has
     * its forward: the load counts pairs). Each backward's reply comes before its step; the next forward
     * waits for that step, the backward finds the expert idle. Its backwards are the 1-row backward
     * latency. */
    if (load(b, &c.addr, 1, 1, 0.5, 0, secs, &r) == 0) {
        b->lat_train_fwd_p50 = r.lat_fwd.p50;
        b->lat_train_bwd_p50 = r.lat_bwd.p50;
        b->lat_bwd_p50 = r.lat_bwd.p50;
        b->lat_bwd_p99 = r.lat_bwd.p99;
    }
    loadgen_report_free(&r);
    latency_one_cpu(b, &c, secs);
    fprintf(stderr, ".");
    b->have_node = 1;
    bench_node_stop(&c);
}

/* What a node's memory was around one load (MiB): idle before it, as it ended, at its peak, and settled
 * (BENCH_MEM_SETTLE_MS later: what the node keeps once its idle trim has run). */
typedef struct {
    double idle, end, peak, settled;
} mem_run;

/* loaded_rss starts a node of BENCH_MEM_EXPERTS experts on workers threads (0: b->threads), loads every
 * expert with BENCH_MEM_REQUESTS forwards and backwards of 256 rows (the same ones whatever the workers:
 * every expert steps) and fills *m. Returns 0, or -1 when the node or the load failed. */
static int loaded_rss(bench *b, int workers, mem_run *m)
{
    bench_child c;
    int rc = -1;
    memset(m, 0, sizeof *m);
    if (bench_node_start(b, &c, BENCH_MEM_EXPERTS, workers, NULL) != 0) { b->failures++; bench_node_stop(&c); return -1; }
    usleep(300000);
    m->idle = proc_mb(c.pid, "VmRSS");
    loadgen_report r;
    if (load_run(b, &c.addr, BENCH_CLIENTS, 256, 0.5, 1, BENCH_MEM_MAX_S, 0.5, BENCH_MEM_REQUESTS, &r) == 0) {
        m->end = proc_mb(c.pid, "VmRSS");
        m->peak = proc_mb(c.pid, "VmHWM");
        usleep(BENCH_MEM_SETTLE_MS * 1000);
        m->settled = proc_mb(c.pid, "VmRSS");
        rc = m->end > 0 && m->settled > 0 ? 0 : -1;
    }
    loadgen_report_free(&r);
    bench_node_stop(&c);
    fprintf(stderr, ".");
    return rc;
}

void bench_memory_figures(bench *b, const kern_model *m)
{
    mem_run run[2];
    int ok = loaded_rss(b, 0, &run[0]) == 0;
    b->rss_idle_mb = run[0].idle;
    b->rss_loaded_mb = run[0].end;
    b->hwm_loaded_mb = run[0].peak;
    b->rss_settled_mb = run[0].settled;
    /* per expert: parameters, gradients, and Adam's two moments (the node's default optimizer) */
    b->weights_mb = (double)BENCH_MEM_EXPERTS * 4.0 * (double)m->n_floats * sizeof(float) / 1048576.0;
    b->have_mem = ok && b->rss_idle_mb > 0;
    /* the same node on few and on many workers: what more workers cost in memory */
    int ok_lo = b->threads == BENCH_MEM_WORKERS_LO ? ok : loaded_rss(b, BENCH_MEM_WORKERS_LO, &run[0]) == 0;
    int ok_hi = loaded_rss(b, BENCH_MEM_WORKERS_HI, &run[1]) == 0;
    for (int i = 0; i < 2; i++) {
        b->rss_workers_mb[i] = run[i].settled;
        b->rss_workers_end_mb[i] = run[i].end;
        b->hwm_workers_mb[i] = run[i].peak;
    }
    b->have_mem_workers = ok_lo && ok_hi;
}
