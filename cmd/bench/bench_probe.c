/* bench_probe.c -- what dmoe-bench reads from inside a running node (see bench.h): the CPU time of its
 * loop thread and of its other threads (the workers) from /proc/PID/task/TID/schedstat (nanoseconds on
 * the CPU, the kernel's own account), and one expert's summed timers from its info reply (stats:
 * kernel_us, step_work_us, step_us, step_wait_us, batch_build_us, reply_us, queue_wait_us, compute_us and
 * the batch counts) -- or all its experts' added up --, over
 * one client call on a loop of its own. bench_node.c takes a probe before and after each load and turns
 * the differences into the breakdown of where a batch's time goes; bench_moe.c does the same around
 * the MoE training steps.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/net/client.h"
#include "cmd/bench/bench.h"
#include "runtime/rt_err.h"
#include "wire/wire_msg.h"

#define PROBE_TIMEOUT_MS 5000   /* an info call to a node on loopback */

/* thread_ns returns the nanoseconds thread tid of pid has run, or -1. */
static double thread_ns(pid_t pid, const char *tid)
{
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/task/%s/schedstat", (int)pid, tid);
    FILE *f = fopen(path, "r");
    unsigned long long ns = 0;
    int ok = f && fscanf(f, "%llu", &ns) == 1;
    if (f) fclose(f);
    return ok ? (double)ns : -1.0;
}

/* The threads' CPU time: the loop thread is the process's main thread (tid == pid). */
static int probe_cpu(pid_t pid, bench_probe *p)
{
    char dir[64], self[24];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    snprintf(self, sizeof self, "%d", (int)pid);
    DIR *d = opendir(dir);
    if (!d) return DMOE_EIO;
    p->loop_ns = p->others_ns = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        double ns = thread_ns(pid, de->d_name);
        if (ns < 0) continue;   /* a thread that ended meanwhile */
        if (strcmp(de->d_name, self) == 0) p->loop_ns = ns;
        else p->others_ns += ns;
    }
    closedir(d);
    return p->loop_ns > 0 ? 0 : DMOE_EIO;
}

typedef struct {
    rt_loop *loop;
    bench_probe *p;
    int rc;
} info_call;

static double stat_us(const msgpack_object *st, const char *key)
{
    const msgpack_object *v = wire_map_get(st, key);
    return v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (double)v->via.u64 : 0.0;
}

/* Add the stats of one expert's info map to p; 0 or DMOE_EPROTO. */
static int add_stats(const msgpack_object *info, bench_probe *p)
{
    const msgpack_object *st = wire_map_get(info, "stats");
    if (!st || st->type != MSGPACK_OBJECT_MAP) return DMOE_EPROTO;
    p->compute_us += stat_us(st, "kernel_us");
    p->step_us += stat_us(st, "step_work_us");
    p->step_wall_us += stat_us(st, "step_us");
    p->step_wait_us += stat_us(st, "step_wait_us");
    p->batch_build_us += stat_us(st, "batch_build_us");
    p->batch_fill_us += stat_us(st, "batch_fill_us");
    p->reply_us += stat_us(st, "reply_us");
    p->params_us += stat_us(st, "params_after_reply_us");
    p->wait_us += stat_us(st, "queue_wait_us");
    p->batch_us += stat_us(st, "compute_us");
    p->batches += stat_us(st, "forward_batches") + stat_us(st, "backward_batches");
    return 0;
}

/* The reply to info: one expert's map, or (asked without a uid) the node's, whose "experts" are summed. */
static int on_info(void *arg, int err, const char *msg, wire_msg *reply)
{
    info_call *ic = arg;
    rt_loop_break(ic->loop);
    if (err) { ic->rc = err; return 0; }
    const msgpack_object *ex = wire_map_get(reply->result, "experts");
    if (!ex) { ic->rc = add_stats(reply->result, ic->p); return 0; }
    ic->rc = ex->type == MSGPACK_OBJECT_ARRAY ? 0 : DMOE_EPROTO;
    for (uint32_t i = 0; ic->rc == 0 && i < ex->via.array.size; i++) ic->rc = add_stats(&ex->via.array.ptr[i], ic->p);
    return 0;
}

static int probe_info(const wire_maddr *addr, const char *uid, bench_probe *p)
{
    info_call ic = {.loop = rt_loop_new(), .p = p, .rc = DMOE_ETIMEDOUT};
    client *cl = ic.loop ? client_new(ic.loop, NULL) : NULL;
    wire_out *o = cl ? wire_out_new() : NULL;
    if (!o) {
        client_free(cl);
        if (ic.loop) rt_loop_free(ic.loop);
        return DMOE_ENOMEM;
    }
    uint64_t id = client_next_id(cl);
    wire_request_begin(o, id, "info", uid ? 3 : 2);
    if (uid) {
        wire_pack_str(wire_out_pk(o), "uid");
        wire_pack_str(wire_out_pk(o), uid);
    }
    if (client_call(cl, addr, id, o, PROBE_TIMEOUT_MS, on_info, &ic) == 0) rt_loop_run(ic.loop);
    client_free(cl);
    rt_loop_free(ic.loop);
    return ic.rc;
}

int bench_probe_take(pid_t pid, const wire_maddr *addr, const char *uid, bench_probe *p)
{
    memset(p, 0, sizeof *p);
    int rc = probe_info(addr, uid, p);
    return rc ? rc : probe_cpu(pid, p);
}

void bench_probe_diff(const bench_probe *before, const bench_probe *after, bench_probe *d)
{
    d->loop_ns = after->loop_ns - before->loop_ns;
    d->others_ns = after->others_ns - before->others_ns;
    d->compute_us = after->compute_us - before->compute_us;
    d->step_us = after->step_us - before->step_us;
    d->step_wall_us = after->step_wall_us - before->step_wall_us;
    d->step_wait_us = after->step_wait_us - before->step_wait_us;
    d->batch_build_us = after->batch_build_us - before->batch_build_us;
    d->batch_fill_us = after->batch_fill_us - before->batch_fill_us;
    d->reply_us = after->reply_us - before->reply_us;
    d->params_us = after->params_us - before->params_us;
    d->wait_us = after->wait_us - before->wait_us;
    d->batch_us = after->batch_us - before->batch_us;
    d->batches = after->batches - before->batches;
}
