/* dht_proto.c -- encoding and strict decoding of the DHT RPCs (see dht_proto.h, wire/PROTOCOL_DHT.md).
 *
 * Design notes. Encoders pack straight into a wire_out with msgpack-c's packer; byte strings are
 * copied (DHT values are small) so the caller's buffers are free as soon as the encoder returns.
 * Decoders walk the already validated msgpack tree (wire_msg_decode bounded its depth and counts) and
 * check types, lengths and bounds field by field; the first problem found names itself in err. They
 * write their output struct as they go, so on failure the caller must treat it as garbage; the only
 * allocation (dictionary entries of a find reply) is released on every failure path.
 */
#include "actors/dht/io/dht_proto.h"

#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/trust/dht_ident.h"
#include "runtime/rt_err.h"

/* ---- small helpers ---- */

static int fail(char *err, size_t errlen, int code, const char *fmt, const char *what)
{
    if (err && errlen) snprintf(err, errlen, fmt, what);
    return code;
}

static void pack_bin(msgpack_packer *pk, const void *p, size_t n)
{
    msgpack_pack_bin(pk, n);
    if (n) msgpack_pack_bin_body(pk, p, n);
}

static int get_bin(const msgpack_object *o, const uint8_t **p, size_t *n)
{
    if (!o || o->type != MSGPACK_OBJECT_BIN) return DMOE_EINVAL;
    *p = (const uint8_t *)o->via.bin.ptr;
    *n = o->via.bin.size;
    return 0;
}

static int get_id(const msgpack_object *o, dht_id *out)
{
    const uint8_t *p;
    size_t n;
    if (get_bin(o, &p, &n) || n != DHT_ID_BYTES) return DMOE_EINVAL;
    memcpy(out->b, p, DHT_ID_BYTES);
    return 0;
}

static const msgpack_object *get_array(const msgpack_object *map, const char *key)
{
    const msgpack_object *o = wire_map_get(map, key);
    return o && o->type == MSGPACK_OBJECT_ARRAY ? o : NULL;
}

/* expiration_ok checks e is finite and at most DHT_MAX_HORIZON ahead of now (now < 0: no horizon). */
static int expiration_ok(double e, double now)
{
    if (!isfinite(e)) return 0;
    return now < 0 || e <= now + DHT_MAX_HORIZON;
}

/* ---- addresses and peers ---- */

int dht_proto_addr_to_maddr(const dht_addr *a, const dht_id *id, wire_maddr *out)
{
    wire_maddr m;
    memset(&m, 0, sizeof m);
    unsigned char buf[16];
    if (inet_pton(AF_INET, a->host, buf) == 1) m.family = AF_INET;
    else if (inet_pton(AF_INET6, a->host, buf) == 1) m.family = AF_INET6;
    else return DMOE_EINVAL;
    if (strlen(a->host) >= sizeof m.host || a->port == 0) return DMOE_EINVAL;
    memcpy(m.host, a->host, strlen(a->host) + 1);
    m.port = a->port;
    if (id) dht_id_to_hex(id, m.peer_id);
    *out = m;
    return 0;
}

int dht_proto_parse_peer(const char *text, dht_addr *addr, dht_id *id, int *has_id, char *err, size_t errlen)
{
    wire_maddr m;
    char e[128] = "";
    if (text[0] != '/' || wire_maddr_parse(text, &m, e, sizeof e) != 0) {
        if (err && errlen) snprintf(err, errlen, "bad peer address '%.120s': %s", text, e[0] ? e : "not a multiaddr");
        return DMOE_EINVAL;
    }
    if (m.family != AF_INET && m.family != AF_INET6) {
        if (err && errlen) snprintf(err, errlen, "bad peer address '%.120s': only /ip4 and /ip6 are accepted", text);
        return DMOE_EINVAL;
    }
    dht_id pid;
    int hid = 0;
    if (m.peer_id[0]) {
        if (strlen(m.peer_id) != DHT_ID_HEX_LEN || dht_id_from_hex(&pid, m.peer_id) != 0) {
            if (err && errlen)
                snprintf(err, errlen, "bad peer address '%.120s': the /p2p/ id must be %d hex digits", text,
                         DHT_ID_HEX_LEN);
            return DMOE_EINVAL;
        }
        hid = 1;
    }
    if (strlen(m.host) >= DHT_HOST_MAX) return fail(err, errlen, DMOE_EINVAL, "bad peer address '%.120s': host too long", text);
    memset(addr, 0, sizeof *addr);
    memcpy(addr->host, m.host, strlen(m.host) + 1);
    addr->port = m.port;
    if (hid && id) *id = pid;
    if (has_id) *has_id = hid;
    return 0;
}

static void pack_addr(msgpack_packer *pk, const dht_addr *a, const dht_id *id)
{
    wire_maddr m;
    char text[WIRE_MADDR_TEXT];
    if (dht_proto_addr_to_maddr(a, id, &m) == 0) wire_maddr_format(&m, text, sizeof text);
    else snprintf(text, sizeof text, "/dns/%s/tcp/%u", a->host, (unsigned)a->port);
    wire_pack_str(pk, text);
}

static void pack_peer(msgpack_packer *pk, const dht_peer_info *p)
{
    if (!p || !p->present) {
        msgpack_pack_nil(pk);
        return;
    }
    char hex[DHT_ID_HEX_LEN + 1];
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, "id");
    wire_pack_str(pk, dht_id_to_hex(&p->id, hex));
    wire_pack_str(pk, "addr");
    pack_addr(pk, &p->addr, &p->id);
}

/* decode_addr_of reads an address string that must name id (or no id at all). */
static int decode_addr_of(const msgpack_object *o, const dht_id *id, dht_addr *out, char *err, size_t errlen)
{
    char text[WIRE_MADDR_TEXT];
    if (wire_get_str(o, text, sizeof text) != 0) return fail(err, errlen, DMOE_EINVAL, "%s must be a short string", "addr");
    dht_id pid;
    int has = 0;
    int rc = dht_proto_parse_peer(text, out, &pid, &has, err, errlen);
    if (rc) return rc;
    if (has && !dht_id_eq(&pid, id))
        return fail(err, errlen, DMOE_EINVAL, "address '%.120s' names another node id than the peer's", text);
    return 0;
}

int dht_proto_peer_decode(const msgpack_object *map, const char *key, dht_peer_info *out, char *err, size_t errlen)
{
    const msgpack_object *o = wire_map_get(map, key);
    if (!o) return fail(err, errlen, DMOE_EINVAL, "missing field '%s' (a peer or nil)", key);
    memset(out, 0, sizeof *out);
    if (o->type == MSGPACK_OBJECT_NIL) return 0;
    if (o->type != MSGPACK_OBJECT_MAP) return fail(err, errlen, DMOE_EINVAL, "field '%s' must be a map or nil", key);
    char hex[DHT_ID_HEX_LEN + 2];
    const msgpack_object *ido = wire_map_get(o, "id");
    if (!ido || wire_get_str(ido, hex, sizeof hex) != 0 || strlen(hex) != DHT_ID_HEX_LEN ||
        dht_id_from_hex(&out->id, hex) != 0)
        return fail(err, errlen, DMOE_EINVAL, "%s.id must be 32 hex digits", key);
    const msgpack_object *ao = wire_map_get(o, "addr");
    if (!ao) return fail(err, errlen, DMOE_EINVAL, "missing %s.addr", key);
    int rc = decode_addr_of(ao, &out->id, &out->addr, err, errlen);
    if (rc) return rc;
    out->present = 1;
    return 0;
}

/* ---- identity: challenges and proofs ---- */

static int has_proof(const dht_proof *p) { return p && p->present; }

/* pack_challenge packs the "challenge" field when c is not NULL. */
static void pack_challenge(msgpack_packer *pk, const uint8_t *c)
{
    if (!c) return;
    wire_pack_str(pk, "challenge");
    pack_bin(pk, c, DHT_CHALLENGE_BYTES);
}

/* pack_proof packs the "proof" field when p is present. */
static void pack_proof(msgpack_packer *pk, const dht_proof *p)
{
    if (!has_proof(p)) return;
    wire_pack_str(pk, "proof");
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, "pubkey");
    pack_bin(pk, p->pk, DHT_IDENT_PK_BYTES);
    wire_pack_str(pk, "sig");
    pack_bin(pk, p->sig, DHT_IDENT_SIG_BYTES);
}

/* reply_new starts the reply to request id as a map of nfields fields plus one for a present proof,
 * or returns NULL (no memory). */
static wire_out *reply_new(uint64_t id, uint32_t nfields, const dht_proof *proof)
{
    wire_out *o = wire_out_new();
    if (!o) return NULL;
    wire_reply_begin(o, id);
    msgpack_pack_map(wire_out_pk(o), nfields + (has_proof(proof) ? 1 : 0));
    return o;
}

/* reply_end ends a reply with its "node" field (the sender's own peer info) and its proof. Returns o. */
static wire_out *reply_end(wire_out *o, const dht_peer_info *self, const dht_proof *proof)
{
    wire_pack_str(wire_out_pk(o), "node");
    pack_peer(wire_out_pk(o), self);
    pack_proof(wire_out_pk(o), proof);
    return o;
}

/* list_reply starts the reply {key: [n items], node, proof?} to request id: the caller packs the n
 * items, then reply_end. Returns NULL when out of memory. */
static wire_out *list_reply(uint64_t id, const char *key, size_t n, const dht_proof *proof)
{
    wire_out *o = reply_new(id, 2, proof);
    if (!o) return NULL;
    wire_pack_str(wire_out_pk(o), key);
    msgpack_pack_array(wire_out_pk(o), n);
    return o;
}

/* keys_req starts request method with nfields fields (plus one for a challenge), the first "keys" (an
 * array of n ids, which the caller packs next). Returns NULL for n outside 1..DHT_PROTO_MAX_KEYS or
 * when out of memory. */
static wire_out *keys_req(uint64_t id, const char *method, uint32_t nfields, size_t n, const uint8_t *challenge)
{
    if (n == 0 || n > DHT_PROTO_MAX_KEYS) return NULL;
    wire_out *o = wire_out_new();
    if (!o) return NULL;
    wire_request_begin(o, id, method, nfields + (challenge ? 1 : 0));
    wire_pack_str(wire_out_pk(o), "keys");
    msgpack_pack_array(wire_out_pk(o), n);
    return o;
}

/* opt_bin reads the optional field name of map root, which must be exactly len bytes of bin when present
 * and not nil: *has 1 and out[], or *has 0. Returns 0 or DMOE_EINVAL. */
static int opt_bin(const msgpack_object *root, const char *name, uint8_t *out, size_t len, int *has, char *err,
                   size_t errlen)
{
    const msgpack_object *o = wire_map_get(root, name);
    const uint8_t *p;
    size_t n;
    if (!o || o->type == MSGPACK_OBJECT_NIL) {
        *has = 0;
        return 0;
    }
    if (get_bin(o, &p, &n) != 0 || n != len) {
        char what[64];
        snprintf(what, sizeof what, "%s must be %zu bytes of bin", name, len);
        return fail(err, errlen, DMOE_EINVAL, "%s", what);
    }
    memcpy(out, p, len);
    *has = 1;
    return 0;
}

int dht_proto_challenge_decode(const msgpack_object *root, uint8_t out[DHT_CHALLENGE_BYTES], int *has, char *err,
                               size_t errlen)
{
    return opt_bin(root, "challenge", out, DHT_CHALLENGE_BYTES, has, err, errlen);
}

/* proof_msg writes the signed bytes -- DHT_PROOF_TAG, the challenge, the id, the addr text -- into buf
 * (at least DHT_PROOF_MSG_MAX bytes) and returns their length. */
static size_t proof_msg(const uint8_t *challenge, const dht_id *id, const char *addr, size_t alen, uint8_t *buf)
{
    size_t n = sizeof DHT_PROOF_TAG - 1;
    memcpy(buf, DHT_PROOF_TAG, n);
    memcpy(buf + n, challenge, DHT_CHALLENGE_BYTES);
    n += DHT_CHALLENGE_BYTES;
    memcpy(buf + n, id->b, DHT_ID_BYTES);
    n += DHT_ID_BYTES;
    memcpy(buf + n, addr, alen);
    return n + alen;
}

int dht_proto_proof_make(const dht_ident *k, const uint8_t challenge[DHT_CHALLENGE_BYTES], const dht_peer_info *self,
                         dht_proof *out)
{
    wire_maddr m;
    char text[WIRE_MADDR_TEXT];
    uint8_t buf[DHT_PROOF_MSG_MAX];
    if (!self->present || dht_proto_addr_to_maddr(&self->addr, &self->id, &m) != 0) return DMOE_EINVAL;
    wire_maddr_format(&m, text, sizeof text);
    size_t n = proof_msg(challenge, &self->id, text, strlen(text), buf);
    memcpy(out->pk, k->pk, DHT_IDENT_PK_BYTES);
    dht_ident_sign(k, buf, n, out->sig);
    out->present = 1;
    return 0;
}

int dht_proto_proof_check(const msgpack_object *result, const uint8_t challenge[DHT_CHALLENGE_BYTES],
                          const dht_peer_info *who, char *err, size_t errlen)
{
    const msgpack_object *po = result ? wire_map_get(result, "proof") : NULL;
    const msgpack_object *node = result ? wire_map_get(result, "node") : NULL;
    const msgpack_object *ao = node && node->type == MSGPACK_OBJECT_MAP ? wire_map_get(node, "addr") : NULL;
    const uint8_t *pk, *sig;
    size_t npk, nsig;
    if (!who->present || !ao || ao->type != MSGPACK_OBJECT_STR || ao->via.str.size >= WIRE_MADDR_TEXT)
        return fail(err, errlen, DMOE_EINVAL, "%s", "no PEER to prove");
    if (!po || po->type != MSGPACK_OBJECT_MAP)
        return fail(err, errlen, DMOE_EINVAL, "%s", "the peer sent no proof of its id");
    if (get_bin(wire_map_get(po, "pubkey"), &pk, &npk) != 0 || npk != DHT_IDENT_PK_BYTES ||
        get_bin(wire_map_get(po, "sig"), &sig, &nsig) != 0 || nsig != DHT_IDENT_SIG_BYTES)
        return fail(err, errlen, DMOE_EINVAL, "%s", "proof needs pubkey (32 bytes) and sig (64 bytes)");
    dht_id kid;
    dht_ident_id_of(pk, &kid);
    if (!dht_id_eq(&kid, &who->id))
        return fail(err, errlen, DMOE_EINVAL, "%s", "the peer's id is not the hash of its key");
    uint8_t buf[DHT_PROOF_MSG_MAX];
    size_t n = proof_msg(challenge, &who->id, ao->via.str.ptr, ao->via.str.size, buf);
    if (!dht_ident_verify(pk, buf, n, sig))
        return fail(err, errlen, DMOE_EINVAL, "%s", "the peer's proof of its id does not verify");
    return 0;
}

/* ---- ping ---- */

wire_out *dht_proto_ping_req(uint64_t id, const dht_peer_info *self, const uint8_t *challenge)
{
    wire_out *o = wire_out_new();
    if (!o) return NULL;
    wire_request_begin(o, id, "dht_ping", challenge ? 4 : 3);
    wire_pack_str(wire_out_pk(o), "node");
    pack_peer(wire_out_pk(o), self);
    pack_challenge(wire_out_pk(o), challenge);
    return o;
}

wire_out *dht_proto_ping_reply(uint64_t id, const dht_peer_info *self, const dht_proof *proof)
{
    wire_out *o = reply_new(id, 1, proof);
    return o ? reply_end(o, self, proof) : NULL;
}

/* ---- store ---- */

wire_out *dht_proto_store_req(uint64_t id, const dht_peer_info *sender, const dht_store_item *items, size_t n,
                              int in_cache, const uint8_t *challenge)
{
    wire_out *o = keys_req(id, "dht_store", 8, n, challenge);
    if (!o) return NULL;
    msgpack_packer *pk = wire_out_pk(o);
    for (size_t i = 0; i < n; i++) pack_bin(pk, items[i].key.b, DHT_ID_BYTES);
    wire_pack_str(pk, "subkeys");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        if (items[i].subkey) pack_bin(pk, items[i].subkey, items[i].sklen);
        else msgpack_pack_nil(pk);
    }
    wire_pack_str(pk, "values");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) pack_bin(pk, items[i].value, items[i].vlen);
    wire_pack_str(pk, "expirations");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) msgpack_pack_double(pk, items[i].expiration);
    wire_pack_str(pk, "in_cache");
    if (in_cache) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    wire_pack_str(pk, "sender");
    pack_peer(pk, sender);
    pack_challenge(pk, challenge);
    return o;
}

/* bulk_array reads the array under key with exactly n entries (n < 0: any count up to the bound). */
static const msgpack_object *bulk_array(const msgpack_object *root, const char *key, long n, int *rc, char *err,
                                        size_t errlen)
{
    const msgpack_object *a = get_array(root, key);
    if (!a) {
        *rc = fail(err, errlen, DMOE_EINVAL, "missing or non-array field '%s'", key);
        return NULL;
    }
    if (a->via.array.size > DHT_PROTO_MAX_KEYS) {
        if (err && errlen)
            snprintf(err, errlen, "'%s' has %u entries, over the bound of %d keys per request", key,
                     (unsigned)a->via.array.size, DHT_PROTO_MAX_KEYS);
        *rc = DMOE_ETOOBIG;
        return NULL;
    }
    if (n >= 0 && (long)a->via.array.size != n) {
        if (err && errlen)
            snprintf(err, errlen, "'%s' has %u entries, 'keys' has %ld", key, (unsigned)a->via.array.size, n);
        *rc = DMOE_EINVAL;
        return NULL;
    }
    return a;
}

int dht_proto_store_decode(const msgpack_object *root, double now, dht_store_req *out, char *err, size_t errlen)
{
    int rc = 0;
    const msgpack_object *keys = bulk_array(root, "keys", -1, &rc, err, errlen);
    if (!keys) return rc;
    long n = (long)keys->via.array.size;
    if (n == 0) return fail(err, errlen, DMOE_EINVAL, "%s is empty", "keys");
    const msgpack_object *subs = bulk_array(root, "subkeys", n, &rc, err, errlen);
    if (!subs) return rc;
    const msgpack_object *vals = bulk_array(root, "values", n, &rc, err, errlen);
    if (!vals) return rc;
    const msgpack_object *exps = bulk_array(root, "expirations", n, &rc, err, errlen);
    if (!exps) return rc;
    out->in_cache = 0;
    const msgpack_object *ic = wire_map_get(root, "in_cache");
    if (ic) {
        if (ic->type != MSGPACK_OBJECT_BOOLEAN) return fail(err, errlen, DMOE_EINVAL, "%s must be a bool", "in_cache");
        out->in_cache = ic->via.boolean;
    }
    rc = dht_proto_peer_decode(root, "sender", &out->sender, err, errlen);
    if (rc) return rc;
    for (long i = 0; i < n; i++) {
        dht_store_item *it = &out->items[i];
        char what[48];
        if (get_id(&keys->via.array.ptr[i], &it->key) != 0) {
            snprintf(what, sizeof what, "keys[%ld]", i);
            return fail(err, errlen, DMOE_EINVAL, "%s must be a 16-byte id", what);
        }
        const msgpack_object *sk = &subs->via.array.ptr[i];
        it->subkey = NULL;
        it->sklen = 0;
        if (sk->type != MSGPACK_OBJECT_NIL) {
            snprintf(what, sizeof what, "subkeys[%ld]", i);
            if (get_bin(sk, &it->subkey, &it->sklen) != 0) return fail(err, errlen, DMOE_EINVAL, "%s must be bin or nil", what);
            if (it->sklen == 0) return fail(err, errlen, DMOE_EINVAL, "%s is empty", what);
            if (it->sklen > DHT_MAX_SUBKEY_BYTES) return fail(err, errlen, DMOE_ETOOBIG, "%s is over the subkey size bound", what);
        }
        snprintf(what, sizeof what, "values[%ld]", i);
        if (get_bin(&vals->via.array.ptr[i], &it->value, &it->vlen) != 0)
            return fail(err, errlen, DMOE_EINVAL, "%s must be bin", what);
        if (it->vlen > DHT_MAX_VALUE_BYTES) return fail(err, errlen, DMOE_ETOOBIG, "%s is over the value size bound", what);
        snprintf(what, sizeof what, "expirations[%ld]", i);
        if (wire_get_f64(&exps->via.array.ptr[i], &it->expiration) != 0)
            return fail(err, errlen, DMOE_EINVAL, "%s must be a number", what);
        if (!expiration_ok(it->expiration, now))
            return fail(err, errlen, DMOE_EINVAL, "%s is not finite or beyond the expiration horizon", what);
    }
    out->n = (size_t)n;
    return 0;
}

wire_out *dht_proto_store_reply(uint64_t id, const dht_peer_info *self, const uint8_t *stored, size_t n,
                                const dht_proof *proof)
{
    wire_out *o = list_reply(id, "stored", n, proof);
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (stored[i]) msgpack_pack_true(wire_out_pk(o));
        else msgpack_pack_false(wire_out_pk(o));
    }
    return reply_end(o, self, proof);
}

int dht_proto_store_rep_decode(const msgpack_object *result, size_t expect_n, dht_store_rep *out, char *err,
                               size_t errlen)
{
    if (!result || result->type != MSGPACK_OBJECT_MAP) return fail(err, errlen, DMOE_EINVAL, "%s must be a map", "result");
    int rc = 0;
    const msgpack_object *a = bulk_array(result, "stored", (long)expect_n, &rc, err, errlen);
    if (!a) return rc;
    for (size_t i = 0; i < expect_n; i++) {
        if (a->via.array.ptr[i].type != MSGPACK_OBJECT_BOOLEAN)
            return fail(err, errlen, DMOE_EINVAL, "%s must hold bools", "stored");
        out->stored[i] = a->via.array.ptr[i].via.boolean;
    }
    out->n = expect_n;
    return dht_proto_peer_decode(result, "node", &out->node, err, errlen);
}

/* ---- find ---- */

wire_out *dht_proto_find_req_token(uint64_t id, const dht_peer_info *sender, const dht_id *keys, size_t n,
                                   const uint8_t *challenge, const uint8_t *token)
{
    wire_out *o = keys_req(id, "dht_find", token ? 5 : 4, n, challenge);
    if (!o) return NULL;
    msgpack_packer *pk = wire_out_pk(o);
    for (size_t i = 0; i < n; i++) pack_bin(pk, keys[i].b, DHT_ID_BYTES);
    wire_pack_str(pk, "sender");
    pack_peer(pk, sender);
    pack_challenge(pk, challenge);
    if (token) {
        wire_pack_str(pk, "token");
        pack_bin(pk, token, DHT_TOKEN_BYTES);
    }
    return o;
}

wire_out *dht_proto_find_req(uint64_t id, const dht_peer_info *sender, const dht_id *keys, size_t n,
                             const uint8_t *challenge)
{
    return dht_proto_find_req_token(id, sender, keys, n, challenge, NULL);
}

int dht_proto_token_decode(const msgpack_object *root, uint8_t out[DHT_TOKEN_BYTES], int *has, char *err,
                           size_t errlen)
{
    return opt_bin(root, "token", out, DHT_TOKEN_BYTES, has, err, errlen);
}

int dht_proto_find_decode(const msgpack_object *root, dht_find_req *out, char *err, size_t errlen)
{
    int rc = 0;
    const msgpack_object *keys = bulk_array(root, "keys", -1, &rc, err, errlen);
    if (!keys) return rc;
    if (keys->via.array.size == 0) return fail(err, errlen, DMOE_EINVAL, "%s is empty", "keys");
    for (uint32_t i = 0; i < keys->via.array.size; i++)
        if (get_id(&keys->via.array.ptr[i], &out->keys[i]) != 0) {
            char what[32];
            snprintf(what, sizeof what, "keys[%u]", (unsigned)i);
            return fail(err, errlen, DMOE_EINVAL, "%s must be a 16-byte id", what);
        }
    out->n = keys->via.array.size;
    return dht_proto_peer_decode(root, "sender", &out->sender, err, errlen);
}

static void pack_entry(msgpack_packer *pk, const dht_find_entry *e)
{
    const dht_stored *f = e->found;
    msgpack_pack_map(pk, f ? 4 : 2);
    wire_pack_str(pk, "type");
    msgpack_pack_int(pk, !f ? DHT_FOUND_NONE : f->is_dict ? DHT_FOUND_DICT : DHT_FOUND_VALUE);
    if (f) {
        wire_pack_str(pk, "expiration");
        msgpack_pack_double(pk, f->expiration);
        if (!f->is_dict) {
            wire_pack_str(pk, "value");
            pack_bin(pk, f->value, f->vlen);
        } else {
            wire_pack_str(pk, "dict");
            msgpack_pack_map(pk, f->nsubs);
            for (size_t j = 0; j < f->nsubs; j++) {
                pack_bin(pk, f->subs[j].subkey, f->subs[j].sklen);
                msgpack_pack_array(pk, 2);
                pack_bin(pk, f->subs[j].value, f->subs[j].vlen);
                msgpack_pack_double(pk, f->subs[j].expiration);
            }
        }
    }
    wire_pack_str(pk, "nearest");
    msgpack_pack_array(pk, e->n_nearest);
    for (size_t j = 0; j < e->n_nearest; j++) {
        msgpack_pack_array(pk, 2);
        pack_bin(pk, e->nearest[j].id.b, DHT_ID_BYTES);
        pack_addr(pk, &e->nearest[j].addr, &e->nearest[j].id);
    }
}

wire_out *dht_proto_find_reply(uint64_t id, const dht_peer_info *self, const dht_find_entry *entries, size_t n,
                               const dht_proof *proof)
{
    wire_out *o = list_reply(id, "results", n, proof);
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) pack_entry(wire_out_pk(o), &entries[i]);
    return reply_end(o, self, proof);
}

wire_out *dht_proto_find_reply_cut(uint64_t id, const dht_peer_info *self, const dht_find_entry *entries, size_t n,
                                   const dht_proof *proof, const uint8_t *token)
{
    wire_out *o = reply_new(id, 3, proof);
    if (!o) return NULL;
    msgpack_packer *pk = wire_out_pk(o);
    wire_pack_str(pk, "truncated");
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "token");
    pack_bin(pk, token, DHT_TOKEN_BYTES);
    wire_pack_str(pk, "results");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) pack_entry(pk, &entries[i]);
    return reply_end(o, self, proof);
}

static int decode_dict(const msgpack_object *d, double now, dht_find_result *r, char *err, size_t errlen)
{
    if (d->type != MSGPACK_OBJECT_MAP) return fail(err, errlen, DMOE_EINVAL, "%s must be a map", "dict");
    uint32_t n = d->via.map.size;
    if (n > DHT_MAX_SUBKEYS) return fail(err, errlen, DMOE_ETOOBIG, "%s has more entries than the subkey bound", "dict");
    if (n == 0) return 0;
    r->subs = calloc(n, sizeof *r->subs);
    if (!r->subs) return DMOE_ENOMEM;
    for (uint32_t j = 0; j < n; j++) {
        dht_subitem *s = &r->subs[j];
        const msgpack_object *k = &d->via.map.ptr[j].key, *v = &d->via.map.ptr[j].val;
        if (get_bin(k, &s->subkey, &s->sklen) != 0 || s->sklen == 0)
            return fail(err, errlen, DMOE_EINVAL, "%s keys must be non-empty bin", "dict");
        if (s->sklen > DHT_MAX_SUBKEY_BYTES) return fail(err, errlen, DMOE_ETOOBIG, "%s subkey over the size bound", "dict");
        if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 2 ||
            get_bin(&v->via.array.ptr[0], &s->value, &s->vlen) != 0 ||
            wire_get_f64(&v->via.array.ptr[1], &s->expiration) != 0)
            return fail(err, errlen, DMOE_EINVAL, "%s entries must be [value bin, expiration]", "dict");
        if (s->vlen > DHT_MAX_VALUE_BYTES) return fail(err, errlen, DMOE_ETOOBIG, "%s value over the size bound", "dict");
        if (!expiration_ok(s->expiration, now))
            return fail(err, errlen, DMOE_EINVAL, "%s expiration not finite or beyond the horizon", "dict");
        r->nsubs++;
    }
    return 0;
}

static int decode_result(const msgpack_object *o, double now, dht_find_result *r, char *err, size_t errlen)
{
    if (o->type != MSGPACK_OBJECT_MAP) return fail(err, errlen, DMOE_EINVAL, "%s must be maps", "results");
    int64_t type;
    const msgpack_object *t = wire_map_get(o, "type");
    if (!t || wire_get_i64(t, &type) != 0 || type < DHT_FOUND_NONE || type > DHT_FOUND_DICT)
        return fail(err, errlen, DMOE_EINVAL, "%s must be 0, 1 or 2", "type");
    r->type = (int)type;
    if (type != DHT_FOUND_NONE) {
        const msgpack_object *e = wire_map_get(o, "expiration");
        if (!e || wire_get_f64(e, &r->expiration) != 0 || !expiration_ok(r->expiration, now))
            return fail(err, errlen, DMOE_EINVAL, "%s missing, not finite or beyond the horizon", "expiration");
    }
    if (type == DHT_FOUND_VALUE) {
        if (get_bin(wire_map_get(o, "value"), &r->value, &r->vlen) != 0)
            return fail(err, errlen, DMOE_EINVAL, "%s must be bin", "value");
        if (r->vlen > DHT_MAX_VALUE_BYTES) return fail(err, errlen, DMOE_ETOOBIG, "%s over the size bound", "value");
    } else if (type == DHT_FOUND_DICT) {
        const msgpack_object *d = wire_map_get(o, "dict");
        if (!d) return fail(err, errlen, DMOE_EINVAL, "missing %s", "dict");
        int rc = decode_dict(d, now, r, err, errlen);
        if (rc) return rc;
    }
    const msgpack_object *nr = get_array(o, "nearest");
    if (!nr) return fail(err, errlen, DMOE_EINVAL, "missing or non-array %s", "nearest");
    if (nr->via.array.size > DHT_PROTO_MAX_NEAREST) return fail(err, errlen, DMOE_ETOOBIG, "%s lists too many peers", "nearest");
    for (uint32_t j = 0; j < nr->via.array.size; j++) {
        const msgpack_object *p = &nr->via.array.ptr[j];
        dht_node *nd = &r->nearest[j];
        memset(nd, 0, sizeof *nd);
        if (p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size != 2 || get_id(&p->via.array.ptr[0], &nd->id) != 0)
            return fail(err, errlen, DMOE_EINVAL, "%s entries must be [16-byte id, address]", "nearest");
        int rc = decode_addr_of(&p->via.array.ptr[1], &nd->id, &nd->addr, err, errlen);
        if (rc) return rc;
    }
    r->n_nearest = nr->via.array.size;
    return 0;
}

int dht_proto_find_rep_decode(const msgpack_object *result, size_t expect_n, double now, dht_find_rep *out,
                              char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!result || result->type != MSGPACK_OBJECT_MAP) return fail(err, errlen, DMOE_EINVAL, "%s must be a map", "result");
    int rc = 0;
    const msgpack_object *a = bulk_array(result, "results", (long)expect_n, &rc, err, errlen);
    if (!a) return rc;
    rc = dht_proto_peer_decode(result, "node", &out->node, err, errlen);
    if (rc) return rc;
    const msgpack_object *cut = wire_map_get(result, "truncated");
    if (cut && cut->type != MSGPACK_OBJECT_NIL) {
        int has = 0;
        if (cut->type != MSGPACK_OBJECT_MAP || dht_proto_token_decode(cut, out->token, &has, err, errlen) != 0 || !has)
            return fail(err, errlen, DMOE_EINVAL, "%s must be {token: bin16}", "truncated");
        out->truncated = 1;
    }
    if (expect_n == 0) return 0;
    out->results = calloc(expect_n, sizeof *out->results);
    if (!out->results) return DMOE_ENOMEM;
    out->n = expect_n;
    for (size_t i = 0; i < expect_n; i++) {
        rc = decode_result(&a->via.array.ptr[i], now, &out->results[i], err, errlen);
        if (rc) {
            dht_proto_find_rep_free(out);
            return rc;
        }
    }
    return 0;
}

void dht_proto_find_rep_free(dht_find_rep *rep)
{
    if (!rep || !rep->results) return;
    for (size_t i = 0; i < rep->n; i++) free(rep->results[i].subs);
    free(rep->results);
    rep->results = NULL;
    rep->n = 0;
}
