/* load_cmd.c -- `dmoe-call ... load [flags]`: the load generator's command line. It reads the flags into
 * a loadgen_cfg (actors/load/loadgen.h), raises the descriptor limit to one socket per client, runs the
 * load -- with a progress line a second on stderr when stderr is a terminal -- and prints the report (or
 * the error, as JSON with --json). Linked into dmoe-call only.
 */
#include "cmd/call/load_cmd.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "actors/load/loadgen.h"
#include "actors/moe/route/moe_net.h"
#include "actors/net/resolve.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/text/rt_args.h"
#include "wire/codec/wire_json.h"

static int parse_batch(const char *s, int64_t *lo, int64_t *hi)
{
    char *end;
    long long a = strtoll(s, &end, 10);
    long long b = a;
    if (end == s) return DMOE_EINVAL;
    if (*end == '-') {
        const char *t = end + 1;
        b = strtoll(t, &end, 10);
        if (end == t) return DMOE_EINVAL;
    }
    if (*end || a < 1 || b < a) return DMOE_EINVAL;
    *lo = a;
    *hi = b;
    return 0;
}

static int is_number_word(const char *w) { return w[0] >= '0' && w[0] <= '9'; }

int loadgen_main(int argc, char **argv)
{
    loadgen_cfg c;
    loadgen_default_cfg(&c);
    const char *peer = NULL, *log_level = NULL, *batch = "1", *csv = NULL;
    char **uids = NULL, **initial_peers = NULL, **grid_words = NULL, **resolved = NULL;
    int json = 0, moe = 0, dht_mode = 0;
    double timeout_s = (double)c.timeout_ms / 1000.0;
    uint64_t requests = 0;
    const rt_arg flags[] = {
        {"peer", ARG_STR, &peer, "the node to load, e.g. /ip4/127.0.0.1/tcp/PORT", "Target", NULL, "ADDR"},
        {"uids", ARG_LIST, &uids, "experts to call (a random one per forward); default: every expert", "Target", NULL, "UID"},
        {"all", ARG_FLAG, &c.all, "call every expert of the node (read from info)", "Target"},
        {"moe", ARG_FLAG, &moe, "each client runs a MoE layer over the live experts of the DHT (--initial_peers)", "Target"},
        {"dht", ARG_FLAG, &dht_mode, "each client is a client-mode DHT peer storing and getting random keys", "Target"},
        {"initial_peers", ARG_LIST, &initial_peers, "DHT peers to join (--moe, --dht)", "Target", rt_args_is_maddr, "ADDR"},
        {"uid_prefix", ARG_STR, &c.uid_prefix, "--moe: the experts' uid prefix", "MoE", NULL, "PREFIX"},
        {"grid_size", ARG_LIST, &grid_words, "--moe: grid dimensions, e.g. 250 or 32 32", "MoE", is_number_word, "N"},
        {"k_best", ARG_INT, &c.k_best, "--moe: experts per sample", "MoE"},
        {"in_features", ARG_INT, &c.in_features, "--moe: the experts' input width (their hidden_dim)", "MoE"},
        {"clients", ARG_INT, &c.clients, "concurrent connections, one request in flight each", "Load"},
        {"requests", ARG_U64, &requests, "stop after at most this many requests (0: no count bound); a forward is sent only when its backward fits too, so a run ends on whole training pairs", "Load"},
        {"duration", ARG_F64, &c.duration_s, "stop after this many seconds (0: no time bound)", "Load", NULL, "S"},
        {"warmup", ARG_F64, &c.warmup_s, "seconds of replies left out of the throughput and latency figures", "Load", NULL, "S"},
        {"mix", ARG_F64, &c.mix, "fraction of requests that are backwards, each right after its own forward: 0 forwards only; 0.25 every third forward is followed by its backward; 0.5 every forward (as training); above 0.5 is refused. --dht: the fraction of gets, below 1", "Load", NULL, "F"},
        {"batch", ARG_STR, &batch, "rows per forward: fixed (32) or uniform in a range (1-64); --dht: value bytes", "Load", NULL, "B|LO-HI"},
        {"seed", ARG_U64, &c.seed, "seed for inputs, batch sizes and targets", "Load"},
        {"timeout", ARG_F64, &timeout_s, "seconds to wait for each reply", "Load", NULL, "S"},
        {"csv", ARG_STR, &csv, "write per-second samples (time, requests, rows, p50, p99, errors) here", "Output", NULL, "PATH"},
        {"json", ARG_FLAG, &json, "print one JSON object instead of a summary", "Output"},
        {"log_level", ARG_STR, &log_level, "DEBUG, INFO, WARN or ERROR", "Output", NULL, "LEVEL"},
    };
    const int nflags = (int)(sizeof flags / sizeof flags[0]);
    const char *synopsis = "dmoe-call --peer ADDR load [--uids UID... | --all] [--clients N] [--requests N] [--duration S]\n"
                           "       [--mix F] [--batch B | --batch LO-HI] [--csv PATH] [--json]\n"
                           "       dmoe-call --initial_peers ADDR... load --moe --grid_size N... [--uid_prefix PREFIX] [--k_best N]\n"
                           "       [--in_features N] [load flags]\n"
                           "       dmoe-call --initial_peers ADDR... load --dht [load flags]\n\n"
                           "A closed-loop load generator: each client keeps one request in flight.";
    char err[512];
    char *pos[2];
    int npos;
    int rc = rt_args_parse(argc, argv, flags, nflags, pos, 2, &npos, err, sizeof err);
    if (rc == RT_ARGS_HELP) { rt_args_usage(stdout, synopsis, flags, nflags); rt_args_free(flags, nflags); return 0; }
    if (rc == RT_ARGS_VERSION) { rt_args_version(stdout, "dmoe-call"); rt_args_free(flags, nflags); return 0; }
    int status = 2;
    if (rc != 0) { fprintf(stderr, "dmoe-call load: %s\n", err); goto out; }
    if (npos > 1 || (npos == 1 && strcmp(pos[0], "load") != 0)) { fprintf(stderr, "usage: %s\n", synopsis); goto out; }
    if (log_level && rt_log_parse_level(log_level) >= 0) rt_log_set_level(rt_log_parse_level(log_level));
    else if (!getenv("DMOE_LOG")) rt_log_set_level(RT_LOG_WARN);
    if (moe && dht_mode) { fprintf(stderr, "dmoe-call load: give --moe or --dht, not both\n"); goto out; }
    c.mode = moe ? LOADGEN_MOE : dht_mode ? LOADGEN_DHT : LOADGEN_NODE;
    if (c.mode == LOADGEN_NODE) {
        if (!peer) { fprintf(stderr, "dmoe-call load: --peer ADDR is required (or --moe / --dht with --initial_peers)\n"); goto out; }
        if (resolve_one_now(peer, &c.peer, err, sizeof err) != 0) { fprintf(stderr, "dmoe-call load: --peer %s: %s\n", peer, err); goto out; }
    } else {
        if (peer || uids || c.all) { fprintf(stderr, "dmoe-call load: --moe and --dht take --initial_peers, not --peer, --uids or --all\n"); goto out; }
        if (!initial_peers) { fprintf(stderr, "dmoe-call load: --moe and --dht need --initial_peers MADDR...\n"); goto out; }
        size_t np = 0;
        while (initial_peers[np]) np++;
        if (resolve_now((const char *const *)initial_peers, np, &resolved, err, sizeof err) != 0) { fprintf(stderr, "dmoe-call load: --initial_peers: %s\n", err); goto out; }
        c.initial_peers = (const char *const *)resolved;
    }
    if (c.mode == LOADGEN_MOE) {
        int grid[MOE_MAX_DIMS], ndim = 0;
        if (moe_parse_grid(grid_words, grid, &ndim, err, sizeof err) != 0) { fprintf(stderr, "dmoe-call load: %s\n", err); goto out; }
        if (ndim > LOADGEN_MAX_DIMS) { fprintf(stderr, "dmoe-call load: at most %d grid dimensions\n", LOADGEN_MAX_DIMS); goto out; }
        for (int d = 0; d < ndim; d++) c.grid_size[d] = grid[d];
        c.ndim = ndim;
    }
    if (parse_batch(batch, &c.batch_min, &c.batch_max) != 0) {
        fprintf(stderr, "dmoe-call load: --batch %s: expected a row count (32) or a range (1-64)\n", batch);
        goto out;
    }
    if (!(timeout_s > 0 && timeout_s < 1e6)) { fprintf(stderr, "dmoe-call load: --timeout must be positive\n"); goto out; }
    c.timeout_ms = (uint64_t)(timeout_s * 1000.0);
    c.max_requests = requests;
    c.csv_path = csv;
    c.progress = isatty(STDERR_FILENO) ? stderr : NULL;   /* a line a second on a terminal; quiet in logs and pipes */
    c.uids = (const char *const *)uids;
    if (!uids && c.mode == LOADGEN_NODE) c.all = 1;
    if (uids && c.all) { fprintf(stderr, "dmoe-call load: give --uids or --all, not both\n"); goto out; }
    rc = loadgen_check_cfg(&c, err, sizeof err);
    if (rc) { fprintf(stderr, "dmoe-call load: %s\n", err); goto out; }

    /* one socket per client: make sure the descriptor limit allows it */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)c.clients + 64 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = (rlim_t)c.clients + 64 < rl.rlim_max ? (rlim_t)c.clients + 64 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    loadgen_report r;
    rc = loadgen_run(&c, &r, err, sizeof err);
    if (rc) {
        wire_json_error(json, "dmoe-call load", rc, err);
        status = rc == DMOE_EINVAL ? 2 : 1;
        goto out;
    }
    loadgen_print(stdout, &c, &r, json);
    fflush(stdout);
    status = r.errors == 0 && r.lost == 0 ? 0 : 1;
    loadgen_report_free(&r);
out:
    resolve_list_free(resolved);
    rt_args_free(flags, nflags);
    return status;
}
