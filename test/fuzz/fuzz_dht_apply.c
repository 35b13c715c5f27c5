/* fuzz_dht_apply.c -- libFuzzer harness: hostile DHT requests applied to a live DHT node
 * (actors/dht/dht_node, dht_storage, dht_routing) on the in-memory transport, in virtual time.
 *
 * Each input builds a fresh world, as test/integration/dht/dht_swarm.c does: a loop, a virtual clock
 * (dht_clock.h), a memnet (dht_memnet.h) and two nodes with test keys 1 and 2 at 10.0.0.1 and
 * 10.0.0.2 port 7000 -- A, the target, with small storage limits so that its eviction and owner shares
 * are reached, and B, an honest peer that A's probes and hand-overs can reach. The input is a sequence of
 * records [selector: 1 byte][length: 2 bytes, big-endian][frame body: length bytes] (the last body may be
 * short). Each body is decoded as the server decodes a frame (wire_msg_decode) and, when it is a
 * request, handed to A with dht_node_deliver from the address the selector's low 2 bits pick (B's IP,
 * an IP without a node, loopback, unknown); then virtual time runs (selector >> 2) * 10 seconds, so
 * probes, hand-overs, expirations and sweeps happen between requests. At the end the nodes stop and
 * everything is freed (LeakSanitizer).
 *
 * Invariants checked: A answers every request exactly once, and every answer is a reply with the
 * request's id that A's own peers could decode -- its PEER (or nil), for a dht_find the results
 * (dht_proto_find_rep_decode for its key count), for a dht_store the flags -- and a proof that holds
 * when the request sent a challenge and the answer signs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_node.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/dht/io/dht_memnet.h"
#include "actors/dht/io/dht_proto.h"
#include "actors/dht/trust/dht_ident.h"
#include "runtime/rt_actor.h"
#include "runtime/rt_err.h"
#include "test/fuzz/fuzz_common.h"

/* Requests applied per input: bounds the work of one input. */
#define FUZZ_MAX_REQUESTS 32

static const char *const SOURCES[4] = {"10.0.0.2", "10.9.9.9", "127.0.0.1", "?"};

/* What a request expects of its answer; freed by on_answer. */
typedef struct {
    uint64_t id;
    char method[32];
    size_t n;                               /* keys of a find or store */
    int has_chal;
    uint8_t chal[DHT_CHALLENGE_BYTES];
    dht_clock *clock;
    int *answers;
} expect;

static void check_answer(const expect *x, wire_out *reply)
{
    wire_msg m;
    char err[256];
    fuzz_decode_out(reply, &m);
    FUZZ_CHECK(m.id == x->id);
    FUZZ_CHECK(m.kind == WIRE_REPLY_OK || m.kind == WIRE_REPLY_ERR);
    if (m.kind == WIRE_REPLY_OK) {
        dht_peer_info who;
        FUZZ_CHECK(dht_proto_peer_decode(m.result, "node", &who, err, sizeof err) == 0);
        /* a node may answer with a nil PEER (a reply capped for an unproven requester); when it names
         * itself and signs, the proof must hold */
        if (who.present && x->has_chal && wire_map_get(m.result, "proof"))
            FUZZ_CHECK(dht_proto_proof_check(m.result, x->chal, &who, err, sizeof err) == 0);
        if (strcmp(x->method, "dht_find") == 0) {
            dht_find_rep rep;
            int rc = dht_proto_find_rep_decode(m.result, x->n, dht_clock_now(x->clock), &rep, err, sizeof err);
            FUZZ_CHECK(rc == 0);
            dht_proto_find_rep_free(&rep);
        } else if (strcmp(x->method, "dht_store") == 0) {
            dht_store_rep rep;
            FUZZ_CHECK(dht_proto_store_rep_decode(m.result, x->n, &rep, err, sizeof err) == 0);
        } else {
            FUZZ_CHECK(strcmp(x->method, "dht_ping") == 0);
        }
    }
    wire_msg_free(&m);
}

static void on_answer(void *ctx, wire_out *reply)
{
    expect *x = ctx;
    (*x->answers)++;
    if (reply) check_answer(x, reply);
    free(x);
}

/* expect_of reads what m's answer must satisfy (before A takes m). */
static expect *expect_of(const wire_msg *m, dht_clock *clock, int *answers)
{
    expect *x = calloc(1, sizeof *x);
    FUZZ_CHECK(x != NULL);
    x->id = m->id;
    x->clock = clock;
    x->answers = answers;
    snprintf(x->method, sizeof x->method, "%s", m->method);
    char err[256];
    if (dht_proto_challenge_decode(&m->root, x->chal, &x->has_chal, err, sizeof err) != 0) x->has_chal = 0;
    if (strcmp(m->method, "dht_find") == 0) {
        dht_find_req q;
        if (dht_proto_find_decode(&m->root, &q, err, sizeof err) == 0) x->n = q.n;
    } else if (strcmp(m->method, "dht_store") == 0) {
        dht_store_req *q = malloc(sizeof *q);
        FUZZ_CHECK(q != NULL);
        if (dht_proto_store_decode(&m->root, dht_clock_now(clock), q, err, sizeof err) == 0) x->n = q->n;
        free(q);
    }
    return x;
}

static dht *add_node(rt_loop *l, dht_clock *clock, dht_memnet *net, uint64_t seed, const dht_storage_limits *lim)
{
    dht_cfg c;
    dht_transport t;
    dht_ident key;
    dht_cfg_default(&c);
    c.seed = seed;
    FUZZ_CHECK(dht_ident_for_test(&key, seed) == 0);
    c.ident = &key;
    c.bucket_size = 4;
    c.limits = lim;
    c.clock = clock;
    int ep = dht_memnet_add(net, &c.addr, &t);
    FUZZ_CHECK(ep >= 0);
    dht *d;
    FUZZ_CHECK(dht_node_new(l, &c, &t, &d) == 0);
    dht_memnet_bind(net, ep, d);
    return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    rt_loop *l = rt_loop_new();
    FUZZ_CHECK(l != NULL);
    dht_clock *clock;
    FUZZ_CHECK(dht_vclock_new(l, &clock) == 0);
    dht_memnet *net;
    FUZZ_CHECK(dht_memnet_new(l, clock, 1, &net) == 0);
    dht_storage_limits lim;
    dht_storage_default_limits(&lim);
    lim.max_keys = 32;
    lim.max_bytes = 4096;
    lim.max_subkeys = 8;
    lim.owner_share = 4;
    dht *a = add_node(l, clock, net, 1, &lim);
    dht *b = add_node(l, clock, net, 2, NULL);

    int sent = 0, answers = 0;
    size_t pos = 0;
    while (pos + 3 <= size && sent < FUZZ_MAX_REQUESTS) {
        uint8_t sel = data[pos];
        size_t len = fuzz_be16(data + pos + 1);
        pos += 3;
        if (len > size - pos) len = size - pos;
        wire_msg *m = malloc(sizeof *m);
        FUZZ_CHECK(m != NULL);
        char err[256];
        if (wire_msg_decode(fuzz_dup(data + pos, len), len, m, err, sizeof err) == 0 && m->kind == WIRE_REQUEST) {
            sent++;
            dht_node_deliver(a, m, SOURCES[sel & 3], on_answer, expect_of(m, clock, &answers));
        } else {
            wire_msg_free(m);
            free(m);
        }
        pos += len;
        dht_vclock_run(clock, NULL, NULL, (uint64_t)(sel >> 2) * 10000);
    }
    dht_vclock_run(clock, NULL, NULL, 1000);

    dht_node_stop(a);
    dht_node_stop(b);
    dht_memnet_free(net);
    dht_node_free(a);
    dht_node_free(b);
    rt_loop_free(l);
    dht_vclock_free(clock);
    FUZZ_CHECK(answers == sent);
    return 0;
}
