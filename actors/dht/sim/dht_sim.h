/* dht_sim.h -- the DHT at internet scale, by simulation: many peers on the in-memory transport and a
 * virtual clock, with latency, loss, churn and hostile peers, and the figures of expert lookups.
 *
 * What runs is the real DHT (dht_node, its lookups, bootstrap, signed records and expert declarations):
 * every peer is a dht node on one memnet (dht_memnet.h) and one virtual clock (dht_clock.h). Around it
 * the simulator puts
 *  - a network: every link has a fixed RTT drawn log-uniformly in [rtt_min_ms, rtt_max_ms] from a hash
 *    of its two ends, each way half of it; every message is lost with probability `loss`;
 *  - churn: a peer stays up for a Weibull-distributed time (shape uptime_shape, 0.5 by default: heavy-
 *    tailed, as measured session lengths of deployed DHTs; median median_uptime_s), then leaves for good
 *    (its host goes silent: calls to it time out); a new peer, with a new key and address, joins in its
 *    place at once (so about `peers` stay up) and bootstraps from a random live peer. The first peers
 *    stay up for a residual time (the rest of a length-biased session), as in a network that has run
 *    for long, so churn starts at its steady rate: peers / mean uptime;
 *  - servers (server_share of the peers) declaring uids_per_server expert uids each every
 *    update_period_s (dht_declare_experts: signed records at the uid and its prefix); a server's
 *    replacement takes over its uids;
 *  - trainers (client-mode peers that never leave) doing, at lookup_rate per virtual second, one beam
 *    step: with probability prefix_share a prefix lookup (dht_get_signed of "ffn.X."), then a uid
 *    lookup (dht_get_signed of the uid); half of the uid lookups go to hot_keys hot uids;
 *  - hostile peers (hostile_share of the peers; sybils among them have ids ground next to the hot uids,
 *    sybil_bits leading bits in common): they prove their own ids (so they enter tables) but drop half
 *    of the finds they get, answer the others with a forged record and, as the nearest peers, only
 *    fellow hostile peers nearest to the key (an eclipse attempt), keep the first copy of each record
 *    they are given and then lie "stored" to every update (stale values), and cannot sign for others.
 *
 * A uid lookup succeeds when the record it chooses (the live record with the latest expiration, as
 * dht_get_experts chooses) is signed by the uid's current server while that server is up; stale when the
 * chosen record's signer has left; missing when no record came back. Only lookups of uids whose server is
 * up and has declared them once are counted.
 *
 * Before measuring, the peers' routing tables are filled as a long-running network's would be (k live
 * peers per bucket, drawn from the peers of that bucket's range), the trainers' too, then warmup_s of
 * virtual time run (declarations, churn) before the measured duration_s.
 *
 * Speed. Every signature is made and checked with Ed25519, as the nodes would; but a record is checked
 * by every node it is stored on and every client that gets it, so the run turns on the verification
 * memo (dht_ident_memo_enable: identical bytes verify identically, so its answers are exact) unless
 * no_memo. Peers that left cost nothing: their nodes are freed.
 *
 * Order: dht_sim_defaults -> change fields -> dht_sim_run -> read dht_sim_result. One run per call;
 * it owns its loop, clock and memnet. Single-threaded.
 */
#ifndef DMOE_DHT_SIM_H
#define DMOE_DHT_SIM_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t peers;              /* DHT peers up at any time (trainers not counted) */
    double duration_s;         /* virtual seconds measured */
    double warmup_s;           /* virtual seconds before measuring */
    double median_uptime_s;    /* 0: no churn */
    double uptime_shape;       /* Weibull shape of uptimes (< 1: heavy-tailed) */
    double hostile_share;      /* 0 .. 0.9 of the peers */
    size_t hot_keys;           /* uids half the lookups go to, and the sybils' targets */
    size_t sybils_per_hot;     /* hostile peers with ids ground next to each hot uid (part of the share) */
    int sybil_bits;            /* leading bits a sybil shares with its hot uid (0: log2(peers / 20) + 2) */
    double loss;               /* per-message loss probability */
    uint32_t rtt_min_ms, rtt_max_ms;
    double server_share;       /* peers that serve experts */
    size_t servers;            /* that many servers instead (0: server_share of the peers) */
    size_t uids_per_server;
    double update_period_s;    /* between a server's declarations */
    double expiration_s;       /* a declaration's lifetime */
    size_t trainers;           /* client-mode peers doing the lookups (0: peers / 100, at least 4) */
    double lookup_rate;        /* beam steps per virtual second, all trainers together */
    double prefix_share;       /* of beam steps: a prefix lookup first */
    /* The DHT's tunables under test (0: the node's default). */
    size_t alpha, replicas, bucket_size;
    uint64_t rpc_timeout_ms;
    uint64_t soft_timeout_ms;  /* a lookup's soft timeout (0: adaptive, dht_node_soft_timeout_ms) */
    double refresh_s;          /* < 0: no bucket refresh */
    int cache;                 /* 1: gets cache (locally and on the nearest node lacking the value) */
    uint64_t seed;
    int no_memo;               /* 1: verify every signature with Ed25519 (no dht_ident_memo_enable) */
    int verbose;               /* progress lines on stderr */
} dht_sim_cfg;

typedef struct {
    /* uid lookups */
    size_t lookups, ok, stale, missing, hot_lookups, hot_ok;
    double success;            /* ok / lookups */
    int hops_p50, hops_p99, hops_max;
    double lat_p50_ms, lat_p99_ms;     /* virtual time */
    double rpcs_per_lookup;            /* find RPCs a lookup made (its own count) */
    double slow_per_lookup;            /* of them, finds that passed the soft timeout */
    double msgs_per_lookup, bytes_per_lookup;  /* trainers' traffic, both ways, per lookup of either kind */
    double stale_rate;
    /* prefix lookups */
    size_t prefix_lookups, prefix_ok;
    /* the rest of the network */
    size_t declarations, declarations_ok;
    size_t joins, leaves, boot_failed;
    size_t hostile, sybils, servers;
    uint64_t messages;         /* requests delivered in the whole run */
    uint64_t record_verifications;             /* records checked (dht_record_verifications) */
    uint64_t signs, verifies, memo_hits;       /* Ed25519 signatures made, checked, answered by the memo */
    /* the simulation itself */
    double setup_s, run_s, wall_s, cpu_s;      /* real seconds; cpu_s: user + system (getrusage) */
    double peak_rss_mb, bytes_per_peer;        /* bytes_per_peer: RSS growth over setup / peers */
    double virtual_s;
} dht_sim_result;

/* dht_sim_defaults fills c with the defaults: 1,000 peers, 60 s measured after 60 s warmup, median
 * uptime 1 h (shape 0.5), no hostile peers, 8 hot keys with 4 sybils each when hostile, no loss, RTT
 * 20-300 ms, 5% servers with 2 uids each, update period 30 s, expiration 60 s, 20 beam steps per second,
 * prefix share 0.5, the node's defaults for the tunables (refresh included), caching off, seed 1. */
void dht_sim_defaults(dht_sim_cfg *c);

/* dht_sim_run runs one simulation of c and fills *out. Returns 0, DMOE_EINVAL (a field out of range,
 * err names it), DMOE_ENOMEM. */
int dht_sim_run(const dht_sim_cfg *c, dht_sim_result *out, char *err, size_t errlen);

#endif
