/* bench_record.c -- what signed records cost a lookup (actors/dht/trust/dht_record.h): an in-memory swarm
 * (dht_memnet, virtual time: the network costs no wall time) where one node declares RECORD_UIDS experts,
 * then another looks them all up with dht_get_experts, RECORD_ROUNDS times with its cache emptied. The
 * wall time of those rounds is the CPU a lookup costs every node of the swarm together (all run in this
 * process). The verifications counted meanwhile (dht_record_verifications: the client's, and the
 * replicas' checks of the cached copies) are then replayed alone after each round -- as many
 * dht_record_open calls of a declaration record -- and timed: their time over the rounds' is the
 * verification's share of a lookup (measured side by side, so a busy machine slows both alike).
 */
#include "cmd/bench/bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/grid/dht_experts.h"
#include "actors/dht/trust/dht_record.h"
#include "runtime/rt_actor.h"

#define RECORD_NODES 16
#define RECORD_UIDS 64
#define RECORD_ROUNDS 20
#define RECORD_LIMIT_MS 60000     /* virtual time allowed for each step */

typedef struct {
    int pending, failed;
    size_t found;
} rec_state;

static int settled(void *arg) { return ((rec_state *)arg)->pending <= 0; }

static void on_boot(void *arg, int err, const char *msg)
{
    rec_state *s = arg;
    s->failed |= err != 0;
    s->pending--;
}

static void on_declared(void *arg, int err, const char *msg, const uint8_t *ok, size_t n)
{
    rec_state *s = arg;
    s->failed |= err != 0;
    s->pending--;
}

static void on_found(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    rec_state *s = arg;
    for (size_t i = 0; i < n; i++) s->found += locs[i].found;
    s->failed |= err != 0;
    s->pending--;
}

/* run drives the swarm until every pending call completed; returns 0, or -1 (a failure or the limit). */
static int run(dht_clock *c, rec_state *s)
{
    dht_vclock_run(c, settled, s, RECORD_LIMIT_MS);
    return s->pending <= 0 && !s->failed ? 0 : -1;
}

void bench_record_figures(bench *b)
{
    rt_loop *l = rt_loop_new();
    dht_clock *clock = NULL;
    dht_memnet *net = NULL;
    dht *nodes[RECORD_NODES] = { 0 };
    size_t n = 0;
    rec_state s = { 0 };
    int ok = l && dht_vclock_new(l, &clock) == 0 && dht_memnet_new(l, clock, 1, &net) == 0;
    char text[WIRE_MADDR_TEXT], err[256];
    for (; ok && n < RECORD_NODES; n++) {
        dht_cfg c;
        dht_transport t;
        dht_ident key;
        dht_cfg_default(&c);
        c.seed = n + 1;
        c.refresh_period_s = -1;
        c.clock = clock;
        ok = dht_ident_for_test(&key, 9000 + n) == 0;
        c.ident = &key;
        int ep = ok ? dht_memnet_add(net, &c.addr, &t) : -1;
        if (ep < 0 || dht_node_new(l, &c, &t, &nodes[n]) != 0) {
            ok = 0;
            break;
        }
        dht_memnet_bind(net, ep, nodes[n]);
        if (n == 0) {
            dht_node_maddr(nodes[0], text, sizeof text);
            continue;
        }
        const char *peers[1] = { text };
        s.pending++;
        ok = dht_node_bootstrap(nodes[n], peers, 1, on_boot, &s, err, sizeof err) == 0 && run(clock, &s) == 0;
    }
    char uidbuf[RECORD_UIDS][24];
    const char *uids[RECORD_UIDS];
    for (int i = 0; i < RECORD_UIDS; i++) {
        snprintf(uidbuf[i], sizeof uidbuf[i], "bench.%d", i);
        uids[i] = uidbuf[i];
    }
    wire_maddr ep;
    char eptext[WIRE_MADDR_TEXT + 64], hex[DHT_ID_HEX_LEN + 1];
    if (ok) {
        dht_id_to_hex(dht_node_id(nodes[1]), hex);
        snprintf(eptext, sizeof eptext, "/ip4/127.0.0.1/tcp/1001/p2p/%s", hex);
        s.pending++;
        ok = wire_maddr_parse(eptext, &ep, NULL, 0) == 0 &&
             dht_declare_experts(nodes[1], uids, RECORD_UIDS, &ep, dht_node_now(nodes[1]) + 300, on_declared, &s, err,
                                 sizeof err) == 0 &&
             run(clock, &s) == 0;
    }
    uint64_t us = 0, vus = 0;
    unsigned long long verified = 0;
    dht_ident k;
    dht_id rid;
    uint8_t sk[DHT_RECORD_SUBKEY_MAX], *rv = NULL;
    size_t sklen = 0, rvlen = 0;
    double rexp = 2e9;
    if (ok) {   /* a record like a declaration, to replay the checks on */
        ok = dht_ident_for_test(&k, 9001) == 0 && dht_id_from_str(&rid, uids[0], strlen(uids[0])) == 0;
        sklen = dht_record_subkey(k.pk, 0, 0, sk);
        ok = ok && dht_record_seal(&k, &rid, sk, sklen, eptext, strlen(eptext), rexp, &rv, &rvlen) == 0;
    }
    for (int r = 0; ok && r < RECORD_ROUNDS; r++) {
        dht *cli = nodes[2];
        for (int i = 0; i < RECORD_UIDS; i++) {   /* a fresh lookup each round */
            dht_id id;
            dht_id_from_str(&id, uids[i], strlen(uids[i]));
            dht_storage_remove(dht_node_cache(cli), &id);
        }
        unsigned long long v0 = dht_record_verifications();
        uint64_t t0 = rt_clock_us();
        s.pending++;
        ok = dht_get_experts(cli, uids, RECORD_UIDS, on_found, &s, err, sizeof err) == 0 && run(clock, &s) == 0;
        us += rt_clock_us() - t0;
        unsigned long long dv = dht_record_verifications() - v0;
        verified += dv;
        t0 = rt_clock_us();
        for (unsigned long long j = 0; ok && j < dv; j++) {
            dht_record o;
            ok = dht_record_open(&rid, sk, sklen, rv, rvlen, rexp, &o, err, sizeof err) == 0;
        }
        vus += rt_clock_us() - t0;
    }
    free(rv);
    if (ok && s.found == (size_t)RECORD_UIDS * RECORD_ROUNDS && us > 0) {
        double lookups = (double)RECORD_UIDS * RECORD_ROUNDS;
        b->rec_lookup_us = (double)us / lookups;
        b->rec_verifies_per_lookup = (double)verified / lookups;
        b->rec_verify_share = (double)vus / (double)us;
        b->rec_verify_us = verified ? (double)vus / (double)verified : 0;
        b->have_record = 1;
    } else {
        fprintf(stderr, "dmoe-bench: the signed-record measurement failed (%zu of %d found)\n", s.found,
                RECORD_UIDS * RECORD_ROUNDS);
        b->failures++;
    }
    for (size_t i = 0; i < n; i++) dht_node_stop(nodes[i]);
    dht_memnet_free(net);
    for (size_t i = 0; i < n; i++) dht_node_free(nodes[i]);
    if (l) rt_loop_free(l);
    dht_vclock_free(clock);
}
