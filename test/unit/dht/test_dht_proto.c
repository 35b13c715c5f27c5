/* test_dht_proto.c -- the DHT RPC encoders and decoders (actors/dht_proto.c): round trips of ping,
 * store and find, identity challenges and proofs, and every malformed field the decoders must refuse
 * with its error code. */
#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/io/dht_proto.h"
#include "runtime/rt_err.h"

static const double NOW = 1.7e9;

static dht_peer_info peer(int seed)
{
    dht_peer_info p;
    memset(&p, 0, sizeof p);
    p.present = 1;
    uint64_t rng = (uint64_t)seed;
    dht_id_random(&p.id, &rng);
    snprintf(p.addr.host, sizeof p.addr.host, "127.0.0.%d", seed);
    p.addr.port = (uint16_t)(4000 + seed);
    return p;
}

/* decode flattens o into m (a request or a reply). */
static void decode(wire_out *o, wire_msg *m)
{
    uint8_t *f;
    size_t n;
    cr_assert_eq(wire_out_flatten(o, &f, &n), 0);
    char err[200];
    cr_assert_eq(wire_msg_decode(f, n, m, err, sizeof err), 0, "%s", err);
}

/* raw builds a request {id, method, <fields packed by fn>} and decodes it. */
typedef void (*pack_fn)(msgpack_packer *pk, int variant);
static void raw(const char *method, int nfields, pack_fn fn, int variant, wire_msg *m)
{
    wire_out *o = wire_out_new();
    wire_request_begin(o, 9, method, (uint32_t)nfields + 2);
    fn(wire_out_pk(o), variant);
    decode(o, m);
}

Test(dht_proto, ping_round_trip, .timeout = 10)
{
    dht_peer_info a = peer(1), got;
    wire_msg m;
    decode(dht_proto_ping_req(5, &a, NULL), &m);
    cr_assert_str_eq(m.method, "dht_ping");
    cr_assert_eq(dht_proto_peer_decode(&m.root, "node", &got, NULL, 0), 0);
    cr_assert(got.present && dht_id_eq(&got.id, &a.id) && dht_addr_eq(&got.addr, &a.addr));
    wire_msg_free(&m);

    decode(dht_proto_ping_req(6, NULL, NULL), &m);
    cr_assert_eq(dht_proto_peer_decode(&m.root, "node", &got, NULL, 0), 0);
    cr_assert_eq(got.present, 0, "client mode sends nil");
    wire_msg_free(&m);

    decode(dht_proto_ping_reply(7, &a, NULL), &m);
    cr_assert_eq(m.kind, WIRE_REPLY_OK);
    cr_assert_eq(dht_proto_peer_decode(m.result, "node", &got, NULL, 0), 0);
    cr_assert(dht_id_eq(&got.id, &a.id));
    wire_msg_free(&m);
}

/* ---- identity: challenges and proofs ---- */

static void pack_short_challenge(msgpack_packer *pk, int variant)
{
    wire_pack_str(pk, "node");
    msgpack_pack_nil(pk);
    wire_pack_str(pk, "challenge");
    msgpack_pack_bin(pk, 31);
    msgpack_pack_bin_body(pk, "0123456789012345678901234567890", 31);
}

Test(dht_proto, requests_carry_the_challenge, .timeout = 10)
{
    dht_peer_info a = peer(3);
    uint8_t chal[DHT_CHALLENGE_BYTES], got[DHT_CHALLENGE_BYTES];
    for (int i = 0; i < DHT_CHALLENGE_BYTES; i++) chal[i] = (uint8_t)(200 - i);
    dht_id k = a.id;
    dht_store_item it = { .key = a.id, .value = (const uint8_t *)"v", .vlen = 1, .expiration = NOW + 10 };
    for (int v = 0; v < 4; v++) {
        wire_msg m;
        decode(v == 0 ? dht_proto_ping_req(1, &a, chal)
               : v == 1 ? dht_proto_find_req(2, &a, &k, 1, chal)
               : v == 2 ? dht_proto_store_req(3, &a, &it, 1, 0, chal)
                        : dht_proto_find_req(4, &a, &k, 1, NULL), &m);
        int has = -1;
        cr_assert_eq(dht_proto_challenge_decode(&m.root, got, &has, NULL, 0), 0);
        cr_expect_eq(has, v < 3, "variant %d", v);
        if (v < 3) cr_expect_eq(memcmp(got, chal, sizeof chal), 0);
        wire_msg_free(&m);
    }
    wire_msg m;
    int has;
    char err[200];
    raw("dht_ping", 2, pack_short_challenge, 0, &m);
    cr_expect_eq(dht_proto_challenge_decode(&m.root, got, &has, err, sizeof err), DMOE_EINVAL);
    wire_msg_free(&m);
}

/* proven_reply encodes a ping reply from `as` carrying a proof by k for `signed_as` and checks it against
 * chal: returns what dht_proto_proof_check returns. */
static int proven_reply(const dht_ident *k, const dht_peer_info *signed_as, const dht_peer_info *as,
                        const uint8_t *sign_chal, const uint8_t *chal, int with_proof)
{
    dht_proof pr;
    cr_assert_eq(dht_proto_proof_make(k, sign_chal, signed_as, &pr), 0);
    wire_msg m;
    decode(dht_proto_ping_reply(3, as, with_proof ? &pr : NULL), &m);
    dht_peer_info who;
    char err[200] = "";
    cr_assert_eq(dht_proto_peer_decode(m.result, "node", &who, err, sizeof err), 0, "%s", err);
    int rc = dht_proto_proof_check(m.result, chal, &who, err, sizeof err);
    wire_msg_free(&m);
    return rc;
}

Test(dht_proto, proofs_bind_the_challenge_the_key_and_the_address, .timeout = 10)
{
    dht_ident k, other;
    cr_assert_eq(dht_ident_for_test(&k, 7), 0);
    cr_assert_eq(dht_ident_for_test(&other, 8), 0);
    dht_peer_info me = { .present = 1, .addr = { "127.0.0.1", 4000 } };
    dht_ident_id(&k, &me.id);
    uint8_t chal[DHT_CHALLENGE_BYTES], chal2[DHT_CHALLENGE_BYTES];
    for (int i = 0; i < DHT_CHALLENGE_BYTES; i++) {
        chal[i] = (uint8_t)i;
        chal2[i] = (uint8_t)(i + (i == 17));
    }
    cr_expect_eq(proven_reply(&k, &me, &me, chal, chal, 1), 0, "a proof by the id's key verifies");
    cr_expect_eq(proven_reply(&k, &me, &me, chal, chal2, 1), DMOE_EINVAL, "another challenge (a replay)");
    cr_expect_eq(proven_reply(&k, &me, &me, chal, chal, 0), DMOE_EINVAL, "no proof at all");
    cr_expect_eq(proven_reply(&other, &me, &me, chal, chal, 1), DMOE_EINVAL, "a key whose hash is another id");
    dht_peer_info moved = me;
    moved.addr.port = 4001;
    cr_expect_eq(proven_reply(&k, &me, &moved, chal, chal, 1), DMOE_EINVAL, "a reply naming another address");
    cr_expect_eq(proven_reply(&k, &moved, &moved, chal, chal, 1), 0, "the new address, signed");
    dht_peer_info nil = { 0 };
    dht_proof pr;
    cr_expect_eq(dht_proto_proof_make(&k, chal, &nil, &pr), DMOE_EINVAL, "client mode has no address to sign");
}

Test(dht_proto, store_round_trip, .timeout = 10)
{
    dht_peer_info a = peer(2);
    dht_store_item it[3];
    uint8_t sk[2] = { 0xd0, 0x05 }, v1[3] = { 1, 2, 3 }, v2[1] = { 0xc0 };
    dht_id_from_str(&it[0].key, "ffn.1.2", 7);
    it[0] = (dht_store_item){ it[0].key, NULL, 0, v1, 3, NOW + 10 };
    dht_id_from_str(&it[1].key, "ffn.1.", 6);
    it[1] = (dht_store_item){ it[1].key, sk, 2, v2, 1, NOW + 20.5 };
    it[2] = (dht_store_item){ it[1].key, sk, 2, v2, 0, NOW - 5 };
    wire_msg m;
    decode(dht_proto_store_req(11, &a, it, 3, 1, NULL), &m);
    dht_store_req r;
    char err[200] = "";
    cr_assert_eq(dht_proto_store_decode(&m.root, NOW, &r, err, sizeof err), 0, "%s", err);
    cr_assert_eq(r.n, 3);
    cr_assert_eq(r.in_cache, 1);
    cr_assert(r.sender.present && dht_id_eq(&r.sender.id, &a.id));
    cr_assert(dht_id_eq(&r.items[0].key, &it[0].key) && r.items[0].subkey == NULL && r.items[0].vlen == 3);
    cr_assert_arr_eq(r.items[0].value, v1, 3);
    cr_assert_eq(r.items[1].sklen, 2);
    cr_assert_arr_eq(r.items[1].subkey, sk, 2);
    cr_assert_float_eq(r.items[1].expiration, NOW + 20.5, 1e-6);
    cr_assert_eq(r.items[2].vlen, 0);
    wire_msg_free(&m);

    uint8_t ok[3] = { 1, 0, 1 };
    decode(dht_proto_store_reply(11, &a, ok, 3, NULL), &m);
    dht_store_rep rep;
    cr_assert_eq(dht_proto_store_rep_decode(m.result, 3, &rep, err, sizeof err), 0, "%s", err);
    cr_assert(rep.stored[0] && !rep.stored[1] && rep.stored[2]);
    cr_assert_eq(dht_proto_store_rep_decode(m.result, 2, &rep, err, sizeof err), DMOE_EINVAL, "count mismatch");
    wire_msg_free(&m);
    cr_assert_null(dht_proto_store_req(1, &a, it, 0, 0, NULL));
    cr_assert_null(dht_proto_store_req(1, &a, it, DHT_PROTO_MAX_KEYS + 1, 0, NULL));
}

Test(dht_proto, find_round_trip, .timeout = 10)
{
    dht_peer_info a = peer(3);
    dht_id keys[3];
    for (int i = 0; i < 3; i++) dht_id_from_int(&keys[i], i);
    wire_msg m;
    decode(dht_proto_find_req(12, NULL, keys, 3, NULL), &m);
    dht_find_req fr;
    char err[200] = "";
    cr_assert_eq(dht_proto_find_decode(&m.root, &fr, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fr.n, 3);
    cr_assert_eq(fr.sender.present, 0);
    cr_assert(dht_id_eq(&fr.keys[2], &keys[2]));
    wire_msg_free(&m);

    dht_node near[2];
    for (int i = 0; i < 2; i++) {
        dht_peer_info p = peer(10 + i);
        near[i] = (dht_node){ p.id, p.addr, 0, 0 };
    }
    const uint8_t val[2] = { 0xa1, 'x' }, sk1[1] = { 1 }, sk2[1] = { 2 }, d1[1] = { 7 }, d2[1] = { 8 };
    dht_subitem subs[2] = { { sk1, 1, d1, 1, NOW + 5 }, { sk2, 1, d2, 1, NOW + 6 } };
    dht_stored plain = { 0, val, 2, NULL, 0, NOW + 3 }, dict = { 1, NULL, 0, subs, 2, NOW + 6 };
    dht_find_entry e[3] = { { NULL, near, 2 }, { &plain, near, 1 }, { &dict, NULL, 0 } };
    decode(dht_proto_find_reply(12, &a, e, 3, NULL), &m);
    dht_find_rep rep;
    cr_assert_eq(dht_proto_find_rep_decode(m.result, 3, NOW, &rep, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rep.results[0].type, DHT_FOUND_NONE);
    cr_assert_eq(rep.results[0].n_nearest, 2);
    cr_assert(dht_id_eq(&rep.results[0].nearest[1].id, &near[1].id));
    cr_assert(dht_addr_eq(&rep.results[0].nearest[1].addr, &near[1].addr));
    cr_assert_eq(rep.results[1].type, DHT_FOUND_VALUE);
    cr_assert_eq(rep.results[1].vlen, 2);
    cr_assert_arr_eq(rep.results[1].value, val, 2);
    cr_assert_float_eq(rep.results[1].expiration, NOW + 3, 1e-6);
    cr_assert_eq(rep.results[2].type, DHT_FOUND_DICT);
    cr_assert_eq(rep.results[2].nsubs, 2);
    cr_assert_eq(rep.results[2].subs[1].value[0], 8);
    cr_assert(rep.node.present && dht_id_eq(&rep.node.id, &a.id));
    dht_proto_find_rep_free(&rep);
    dht_proto_find_rep_free(&rep);   /* idempotent */
    cr_assert_eq(dht_proto_find_rep_decode(m.result, 2, NOW, &rep, err, sizeof err), DMOE_EINVAL);
    wire_msg_free(&m);
}

Test(dht_proto, peer_addresses, .timeout = 10)
{
    dht_addr a;
    dht_id id;
    int has;
    char err[200];
    cr_assert_eq(dht_proto_parse_peer("/ip4/127.0.0.1/tcp/5000", &a, &id, &has, err, sizeof err), 0);
    cr_assert_eq(has, 0);
    cr_assert_eq(dht_proto_parse_peer("/ip4/127.0.0.1/tcp/5000/p2p/000102030405060708090a0b0c0d0e0f", &a, &id, &has,
                                      err, sizeof err), 0);
    cr_assert(has && id.b[15] == 15 && a.port == 5000);
    cr_assert_eq(dht_proto_parse_peer("/ip6/::1/tcp/5000", &a, &id, &has, err, sizeof err), 0);
    cr_assert_eq(dht_proto_parse_peer("/dns/example.com/tcp/5000", &a, &id, &has, err, sizeof err), DMOE_EINVAL);
    cr_assert_eq(dht_proto_parse_peer("/ip4/127.0.0.1/tcp/5000/p2p/abcd", &a, &id, &has, err, sizeof err), DMOE_EINVAL,
                 "short ids are refused");
    cr_assert_eq(dht_proto_parse_peer("127.0.0.1:5000", &a, &id, &has, err, sizeof err), DMOE_EINVAL);
    cr_assert_eq(dht_proto_parse_peer("/ip4/300.0.0.1/tcp/5000", &a, &id, &has, err, sizeof err), DMOE_EINVAL);
    cr_assert(strstr(err, "300.0.0.1") != NULL, "the message names the address: %s", err);
}

/* ---- malformed requests ---- */

static void pk_bin(msgpack_packer *pk, const void *p, size_t n)
{
    msgpack_pack_bin(pk, n);
    if (n) msgpack_pack_bin_body(pk, p, n);
}

static void pk_str(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

/* A store request with one field broken per variant; variant 0 is well-formed. */
static void pack_store(msgpack_packer *pk, int v)
{
    static uint8_t id[17], big[DHT_MAX_VALUE_BYTES + 1], bigsk[DHT_MAX_SUBKEY_BYTES + 1];
    uint32_t n = v == 1 ? DHT_PROTO_MAX_KEYS + 1 : 1;
    pk_str(pk, "keys");
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) pk_bin(pk, id, v == 2 ? 15 : v == 3 ? 17 : 16);
    pk_str(pk, "subkeys");
    msgpack_pack_array(pk, v == 4 ? 2 : n);
    for (uint32_t i = 0; i < (v == 4 ? 2 : n); i++) {
        if (v == 5) pk_str(pk, "sk");
        else if (v == 6) pk_bin(pk, bigsk, sizeof bigsk);
        else if (v == 12) pk_bin(pk, bigsk, 0);
        else msgpack_pack_nil(pk);
    }
    pk_str(pk, "values");
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        if (v == 7) pk_bin(pk, big, sizeof big);
        else if (v == 8) msgpack_pack_int(pk, 3);
        else pk_bin(pk, "v", 1);
    }
    pk_str(pk, "expirations");
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        if (v == 9) msgpack_pack_double(pk, NOW + DHT_MAX_HORIZON + 100);
        else if (v == 10) msgpack_pack_double(pk, NAN);
        else if (v == 11) pk_str(pk, "soon");
        else msgpack_pack_double(pk, NOW + 10);
    }
    pk_str(pk, "sender");
    if (v == 13) {
        msgpack_pack_map(pk, 2);
        pk_str(pk, "id");
        pk_str(pk, "00112233445566778899aabbccddeeff");
        pk_str(pk, "addr");
        pk_str(pk, "/ip4/127.0.0.1/tcp/80/p2p/ffeeddccbbaa99887766554433221100");
    } else if (v == 14) {
        msgpack_pack_map(pk, 2);
        pk_str(pk, "id");
        pk_str(pk, "0011");
        pk_str(pk, "addr");
        pk_str(pk, "/ip4/127.0.0.1/tcp/80");
    } else if (v == 15) {
        msgpack_pack_int(pk, 5);
    } else {
        msgpack_pack_nil(pk);
    }
}

Test(dht_proto, malformed_store_requests, .timeout = 10)
{
    static const int expect[] = { 0, DMOE_ETOOBIG, DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL, DMOE_ETOOBIG,
                                  DMOE_ETOOBIG, DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL,
                                  DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL };
    for (int v = 0; v < (int)(sizeof expect / sizeof expect[0]); v++) {
        wire_msg m;
        raw("dht_store", 5, pack_store, v, &m);
        static dht_store_req r;
        char err[200] = "";
        int rc = dht_proto_store_decode(&m.root, NOW, &r, err, sizeof err);
        cr_expect_eq(rc, expect[v], "variant %d: got %d (%s)", v, rc, err);
        if (rc) cr_expect(err[0] != 0, "variant %d has a message", v);
        wire_msg_free(&m);
    }
}

static void pack_find(msgpack_packer *pk, int v)
{
    static uint8_t id[16];
    if (v == 99) return;
    uint32_t n = v == 1 ? DHT_PROTO_MAX_KEYS + 1 : v == 2 ? 0 : 2;
    pk_str(pk, "keys");
    if (v == 3) {
        pk_str(pk, "notalist");
    } else {
        msgpack_pack_array(pk, n);
        for (uint32_t i = 0; i < n; i++) {
            if (v == 4 && i == 1) pk_str(pk, "0123456789abcdef");
            else pk_bin(pk, id, 16);
        }
    }
    pk_str(pk, "sender");
    if (v == 5) pk_str(pk, "me");
    else msgpack_pack_nil(pk);
}

Test(dht_proto, malformed_find_requests, .timeout = 10)
{
    static const int expect[] = { 0, DMOE_ETOOBIG, DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL };
    for (int v = 0; v < 6; v++) {
        wire_msg m;
        raw("dht_find", 2, pack_find, v, &m);
        dht_find_req r;
        char err[200] = "";
        int rc = dht_proto_find_decode(&m.root, &r, err, sizeof err);
        cr_expect_eq(rc, expect[v], "variant %d: got %d (%s)", v, rc, err);
        wire_msg_free(&m);
    }
    wire_msg m;
    raw("dht_find", 0, pack_find, 99, &m);   /* no fields at all */
    dht_find_req r;
    cr_expect_eq(dht_proto_find_decode(&m.root, &r, NULL, 0), DMOE_EINVAL);
    wire_msg_free(&m);
}

/* A find reply ({results: [one result], node: nil}) with one field broken per variant. */
static void pack_find_reply(msgpack_packer *pk, int v)
{
    static uint8_t id[16];
    msgpack_pack_map(pk, 2);
    pk_str(pk, "results");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 4);
    pk_str(pk, "type");
    msgpack_pack_int(pk, v == 1 ? 7 : 2);
    pk_str(pk, "expiration");
    msgpack_pack_double(pk, v == 2 ? NOW + DHT_MAX_HORIZON * 2 : NOW + 1);
    pk_str(pk, "dict");
    msgpack_pack_map(pk, 1);
    if (v == 3) pk_str(pk, "k");
    else pk_bin(pk, "k", 1);
    msgpack_pack_array(pk, v == 4 ? 1 : 2);
    pk_bin(pk, "v", 1);
    if (v != 4) msgpack_pack_double(pk, NOW + 1);
    pk_str(pk, "nearest");
    uint32_t nn = v == 5 ? DHT_PROTO_MAX_NEAREST + 1 : 1;
    msgpack_pack_array(pk, nn);
    for (uint32_t i = 0; i < nn; i++) {
        msgpack_pack_array(pk, 2);
        pk_bin(pk, id, v == 6 ? 8 : 16);
        if (v == 7) pk_str(pk, "/ip4/127.0.0.1/tcp/1/p2p/0000000000000000000000000000000f");
        else if (v == 8) pk_str(pk, "localhost:80");
        else pk_str(pk, "/ip4/127.0.0.1/tcp/1/p2p/00000000000000000000000000000000");
    }
    pk_str(pk, "node");
    msgpack_pack_nil(pk);
}

Test(dht_proto, malformed_find_replies, .timeout = 10)
{
    static const int expect[] = { 0, DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL, DMOE_EINVAL, DMOE_ETOOBIG, DMOE_EINVAL,
                                  DMOE_EINVAL, DMOE_EINVAL };
    for (int v = 0; v < 9; v++) {
        wire_out *o = wire_out_new();
        wire_reply_begin(o, 3);
        pack_find_reply(wire_out_pk(o), v);
        wire_msg m;
        decode(o, &m);
        dht_find_rep rep;
        char err[200] = "";
        int rc = dht_proto_find_rep_decode(m.result, 1, NOW, &rep, err, sizeof err);
        cr_expect_eq(rc, expect[v], "variant %d: got %d (%s)", v, rc, err);
        if (rc == 0) {
            cr_expect_eq(rep.results[0].nsubs, 1);
            dht_proto_find_rep_free(&rep);
        }
        wire_msg_free(&m);
    }
}
