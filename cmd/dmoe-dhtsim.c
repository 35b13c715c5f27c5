/* dmoe-dhtsim -- the DHT at internet scale, by simulation (actors/dht/sim/dht_sim.h; README "The DHT at
 * scale").
 *
 * Runs one simulation of the flags' network -- peers, churn, hostile share, loss, virtual duration, the
 * DHT's tunables -- and prints its figures as one JSON object (to --out, or stdout), plus a summary line
 * on stderr. scripts/bench_dht.sh sweeps it for `make bench-dht`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/sim/dht_sim.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/text/rt_args.h"

static void write_json(FILE *f, const dht_sim_cfg *c, const dht_sim_result *r)
{
    fprintf(f,
            "{\"peers\": %zu, \"trainers\": %zu, \"duration_s\": %g, \"warmup_s\": %g, \"median_uptime_s\": %g, "
            "\"uptime_shape\": %g, \"servers\": %zu, \"uids_per_server\": %zu, \"update_period_s\": %g, \"lookup_rate\": %g, \"hostile_share\": %g, \"hostile\": %zu, \"sybils\": %zu, \"loss\": %g, "
            "\"rtt_min_ms\": %u, \"rtt_max_ms\": %u, \"alpha\": %zu, \"replicas\": %zu, \"bucket_size\": %zu, "
            "\"rpc_timeout_ms\": %llu, \"soft_timeout_ms\": %llu, \"refresh_s\": %g, \"cache\": %d, \"seed\": %llu,\n"
            " \"lookups\": %zu, \"ok\": %zu, \"stale\": %zu, \"missing\": %zu, \"success\": %.6f, "
            "\"stale_rate\": %.6f, \"hot_lookups\": %zu, \"hot_ok\": %zu,\n"
            " \"hops_p50\": %d, \"hops_p99\": %d, \"hops_max\": %d, \"latency_p50_ms\": %.1f, \"latency_p99_ms\": %.1f, "
            "\"rpcs_per_lookup\": %.2f, \"slow_per_lookup\": %.2f, \"msgs_per_lookup\": %.2f, \"bytes_per_lookup\": %.0f,\n"
            " \"prefix_lookups\": %zu, \"prefix_ok\": %zu, \"declarations\": %zu, \"declarations_ok\": %zu, "
            "\"joins\": %zu, \"leaves\": %zu, \"boot_failed\": %zu, \"messages\": %llu, \"record_verifications\": %llu, "
            "\"ed25519_signs\": %llu, \"ed25519_verifies\": %llu, \"memo_hits\": %llu, \"memo\": %d,\n"
            " \"setup_s\": %.2f, \"run_s\": %.2f, \"wall_s\": %.2f, \"cpu_s\": %.2f, \"peak_rss_mb\": %.1f, "
            "\"bytes_per_peer\": %.0f, \"virtual_s\": %.1f}\n",
            c->peers, c->trainers, c->duration_s, c->warmup_s, c->median_uptime_s, c->uptime_shape, r->servers,
            c->uids_per_server, c->update_period_s, c->lookup_rate, c->hostile_share,
            r->hostile, r->sybils, c->loss, c->rtt_min_ms, c->rtt_max_ms, c->alpha, c->replicas, c->bucket_size,
            (unsigned long long)c->rpc_timeout_ms, (unsigned long long)c->soft_timeout_ms, c->refresh_s, c->cache, (unsigned long long)c->seed, r->lookups,
            r->ok, r->stale, r->missing, r->success, r->stale_rate, r->hot_lookups, r->hot_ok, r->hops_p50,
            r->hops_p99, r->hops_max, r->lat_p50_ms, r->lat_p99_ms, r->rpcs_per_lookup, r->slow_per_lookup, r->msgs_per_lookup,
            r->bytes_per_lookup, r->prefix_lookups, r->prefix_ok, r->declarations, r->declarations_ok, r->joins,
            r->leaves, r->boot_failed, (unsigned long long)r->messages, (unsigned long long)r->record_verifications,
            (unsigned long long)r->signs, (unsigned long long)r->verifies, (unsigned long long)r->memo_hits, !c->no_memo,
            r->setup_s,
            r->run_s, r->wall_s, r->cpu_s, r->peak_rss_mb, r->bytes_per_peer, r->virtual_s);
}

int main(int argc, char **argv)
{
    dht_sim_cfg c;
    dht_sim_defaults(&c);
    uint64_t peers = c.peers, hot = c.hot_keys, syb = c.sybils_per_hot, trainers = 0, alpha = 0, replicas = 0,
             k = 0, upr = c.uids_per_server, rtt_min = c.rtt_min_ms, rtt_max = c.rtt_max_ms;
    uint64_t servers = 0;
    int bits = 0, verbose = 0;
    const char *out = NULL, *log_level = NULL;
    const rt_arg flags[] = {
        {"peers", ARG_U64, &peers, "DHT peers up at any time", "Network"},
        {"duration", ARG_F64, &c.duration_s, "virtual seconds measured", "Network"},
        {"warmup", ARG_F64, &c.warmup_s, "virtual seconds run before measuring", "Network"},
        {"median_uptime", ARG_F64, &c.median_uptime_s, "median peer uptime in seconds (0: no churn)", "Network"},
        {"uptime_shape", ARG_F64, &c.uptime_shape, "Weibull shape of uptimes (< 1: heavy-tailed)", "Network"},
        {"hostile", ARG_F64, &c.hostile_share, "share of hostile peers, 0 .. 0.9", "Network"},
        {"hot_keys", ARG_U64, &hot, "hot uids (half the lookups; the sybils' targets)", "Network"},
        {"sybils_per_hot", ARG_U64, &syb, "hostile peers ground next to each hot uid", "Network"},
        {"sybil_bits", ARG_INT, &bits, "leading bits a sybil shares with its uid (0: log2(peers/20)+2)", "Network"},
        {"loss", ARG_F64, &c.loss, "per-message loss probability", "Network"},
        {"rtt_min_ms", ARG_U64, &rtt_min, "shortest link RTT (log-uniform between the two)", "Network"},
        {"rtt_max_ms", ARG_U64, &rtt_max, "longest link RTT", "Network"},
        {"server_share", ARG_F64, &c.server_share, "share of peers serving experts", "Workload"},
        {"servers", ARG_U64, &servers, "that many servers instead of server_share of the peers (0: the share)", "Workload"},
        {"uids_per_server", ARG_U64, &upr, "expert uids per server", "Workload"},
        {"update_period", ARG_F64, &c.update_period_s, "seconds between a server's declarations", "Workload"},
        {"expiration", ARG_F64, &c.expiration_s, "seconds a declaration lives", "Workload"},
        {"trainers", ARG_U64, &trainers, "client-mode peers doing lookups (0: peers/100, at least 4)", "Workload"},
        {"lookup_rate", ARG_F64, &c.lookup_rate, "beam steps per virtual second, all trainers", "Workload"},
        {"prefix_share", ARG_F64, &c.prefix_share, "share of beam steps with a prefix lookup", "Workload"},
        {"alpha", ARG_U64, &alpha, "RPCs in flight per lookup (0: the node's default)", "DHT"},
        {"replicas", ARG_U64, &replicas, "replicas per key (0: default)", "DHT"},
        {"bucket_size", ARG_U64, &k, "k (0: default)", "DHT"},
        {"rpc_timeout_ms", ARG_U64, &c.rpc_timeout_ms, "one RPC's timeout (0: default)", "DHT"},
        {"soft_timeout_ms", ARG_U64, &c.soft_timeout_ms,
         "a lookup stops waiting for a find after this long, the RPC runs on (0: adaptive, from the RTT)", "DHT"},
        {"refresh", ARG_F64, &c.refresh_s, "bucket refresh period in seconds (0: default, < 0: never)", "DHT"},
        {"cache", ARG_FLAG, &c.cache, "gets cache what they find (locally and on the nearest node lacking it)", "DHT"},
        {"no_memo", ARG_FLAG, &c.no_memo, "check every signature with Ed25519 (no verification memo)", "Run"},
        {"seed", ARG_U64, &c.seed, "the run's seed (same seed, same run)", "Run"},
        {"out", ARG_STR, &out, "write the JSON figures here (default: stdout)", "Run"},
        {"verbose", ARG_FLAG, &verbose, "progress on stderr", "Run"},
        {"log_level", ARG_STR, &log_level, "DEBUG, INFO, WARN or ERROR (default ERROR)", "Run"},
    };
    const int nflags = (int)(sizeof flags / sizeof flags[0]);
    char err[256] = "";
    char *pos[1];
    int npos;
    int rc = rt_args_parse(argc, argv, flags, nflags, pos, 0, &npos, err, sizeof err);
    if (rc == 1) {
        rt_args_usage(stdout, "dmoe-dhtsim [flags]   (one simulated DHT network; figures as JSON)", flags, nflags);
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "dmoe-dhtsim: %s\n", err);
        return 2;
    }
    if (log_level && rt_log_parse_level(log_level) >= 0) rt_log_set_level(rt_log_parse_level(log_level));
    else rt_log_set_level(RT_LOG_ERROR);
    c.peers = (size_t)peers;
    c.hot_keys = (size_t)hot;
    c.sybils_per_hot = (size_t)syb;
    c.sybil_bits = bits;
    c.trainers = (size_t)trainers;
    c.alpha = (size_t)alpha;
    c.replicas = (size_t)replicas;
    c.bucket_size = (size_t)k;
    c.uids_per_server = (size_t)upr;
    c.servers = (size_t)servers;
    c.rtt_min_ms = rtt_min > 10000 ? 10001 : (uint32_t)rtt_min;
    c.rtt_max_ms = rtt_max > 10000 ? 10001 : (uint32_t)rtt_max;
    c.verbose = verbose;
    if (!c.trainers) c.trainers = c.peers / 100 > 4 ? c.peers / 100 : 4;
    dht_sim_result r;
    rc = dht_sim_run(&c, &r, err, sizeof err);
    if (rc) {
        fprintf(stderr, "dmoe-dhtsim: %s\n", err[0] ? err : dmoe_strerror(rc));
        return rc == DMOE_EINVAL ? 2 : 1;
    }
    FILE *f = out ? fopen(out, "w") : stdout;
    if (!f) {
        fprintf(stderr, "dmoe-dhtsim: cannot write %s\n", out);
        return 1;
    }
    write_json(f, &c, &r);
    if (out) fclose(f);
    fprintf(stderr,
            "dmoe-dhtsim: %zu peers, %.0f%% hostile: %zu uid lookups, success %.4f, stale %.4f, hops p50 %d p99 %d, "
            "latency p50 %.0f ms p99 %.0f ms, %.0f bytes/lookup; %.1f s wall, %.1f s CPU, %.0f MB peak\n",
            c.peers, c.hostile_share * 100, r.lookups, r.success, r.stale_rate, r.hops_p50, r.hops_p99, r.lat_p50_ms,
            r.lat_p99_ms, r.bytes_per_lookup, r.wall_s, r.cpu_s, r.peak_rss_mb);
    return 0;
}
