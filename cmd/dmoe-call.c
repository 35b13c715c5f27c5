/* dmoe-call -- ad-hoc calls to a node: ping, info, forward, backward.
 *
 *   dmoe-call --peer /ip4/127.0.0.1/tcp/PORT info [UID]
 *   dmoe-call --peer ADDR forward UID (--input x.npy [--input mask.npy] | --random 3x512) [--output y.npy]
 *   dmoe-call --peer ADDR backward UID --input x.npy --grad_output gy.npy --output gx.npy
 *   dmoe-call --initial_peers MADDR... forward UID ...      (the expert is looked up in the DHT)
 *   dmoe-call --initial_peers MADDR... find UID...
 *   dmoe-call --initial_peers MADDR... dht store KEY VALUE --expiration S [--subkey S] | dht get KEY [--latest]
 *   dmoe-call --peer ADDR load [flags]                       (the load generator: cmd/call/load_cmd.c)
 *   dmoe-call --initial_peers MADDR... moe --uid_prefix expert. --grid_size 15 --k_best 2 --random 3x512
 *
 * forward and backward first ask the expert for its schema (info) and check the tensors against it
 * before sending them; the node checks them again. The answer is checked against the same schema
 * (rx_reply_check: count, dtype, shape, rows) and refused when it holds NaN or Inf unless
 * --no_detect_anomalies; a refused answer is a failed call. Prints a short human summary, or one JSON
 * object with --json. Exit status, as every program's (RT_ARGS_EXIT_HELP): 0 success, 1 a failed call
 * (unreachable, timeout, remote error, a peer that is not a dmoe node, an answer that does not fit), 2
 * bad usage or bad local input. Local input is checked before anything is sent: the --input and
 * --grad_output files are read and --output is tried for writing first, so a backward never steps an
 * expert whose result cannot be saved.
 *
 * Help: `dmoe-call --help` lists the commands (cmds[] below); `dmoe-call COMMAND --help` shows the
 * flags that command reads (load and moe have their own tables, cmd/call/). A mistyped command is named
 * with the nearest one (rt_args_suggest).
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/net/client.h"
#include "actors/net/resolve.h"
#include "actors/dht/io/dht_join.h"
#include "actors/grid/dht_experts.h"
#include "cmd/call/load_cmd.h"
#include "cmd/call/moe_cmd.h"
#include "actors/net/remote.h"
#include "cmd/call/dht_cmds.h"
#include "kernels/kern_rng.h"
#include "runtime/rt_mem.h"
#include "runtime/files/rt_outfile.h"
#include "runtime/text/rt_args.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "wire/codec/wire_json.h"
#include "wire/codec/wire_npy.h"

typedef struct {
    rt_loop *loop;
    client *cl;
    wire_maddr peer;
    const char *cmd, *uid, *output, *random;
    char **inputs, **grad_outputs;
    uint64_t seed;
    int json, all;
    int no_detect;            /* --no_detect_anomalies: accept outputs with NaN/Inf */
    uint64_t timeout_ms;
    rx_schema schema;
    rx_tensor in[KERN_MAX_IO], gout[KERN_MAX_IO];
    int n_in, n_gout;
    uint64_t t0;
    int status;
    int done;
    char **initial_peers;
    dht_join *dc;
    char **words;             /* positional words after the command */
    int n_words;
    double expiration;
    const char *subkey;
    int latest;
} app;

static void finish(app *a)
{
    a->done = 1;
    rt_loop_break(a->loop);
}

static void fail(app *a, int status, int code, const char *msg)
{
    a->status = status;
    wire_json_error(a->json, "dmoe-call", code, msg);
    finish(a);
}

/* ---- tensors in and out ---- */

static int load_npy(const char *path, rx_tensor *t, char *err, size_t errlen)
{
    wire_dtype dt;
    int ndim;
    int64_t shape[WIRE_MAX_NDIM];
    void *data;
    size_t nbytes;
    int rc = wire_npy_read(path, &dt, &ndim, shape, &data, &nbytes, err, errlen);
    if (rc) return rc;
    rc = rx_tensor_alloc(t, dt, ndim, shape);
    if (rc == 0) memcpy(t->buf->data, data, nbytes);
    else snprintf(err, errlen, "%s: out of memory", path);
    free(data);
    return rc;
}

/* Random rows for input io: normal floats, or for a mask (by name) 0/1 values (all 1 for uint8). */
static int random_tensor(rx_tensor *t, const kern_io_info *io, int64_t B, kern_rng *rng)
{
    int64_t shape[KERN_MAX_DIMS + 1] = {B};
    for (int d = 0; d < io->ndim; d++) shape[d + 1] = io->dims[d];
    int rc = rx_tensor_alloc(t, io->dtype == KERN_U8 ? WIRE_DT_U8 : WIRE_DT_F32, io->ndim + 1, shape);
    if (rc) return rc;
    int is_mask = strstr(io->name, "mask") != NULL;
    if (io->dtype == KERN_U8) {
        memset(t->buf->data, 0, t->numel);   /* a key-padding mask: nothing padded */
        return 0;
    }
    float *f = rx_tensor_f32(t);
    for (size_t i = 0; i < t->numel; i++) f[i] = is_mask ? (kern_rng_uniform(rng) < 0.8f ? 1.0f : 0.0f) : kern_rng_normal(rng);
    return 0;
}

static void stats(const rx_tensor *t, double *mean, double *std)
{
    double s = 0, s2 = 0;
    const float *f = rx_tensor_f32(t);
    for (size_t i = 0; f && i < t->numel; i++) { s += f[i]; s2 += (double)f[i] * f[i]; }
    double n = t->numel ? (double)t->numel : 1;
    *mean = s / n;
    double var = s2 / n - *mean * *mean;
    *std = var > 0 ? sqrt(var) : 0;
}

static void output_path(const char *base, int i, char *buf, size_t cap)
{
    if (i == 0) { snprintf(buf, cap, "%s", base); return; }
    const char *dot = strrchr(base, '.');
    if (dot && strcmp(dot, ".npy") == 0) snprintf(buf, cap, "%.*s_%d.npy", (int)(dot - base), base, i);
    else snprintf(buf, cap, "%s_%d", base, i);
}

static void print_shape(FILE *f, const rx_tensor *t)
{
    fputc('[', f);
    for (int d = 0; d < t->ndim; d++) fprintf(f, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    fputc(']', f);
}

/* ---- results ---- */

static int on_compute(void *arg, int err, const char *msg, wire_msg *reply)
{
    app *a = arg;
    double ms = (double)(rt_clock_us() - a->t0) / 1000.0;
    if (err) {
        char m[640];
        snprintf(m, sizeof m, "%s %s at %s:%u: %s", a->cmd, a->uid, a->peer.host, (unsigned)a->peer.port,
                 msg ? msg : dmoe_strerror(err));
        fail(a, 1, err, m);
        return 0;
    }
    int bwd = strcmp(a->cmd, "backward") == 0;
    const char *key = bwd ? "grad_inputs" : "outputs";
    rx_tensor res[KERN_MAX_IO];
    char e[256];
    int n = rx_result(reply, key, res, KERN_MAX_IO, e, sizeof e);
    int rc = n < 0 ? n : rx_reply_check(&a->schema, bwd, a->in, a->n_in, res, n, !a->no_detect, e, sizeof e);
    if (rc) {
        char m[512];
        snprintf(m, sizeof m, "expert %s at %s:%u answered badly: %s%s", a->uid, a->peer.host, (unsigned)a->peer.port, e,
                 rc == DMOE_ENONFINITE ? " (--no_detect_anomalies accepts it)" : "");
        for (int i = 0; i < n; i++) rx_tensor_free(&res[i]);
        fail(a, 1, rc, m);
        return 0;
    }
    a->status = 0;
    if (a->json) printf("{\"ok\": true, \"method\": \"%s\", \"uid\": ", a->cmd), wire_json_string(stdout, a->uid, strlen(a->uid)),
                 printf(", \"elapsed_ms\": %.3f, \"%s\": [", ms, key);
    for (int i = 0; i < n; i++) {
        double mean, sd;
        stats(&res[i], &mean, &sd);
        char path[1024] = "";
        if (a->output) {
            output_path(a->output, i, path, sizeof path);
            if (wire_npy_write(path, res[i].dtype, res[i].ndim, res[i].shape, res[i].buf ? res[i].buf->data : NULL, e,
                               sizeof e) != 0) {
                fprintf(stderr, "dmoe-call: cannot write %s: %s\n", path, e);
                a->status = 2;
            }
        }
        if (a->json) {
            printf("%s{\"shape\": ", i ? ", " : "");
            print_shape(stdout, &res[i]);
            printf(", \"mean\": %.9g, \"std\": %.9g", mean, sd);
            if (path[0]) printf(", \"file\": "), wire_json_string(stdout, path, strlen(path));
            printf("}");
        } else {
            printf("%s[%d]: shape ", key, i);
            print_shape(stdout, &res[i]);
            printf("  mean %.6g  std %.6g%s%s\n", mean, sd, path[0] ? "  -> " : "", path);
        }
        rx_tensor_free(&res[i]);
    }
    if (a->json) printf("]}\n");
    else printf("%s %s: %.3f ms\n", a->cmd, a->uid, ms);
    finish(a);
    return 0;
}

static void send_compute(app *a)
{
    char err[384];
    int bwd = strcmp(a->cmd, "backward") == 0;
    int rc = rx_check(&a->schema, a->in, a->n_in, a->gout, bwd ? a->n_gout : -1, err, sizeof err);
    if (rc) { fail(a, 2, rc, err); return; }
    uint64_t id = client_next_id(a->cl);
    wire_out *o = rx_request(id, a->uid, a->in, a->n_in, bwd ? a->gout : NULL, a->n_gout, a->schema.compression);
    if (!o) { fail(a, 1, DMOE_ENOMEM, "out of memory"); return; }
    a->t0 = rt_clock_us();
    rc = client_call(a->cl, &a->peer, id, o, a->timeout_ms, on_compute, a);
    if (rc) fail(a, 1, rc, "cannot reach the peer");
}

/* load_files reads the --input and --grad_output files before anything is sent (bad local input is
 * exit 2, found before the network is touched) and says what is missing. */
static int load_files(app *a, char *err, size_t errlen)
{
    int bwd = strcmp(a->cmd, "backward") == 0;
    if (a->inputs && a->random) { snprintf(err, errlen, "give --input files or --random, not both"); return DMOE_EINVAL; }
    if (!a->inputs && !a->random) {
        snprintf(err, errlen, "%s needs --input FILE.npy (once per expert input) or --random BxH", a->cmd);
        return DMOE_EINVAL;
    }
    if (!bwd && a->grad_outputs) { snprintf(err, errlen, "--grad_output is for backward"); return DMOE_EINVAL; }
    if (bwd && a->inputs && !a->grad_outputs) {
        snprintf(err, errlen, "backward needs --grad_output FILE.npy (or --random)");
        return DMOE_EINVAL;
    }
    for (a->n_in = 0; a->inputs && a->inputs[a->n_in]; a->n_in++) {
        if (a->n_in == KERN_MAX_IO) { snprintf(err, errlen, "at most %d --input files", KERN_MAX_IO); return DMOE_EINVAL; }
        int rc = load_npy(a->inputs[a->n_in], &a->in[a->n_in], err, errlen);
        if (rc) return rc;
    }
    for (a->n_gout = 0; a->grad_outputs && a->grad_outputs[a->n_gout]; a->n_gout++) {
        if (a->n_gout == KERN_MAX_IO) { snprintf(err, errlen, "at most %d --grad_output files", KERN_MAX_IO); return DMOE_EINVAL; }
        int rc = load_npy(a->grad_outputs[a->n_gout], &a->gout[a->n_gout], err, errlen);
        if (rc) return rc;
    }
    return 0;
}

/* Build the --random tensors once the schema is known (files were read by load_files). */
static int prepare_tensors(app *a, char *err, size_t errlen)
{
    int bwd = strcmp(a->cmd, "backward") == 0;
    kern_rng rng;
    kern_rng_seed(&rng, a->seed);
    if (a->inputs) {
        /* read before the call */
    } else if (a->random) {
        int64_t dims[KERN_MAX_DIMS + 1];
        int nd = rt_args_shape(a->random, dims, KERN_MAX_DIMS + 1);
        if (nd < 1) { snprintf(err, errlen, "--random %s: expected a shape like 3x512", a->random); return DMOE_EINVAL; }
        const kern_io_info *io0 = &a->schema.in[0];
        int ok = a->schema.n_in > 0 && nd == io0->ndim + 1;
        for (int d = 0; ok && d < io0->ndim; d++) ok = dims[d + 1] == io0->dims[d];
        if (!ok) {
            snprintf(err, errlen, "--random %s does not fit the expert's first input (%d dims per row, %lld wide)",
                     a->random, io0->ndim, a->schema.n_in ? (long long)io0->dims[0] : 0);
            return DMOE_ESHAPE;
        }
        for (a->n_in = 0; a->n_in < a->schema.n_in; a->n_in++)
            if (random_tensor(&a->in[a->n_in], &a->schema.in[a->n_in], dims[0], &rng) != 0) return DMOE_ENOMEM;
    }
    if (!bwd || a->grad_outputs) return 0;
    int64_t B = a->in[0].shape[0];
    for (a->n_gout = 0; a->n_gout < a->schema.n_out; a->n_gout++)
        if (random_tensor(&a->gout[a->n_gout], &a->schema.out[a->n_gout], B, &rng) != 0) return DMOE_ENOMEM;
    return 0;
}

static void print_info_human(const msgpack_object *info)
{
    rx_schema s;
    char err[128];
    if (rx_schema_parse(info, &s, err, sizeof err) != 0) { printf("(unreadable expert description: %s)\n", err); return; }
    printf("%s: %s (%s), hidden %d, %llu parameters, max_batch_size %lld\n", s.uid, s.module, s.expert_cls,
           s.hidden_dim, (unsigned long long)s.n_params, (long long)s.max_batch_size);
    for (int k = 0; k < 2; k++) {
        const kern_io_info *io = k ? s.out : s.in;
        for (int i = 0; i < (k ? s.n_out : s.n_in); i++) {
            printf("  %s %d: %s %s [B", k ? "output" : "input", i, io[i].name, io[i].dtype == KERN_U8 ? "uint8" : "float32");
            for (int d = 0; d < io[i].ndim; d++) printf(", %lld", (long long)io[i].dims[d]);
            printf("]\n");
        }
    }
    char opt[16] = "?";
    wire_get_str(wire_map_get(info, "optimizer"), opt, sizeof opt);
    double lr = 0;
    wire_get_f64(wire_map_get(info, "lr"), &lr);
    printf("  optimizer %s, lr %g\n", opt, lr);
    const msgpack_object *st = wire_map_get(info, "stats");
    if (st && st->type == MSGPACK_OBJECT_MAP) {
        printf("  stats:");
        for (uint32_t i = 0; i < st->via.map.size; i++) {
            const msgpack_object *k = &st->via.map.ptr[i].key, *v = &st->via.map.ptr[i].val;
            if (k->type == MSGPACK_OBJECT_STR && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                printf(" %.*s=%llu", (int)k->via.str.size, k->via.str.ptr, (unsigned long long)v->via.u64);
        }
        printf("\n");
    }
}

static int on_info(void *arg, int err, const char *msg, wire_msg *reply)
{
    app *a = arg;
    if (err) { fail(a, 1, err, msg ? msg : dmoe_strerror(err)); return 0; }
    if (strcmp(a->cmd, "info") == 0) {
        a->status = 0;
        if (a->json) {
            wire_json_print(stdout, reply->result);
            printf("\n");
        } else if (a->uid) {
            print_info_human(reply->result);
        } else {
            const msgpack_object *ex = wire_map_get(reply->result, "experts");
            for (uint32_t i = 0; ex && ex->type == MSGPACK_OBJECT_ARRAY && i < ex->via.array.size; i++)
                print_info_human(&ex->via.array.ptr[i]);
        }
        finish(a);
        return 0;
    }
    char e[384];
    int rc = rx_schema_parse(reply->result, &a->schema, e, sizeof e);
    if (rc) {   /* the node's description of its expert: a remote failure */
        char m[512];
        snprintf(m, sizeof m, "expert %s at %s:%u sent an unreadable description: %s", a->uid, a->peer.host,
                 (unsigned)a->peer.port, e);
        fail(a, 1, rc, m);
        return 0;
    }
    rc = prepare_tensors(a, e, sizeof e);   /* --random against the schema: local input */
    if (rc) { fail(a, 2, rc, e); return 0; }
    send_compute(a);
    return 0;
}

static int on_ping(void *arg, int err, const char *msg, wire_msg *reply)
{
    app *a = arg;
    double ms = (double)(rt_clock_us() - a->t0) / 1000.0;
    if (err) { fail(a, 1, err, msg ? msg : dmoe_strerror(err)); return 0; }
    a->status = 0;
    if (a->json) printf("{\"ok\": true, \"rtt_ms\": %.3f}\n", ms);
    else printf("pong from %s:%u in %.3f ms\n", a->peer.host, (unsigned)a->peer.port, ms);
    finish(a);
    return 0;
}

static void start(app *a)
{
    uint64_t id = client_next_id(a->cl);
    wire_out *o = wire_out_new();
    if (!o) { fail(a, 1, DMOE_ENOMEM, "out of memory"); return; }
    int is_ping = strcmp(a->cmd, "ping") == 0;
    int with_uid = !is_ping && a->uid && !a->all;
    wire_request_begin(o, id, is_ping ? "ping" : "info", with_uid ? 3 : 2);
    if (with_uid) {
        wire_pack_str(wire_out_pk(o), "uid");
        wire_pack_str(wire_out_pk(o), a->uid);
    }
    a->t0 = rt_clock_us();
    int rc = client_call(a->cl, &a->peer, id, o, a->timeout_ms, is_ping ? on_ping : on_info, a);
    if (rc) fail(a, 1, rc, "cannot reach the peer (an IP address is needed)");
}

static void cli_done(void *arg, int status)
{
    app *a = arg;
    a->status = status;
    finish(a);
}

static void on_located(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    app *a = arg;
    if (err) { fail(a, 1, err, msg ? msg : dmoe_strerror(err)); return; }
    if (n < 1 || !locs[0].found) {
        char m[320];
        snprintf(m, sizeof m, "expert %s is not declared in the DHT", a->uid);
        fail(a, 1, DMOE_ENOEXPERT, m);
        return;
    }
    a->peer = locs[0].addr;
    start(a);
}

static void on_joined(void *arg, int err, const char *msg)
{
    app *a = arg;
    if (err) { fail(a, 1, err, msg ? msg : dmoe_strerror(err)); return; }
    char e[512] = "";
    int rc = 0;
    if (!strcmp(a->cmd, "find")) {
        rc = dht_cmd_find(dht_join_node(a->dc), (const char *const *)a->words, (size_t)a->n_words, a->json, cli_done, a, e, sizeof e);
    } else if (!strcmp(a->cmd, "dht")) {
        if (a->n_words == 3 && !strcmp(a->words[0], "store"))
            rc = dht_cmd_store(dht_join_node(a->dc), a->words[1], a->words[2], a->subkey, a->expiration, a->json, cli_done, a, e, sizeof e);
        else if (a->n_words == 2 && !strcmp(a->words[0], "get"))
            rc = dht_cmd_get(dht_join_node(a->dc), a->words[1], a->latest, a->json, cli_done, a, e, sizeof e);
        else { rc = DMOE_EINVAL; snprintf(e, sizeof e, "usage: dht store KEY VALUE --expiration S [--subkey S] | dht get KEY [--latest]"); }
    } else {
        const char *uid = a->uid;
        rc = dht_get_experts(dht_join_node(a->dc), &uid, 1, on_located, a, e, sizeof e);
    }
    if (rc) fail(a, rc == DMOE_EINVAL ? 2 : 1, rc, e);
}

/* The commands: what `dmoe-call --help` lists and `dmoe-call COMMAND --help` shows, with the flags (of
 * the table in main) each one reads. load and moe parse their own flags (cmd/call/). */
typedef struct {
    const char *name, *synopsis, *about, *flags;
} cmd_help;

static const cmd_help cmds[] = {
    {"ping", "dmoe-call --peer ADDR ping", "the round-trip time of a ping to a node", "peer timeout json log_level"},
    {"info", "dmoe-call (--peer ADDR [--all] | --initial_peers ADDR... UID) info [UID]",
     "an expert's schema, optimizer and stats; without UID, every expert of the node",
     "peer initial_peers trusted_keys timeout all json log_level"},
    {"forward", "dmoe-call (--peer ADDR | --initial_peers ADDR...) forward UID (--input X.npy... | --random BxH) [--output Y.npy]",
     "one forward pass of an expert", "peer initial_peers trusted_keys timeout input random seed output no_detect_anomalies json log_level"},
    {"backward", "dmoe-call (--peer ADDR | --initial_peers ADDR...) backward UID (--input X.npy... --grad_output GY.npy... |\n"
                 "       --random BxH) [--output GX.npy]",
     "one backward pass of an expert (the node then steps the expert's optimizer)",
     "peer initial_peers trusted_keys timeout input grad_output random seed output no_detect_anomalies json log_level"},
    {"find", "dmoe-call --initial_peers ADDR... find UID...", "where the DHT says each expert is served",
     "initial_peers trusted_keys json log_level"},
    {"dht", "dmoe-call --initial_peers ADDR... dht store KEY VALUE --expiration S [--subkey SUBKEY]\n"
            "       dmoe-call --initial_peers ADDR... dht get KEY [--latest]",
     "store or read a value of the DHT", "initial_peers trusted_keys expiration subkey latest json log_level"},
    {"load", "dmoe-call --peer ADDR load [flags]", "a closed-loop load generator against a node, a MoE layer or the DHT", NULL},
    {"moe", "dmoe-call --initial_peers ADDR... moe --grid_size N... [flags]",
     "one forward of a Mixture-of-Experts layer over the experts of the DHT", NULL},
};
#define N_CMDS ((int)(sizeof cmds / sizeof cmds[0]))

static const cmd_help *find_cmd(const char *name)
{
    for (int i = 0; name && i < N_CMDS; i++)
        if (strcmp(cmds[i].name, name) == 0) return &cmds[i];
    return NULL;
}

/* Whether name is one of the space-separated words of list. */
static int in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return 1;
    return 0;
}

/* usage prints the help of command c (its synopsis and the flags it reads), or with c NULL the list of
 * commands and the flags they share. */
static void usage(const cmd_help *c, const rt_arg *flags, int nflags)
{
    rt_arg sub[32];
    int n = 0;
    const char *shared = "peer initial_peers trusted_keys timeout json log_level";
    for (int i = 0; i < nflags && n < 32; i++)
        if (in_list(c ? c->flags : shared, flags[i].name)) sub[n++] = flags[i];
    if (c) {
        char syn[512];
        snprintf(syn, sizeof syn, "%s\n\n%s.", c->synopsis, c->about);
        rt_args_usage(stdout, syn, sub, n);
        return;
    }
    char syn[2048];
    size_t off = (size_t)snprintf(syn, sizeof syn, "dmoe-call (--peer ADDR | --initial_peers ADDR...) COMMAND [ARGS] [flags]\n\ncommands:\n");
    for (int i = 0; i < N_CMDS && off < sizeof syn; i++)
        off += (size_t)snprintf(syn + off, sizeof syn - off, "  %-9s %s\n", cmds[i].name, cmds[i].about);
    if (off < sizeof syn)
        snprintf(syn + off, sizeof syn - off, "\n`dmoe-call COMMAND --help` shows a command's flags. The flags of every command:");
    rt_args_usage(stdout, syn, sub, n);
}

/* unknown_command says what is wrong with the command word (none, or a typo of which command). */
static void unknown_command(const char *word)
{
    const char *names[N_CMDS + 1];
    for (int i = 0; i < N_CMDS; i++) names[i] = cmds[i].name;
    names[N_CMDS] = NULL;
    const char *near = word ? rt_args_suggest(word, names) : NULL;
    if (!word) fprintf(stderr, "dmoe-call: no command given (dmoe-call --help lists them)\n");
    else if (near) fprintf(stderr, "dmoe-call: unknown command '%s'; did you mean '%s'?\n", word, near);
    else fprintf(stderr, "dmoe-call: unknown command '%s' (dmoe-call --help lists them)\n", word);
}

int main(int argc, char **argv)
{
    (void)rt_mem_tune();   /* big buffers stay in the heap (runtime/rt_mem.h) */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "load")) return loadgen_main(argc, argv);
        if (!strcmp(argv[i], "moe")) return moe_call_main(argc, argv);
    }

    app a = {.status = 1};
    const char *peer = NULL, *log_level = NULL, *trusted_keys = NULL;
    dht_trust *trusted = NULL;
    double timeout_s = 30;
    const rt_arg flags[] = {
        {"peer", ARG_STR, &peer, "the node to call: a multiaddr (/ip4/127.0.0.1/tcp/PORT, /dns/HOST/tcp/PORT) or HOST:PORT", "Connection", NULL, "ADDR"},
        {"timeout", ARG_F64, &timeout_s, "seconds to wait for each reply", "Connection", NULL, "S"},
        {"input", ARG_MULTI, &a.inputs, "an input tensor as .npy (repeat for experts with several inputs)", "Tensors", NULL, "PATH"},
        {"grad_output", ARG_MULTI, &a.grad_outputs, "backward: the gradient of each output, as .npy", "Tensors", NULL, "PATH"},
        {"random", ARG_STR, &a.random, "random inputs of this shape instead of files, e.g. 3x512", "Tensors", NULL, "BxH"},
        {"seed", ARG_U64, &a.seed, "seed for --random", "Tensors"},
        {"output", ARG_STR, &a.output, "write the outputs (or input gradients) to this .npy file (checked before the call)", "Tensors", NULL, "PATH"},
        {"all", ARG_FLAG, &a.all, "info: every expert of the node, with its stats", "Output"},
        {"no_detect_anomalies", ARG_FLAG, &a.no_detect, "forward/backward: accept outputs with NaN/Inf (refused by default)", "Tensors"},
        {"json", ARG_FLAG, &a.json, "print one JSON object instead of a summary", "Output"},
        {"log_level", ARG_STR, &log_level, "DEBUG, INFO, WARN or ERROR", "Output", NULL, "LEVEL"},
        {"initial_peers", ARG_LIST, &a.initial_peers, "DHT peers to join (find experts by uid instead of --peer)", "DHT", rt_args_is_maddr, "ADDR"},
        {"expiration", ARG_F64, &a.expiration, "dht store: seconds the value lives", "DHT", NULL, "S"},
        {"subkey", ARG_STR, &a.subkey, "dht store: store under this subkey of the key's dictionary", "DHT", NULL, "SUBKEY"},
        {"latest", ARG_FLAG, &a.latest, "dht get: ask every replica for the newest value", "DHT"},
        {"trusted_keys", ARG_STR, &trusted_keys, "a private swarm: use only DHT records signed by the Ed25519 public keys in FILE (64 hex digits a line, # comments)", "DHT", NULL, "FILE"},
    };
    const int nflags = (int)(sizeof flags / sizeof flags[0]);
    char err[512];
    char *pos[66];
    int npos;
    a.expiration = 60;
    int rc = rt_args_parse(argc, argv, flags, nflags, pos, 66, &npos, err, sizeof err);
    if (rc == RT_ARGS_HELP) {
        const cmd_help *c = npos > 0 ? find_cmd(pos[0]) : NULL;
        for (int i = 1; !c && i < argc; i++) c = find_cmd(argv[i]);   /* dmoe-call --help forward */
        usage(c, flags, nflags);
        rt_args_free(flags, nflags);
        return 0;
    }
    if (rc == RT_ARGS_VERSION) { rt_args_version(stdout, "dmoe-call"); rt_args_free(flags, nflags); return 0; }
    if (rc != 0) { fprintf(stderr, "dmoe-call: %s\n", err); rt_args_free(flags, nflags); return 2; }
    if (log_level && rt_log_parse_level(log_level) >= 0) rt_log_set_level(rt_log_parse_level(log_level));
    else if (!getenv("DMOE_LOG")) rt_log_set_level(RT_LOG_WARN);
    a.cmd = npos > 0 ? pos[0] : NULL;
    a.uid = npos > 1 ? pos[1] : NULL;
    a.words = pos + 1;
    a.n_words = npos > 0 ? npos - 1 : 0;
    if (!find_cmd(a.cmd)) { unknown_command(a.cmd); rt_args_free(flags, nflags); return 2; }
    int dht_cmd = !strcmp(a.cmd, "find") || !strcmp(a.cmd, "dht");
    int compute = !strcmp(a.cmd, "forward") || !strcmp(a.cmd, "backward");
    if ((!dht_cmd && npos > 2) || (dht_cmd && npos < 2) || (compute && !a.uid)) {
        fprintf(stderr, "usage: %s\n(dmoe-call %s --help for its flags)\n", find_cmd(a.cmd)->synopsis, a.cmd);
        rt_args_free(flags, nflags);
        return 2;
    }
    int via_dht = !peer && a.initial_peers && (dht_cmd || a.uid);
    if (dht_cmd && !a.initial_peers) { fprintf(stderr, "dmoe-call: %s needs --initial_peers\n", a.cmd); rt_args_free(flags, nflags); return 2; }
    if (!peer && !via_dht) {
        fprintf(stderr, "dmoe-call: --peer ADDR (or --initial_peers with a uid) is required\n");
        rt_args_free(flags, nflags);
        return 2;
    }
    if (!(a.expiration > 0)) { fprintf(stderr, "dmoe-call: --expiration must be positive\n"); rt_args_free(flags, nflags); return 2; }
    if (peer && resolve_one_now(peer, &a.peer, err, sizeof err) != 0) {
        fprintf(stderr, "dmoe-call: --peer %s: %s\n", peer, err);
        rt_args_free(flags, nflags);
        return 2;
    }
    if (!(timeout_s > 0 && timeout_s < 1e6)) { fprintf(stderr, "dmoe-call: --timeout must be positive\n"); rt_args_free(flags, nflags); return 2; }
    a.timeout_ms = (uint64_t)(timeout_s * 1000.0);
    /* local input before anything is sent: the files read, the output tried */
    if (compute && (load_files(&a, err, sizeof err) != 0 || (a.output && rt_outfile_check(a.output, err, sizeof err) != 0))) {
        fprintf(stderr, "dmoe-call: %s\n", err);
        for (int i = 0; i < KERN_MAX_IO; i++) { rx_tensor_free(&a.in[i]); rx_tensor_free(&a.gout[i]); }
        rt_args_free(flags, nflags);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);
    a.loop = rt_loop_new();
    a.cl = a.loop ? client_new(a.loop, NULL) : NULL;
    if (!a.cl) { fprintf(stderr, "dmoe-call: out of memory\n"); return 1; }
    if (via_dht && trusted_keys && dht_trust_load(trusted_keys, &trusted, err, sizeof err) != 0) {
        fail(&a, 2, DMOE_EINVAL, err);
    } else if (via_dht) {
        size_t np = 0;
        char **peers = NULL;   /* host names resolved, before the loop runs */
        while (a.initial_peers[np]) np++;
        if (resolve_now((const char *const *)a.initial_peers, np, &peers, err, sizeof err) == 0)
            a.dc = dht_join_start(a.loop, a.cl, (const char *const *)peers, np, trusted, on_joined, &a, err, sizeof err);
        resolve_list_free(peers);
        if (!a.dc) fail(&a, 2, DMOE_EINVAL, err);
    } else {
        start(&a);
    }
    if (!a.done) rt_loop_run(a.loop);
    if (a.dc) dht_node_stop(dht_join_node(a.dc));
    client_free(a.cl);
    dht_join_free(a.dc);
    dht_trust_free(trusted);
    for (int i = 0; i < KERN_MAX_IO; i++) { rx_tensor_free(&a.in[i]); rx_tensor_free(&a.gout[i]); }
    rt_loop_run(a.loop);   /* no-op unless actors wait to be reaped */
    rt_loop_free(a.loop);
    rt_args_free(flags, nflags);
    return a.status;
}
