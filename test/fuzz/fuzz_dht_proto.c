/* fuzz_dht_proto.c -- libFuzzer harness: the DHT's decoders (actors/dht/io/dht_proto) and the multiaddr
 * parser (wire/wire_maddr) on hostile bytes.
 *
 * An input that starts like a msgpack map is a frame body: wire_msg_decode, then every request decoder
 * on the root map whatever the method (peer, challenge, dht_store, dht_find), or for a reply every reply
 * decoder on its result (store flags, find results, the identity proof against a fixed challenge), with
 * the count a caller would expect taken from the reply itself. Any other input is address text:
 * wire_maddr_parse, wire_maddr_parse_listen and dht_proto_parse_peer.
 *
 * Invariants checked (round trips through the library's own encoders): a decoded dht_store or dht_find
 * request encodes again and decodes to the same records; a decoded find reply likewise; a parsed
 * multiaddr formats and parses back to itself (wire_maddr.h promises parse(format(a)) == a).
 */
#include <stdlib.h>
#include <string.h>

#include "actors/dht/io/dht_proto.h"
#include "runtime/rt_err.h"
#include "test/fuzz/fuzz_common.h"
#include "wire/wire_maddr.h"

/* The DHT time the decoders check expirations against. */
#define FUZZ_NOW 1.7e9

static const uint8_t CHALLENGE[DHT_CHALLENGE_BYTES] = "fuzz challenge, thirty-two bytes";

static int bytes_eq(const uint8_t *a, size_t na, const uint8_t *b, size_t nb)
{
    return na == nb && (na == 0 || memcmp(a, b, na) == 0);
}

static int peer_eq(const dht_peer_info *a, const dht_peer_info *b)
{
    if (a->present != b->present) return 0;
    return !a->present || (dht_id_eq(&a->id, &b->id) && dht_addr_eq(&a->addr, &b->addr));
}

static void store_round_trip(const dht_store_req *q)
{
    wire_msg m;
    fuzz_decode_out(dht_proto_store_req(3, &q->sender, q->items, q->n, q->in_cache, CHALLENGE), &m);
    dht_store_req *r = malloc(sizeof *r);
    FUZZ_CHECK(r != NULL);
    char err[256];
    FUZZ_CHECK(dht_proto_store_decode(&m.root, FUZZ_NOW, r, err, sizeof err) == 0);
    FUZZ_CHECK(r->n == q->n && r->in_cache == q->in_cache && peer_eq(&r->sender, &q->sender));
    for (size_t i = 0; i < q->n; i++) {
        const dht_store_item *a = &q->items[i], *b = &r->items[i];
        FUZZ_CHECK(dht_id_eq(&a->key, &b->key));
        FUZZ_CHECK((a->subkey == NULL) == (b->subkey == NULL));
        FUZZ_CHECK(!a->subkey || bytes_eq(a->subkey, a->sklen, b->subkey, b->sklen));
        FUZZ_CHECK(bytes_eq(a->value, a->vlen, b->value, b->vlen));
        FUZZ_CHECK(a->expiration == b->expiration);
    }
    free(r);
    wire_msg_free(&m);
}

static void find_round_trip(const dht_find_req *q)
{
    wire_msg m;
    fuzz_decode_out(dht_proto_find_req(4, &q->sender, q->keys, q->n, NULL), &m);
    dht_find_req r;
    char err[256];
    FUZZ_CHECK(dht_proto_find_decode(&m.root, &r, err, sizeof err) == 0);
    FUZZ_CHECK(r.n == q->n && peer_eq(&r.sender, &q->sender));
    for (size_t i = 0; i < q->n; i++) FUZZ_CHECK(dht_id_eq(&r.keys[i], &q->keys[i]));
    wire_msg_free(&m);
}

/* find_rep_round_trip: the reply rep (n results) encoded as a node would answer, decoded again. */
static void find_rep_round_trip(const dht_find_rep *rep)
{
    dht_find_entry *e = calloc(rep->n ? rep->n : 1, sizeof *e);
    dht_stored *st = calloc(rep->n ? rep->n : 1, sizeof *st);
    FUZZ_CHECK(e && st);
    for (size_t i = 0; i < rep->n; i++) {
        const dht_find_result *r = &rep->results[i];
        if (r->type == DHT_FOUND_VALUE || r->type == DHT_FOUND_DICT) {
            st[i] = (dht_stored){.is_dict = r->type == DHT_FOUND_DICT, .value = r->value, .vlen = r->vlen,
                                 .subs = r->subs, .nsubs = r->nsubs, .expiration = r->expiration};
            e[i].found = &st[i];
        }
        e[i].nearest = r->nearest;
        e[i].n_nearest = r->n_nearest;
    }
    wire_msg m;
    fuzz_decode_out(dht_proto_find_reply(5, &rep->node, e, rep->n, NULL), &m);
    FUZZ_CHECK(m.kind == WIRE_REPLY_OK);
    dht_find_rep again;
    char err[256];
    int rc = dht_proto_find_rep_decode(m.result, rep->n, FUZZ_NOW, &again, err, sizeof err);
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(again.n == rep->n && peer_eq(&again.node, &rep->node));
    for (size_t i = 0; i < rep->n; i++) {
        const dht_find_result *a = &rep->results[i], *b = &again.results[i];
        FUZZ_CHECK(a->type == b->type && a->n_nearest == b->n_nearest);
        for (size_t j = 0; j < a->n_nearest; j++) {
            FUZZ_CHECK(dht_id_eq(&a->nearest[j].id, &b->nearest[j].id));
            FUZZ_CHECK(dht_addr_eq(&a->nearest[j].addr, &b->nearest[j].addr));
        }
        if (a->type == DHT_FOUND_VALUE) FUZZ_CHECK(bytes_eq(a->value, a->vlen, b->value, b->vlen));
        if (a->type == DHT_FOUND_DICT) FUZZ_CHECK(a->nsubs == b->nsubs);
        if (a->type != DHT_FOUND_NONE) FUZZ_CHECK(a->expiration == b->expiration);
    }
    dht_proto_find_rep_free(&again);
    wire_msg_free(&m);
    free(e);
    free(st);
}

/* array_size returns the size of the array under key of map (a map), or dflt. */
static size_t array_size(const msgpack_object *map, const char *key, size_t dflt)
{
    const msgpack_object *a = map && map->type == MSGPACK_OBJECT_MAP ? wire_map_get(map, key) : NULL;
    return a && a->type == MSGPACK_OBJECT_ARRAY ? a->via.array.size : dflt;
}

static void request(const wire_msg *m)
{
    char err[256];
    dht_peer_info p;
    (void)dht_proto_peer_decode(&m->root, "node", &p, err, sizeof err);
    uint8_t chal[DHT_CHALLENGE_BYTES];
    int has;
    (void)dht_proto_challenge_decode(&m->root, chal, &has, err, sizeof err);

    dht_store_req *sq = malloc(sizeof *sq);
    FUZZ_CHECK(sq != NULL);
    int rc = dht_proto_store_decode(&m->root, FUZZ_NOW, sq, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == DMOE_EINVAL || rc == DMOE_ETOOBIG);
    if (rc == 0) {
        FUZZ_CHECK(sq->n >= 1 && sq->n <= DHT_PROTO_MAX_KEYS);
        store_round_trip(sq);
    }
    free(sq);

    dht_find_req fq;
    rc = dht_proto_find_decode(&m->root, &fq, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == DMOE_EINVAL || rc == DMOE_ETOOBIG);
    if (rc == 0) {
        FUZZ_CHECK(fq.n >= 1 && fq.n <= DHT_PROTO_MAX_KEYS);
        find_round_trip(&fq);
    }
}

static void reply(const wire_msg *m)
{
    char err[256];
    const msgpack_object *res = m->result;
    dht_store_rep sr;
    (void)dht_proto_store_rep_decode(res, array_size(res, "stored", 1), &sr, err, sizeof err);

    dht_find_rep fr;
    int rc = dht_proto_find_rep_decode(res, array_size(res, "results", 1), FUZZ_NOW, &fr, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == DMOE_EINVAL || rc == DMOE_ETOOBIG || rc == DMOE_ENOMEM);
    if (rc == 0) {
        find_rep_round_trip(&fr);
        dht_proto_find_rep_free(&fr);
    }

    dht_peer_info who;
    if (res->type == MSGPACK_OBJECT_MAP && dht_proto_peer_decode(res, "node", &who, err, sizeof err) == 0 &&
        who.present)
        (void)dht_proto_proof_check(res, CHALLENGE, &who, err, sizeof err);
}

static int maddr_eq(const wire_maddr *a, const wire_maddr *b)
{
    return strcmp(a->host, b->host) == 0 && a->port == b->port && strcmp(a->peer_id, b->peer_id) == 0 &&
           a->family == b->family;
}

static void address(const uint8_t *data, size_t size)
{
    char text[512];
    if (size >= sizeof text) return;
    memcpy(text, data, size);
    text[size] = 0;
    char err[256], buf[WIRE_MADDR_TEXT];
    wire_maddr a, b;
    for (int listen = 0; listen < 2; listen++) {
        int rc = listen ? wire_maddr_parse_listen(text, &a, err, sizeof err) : wire_maddr_parse(text, &a, err, sizeof err);
        if (rc != 0) continue;
        wire_maddr_format(&a, buf, sizeof buf);
        FUZZ_CHECK(wire_maddr_parse_listen(buf, &b, err, sizeof err) == 0);
        FUZZ_CHECK(maddr_eq(&a, &b));
    }
    dht_addr addr;
    dht_id id;
    int has_id;
    (void)dht_proto_parse_peer(text, &addr, &id, &has_id, err, sizeof err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size == 0) return 0;
    if (!((data[0] >= 0x80 && data[0] <= 0x8f) || data[0] == 0xde || data[0] == 0xdf)) {
        address(data, size);
        return 0;
    }
    wire_msg m;
    char err[256];
    if (wire_msg_decode(fuzz_dup(data, size), size, &m, err, sizeof err) != 0) return 0;
    if (m.kind == WIRE_REQUEST) request(&m);
    else if (m.kind == WIRE_REPLY_OK) reply(&m);
    wire_msg_free(&m);
    return 0;
}
