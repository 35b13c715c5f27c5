/* mkseeds.c -- writes the fuzz harnesses' seed corpora (test/fuzz/corpus/<harness>/; `make fuzz-seeds`).
 *
 * Usage: mkseeds DIR. Every seed is a valid input built by the library's own encoders, as the tests
 * build them -- pings, info, forward and backward requests with plain and compressed tensors of the
 * shapes of test/data's experts, expert replies, DHT requests and replies with identity challenges and
 * proofs, multiaddrs, .npy files -- so that fuzzing starts from the protocol rather than from noise.
 * Deterministic (test keys, fixed values): running it again rewrites the same bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actors/dht/io/dht_proto.h"
#include "actors/dht/trust/dht_ident.h"
#include "wire/codec/wire_compress.h"
#include "wire/codec/wire_npy.h"
#include "wire/wire_frame.h"
#include "wire/wire_msg.h"

static const char *root;

static void die(const char *what) __attribute__((noreturn));
static void die(const char *what)
{
    fprintf(stderr, "mkseeds: %s\n", what);
    exit(1);
}

/* put writes p[n] to ROOT/harness/name. */
static void put(const char *harness, const char *name, const void *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, harness);
    if (mkdir(path, 0777) != 0 && errno != EEXIST) die(path);
    snprintf(path, sizeof path, "%s/%s/%s", root, harness, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) die(path);
}

/* flat flattens o (consumed) into a malloc'd body. */
static uint8_t *flat(wire_out *o, size_t *len)
{
    uint8_t *b;
    if (!o || wire_out_flatten(o, &b, len) != 0) die("wire_out_flatten");
    return b;
}

/* ---- tensors and expert messages ---- */

/* values fills x[n] with a fixed, varied pattern. */
static void values(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = (float)((int)(i * 37 % 101) - 50) / 17.0f;
}

/* pack_tensor packs a float32 [rows, cols] tensor of x, compressed with scheme (its bytes kept in
 * *keep, which the caller frees after flattening). */
static void pack_tensor(wire_out *o, const float *x, int64_t rows, int64_t cols, wire_scheme scheme, uint8_t **keep)
{
    size_t n = (size_t)(rows * cols);
    wire_tensor t = {.dtype = WIRE_DT_F32, .compression = scheme, .ndim = 2, .shape = {rows, cols}, .numel = n};
    if (scheme == WIRE_SCHEME_NONE) {
        *keep = NULL;
        t.data = (const uint8_t *)x;
        t.nbytes = n * sizeof(float);
    } else {
        size_t cap = wire_compress_bound_rows(scheme, n, (size_t)rows), len;
        *keep = malloc(cap);
        if (!*keep || wire_compress_rows(scheme, x, n, (size_t)rows, *keep, &len) != 0) die("wire_compress_rows");
        t.data = *keep;
        t.nbytes = len;
    }
    if (wire_tensor_pack(o, &t, NULL, NULL) != 0) die("wire_tensor_pack");
}

/* compute builds a forward (grad 0) or backward request for uid with one [rows, cols] input. */
static uint8_t *compute(const char *uid, int grad, int64_t rows, int64_t cols, wire_scheme scheme, size_t *len)
{
    float *x = malloc(sizeof(float) * (size_t)(rows * cols));
    if (!x) die("malloc");
    values(x, (size_t)(rows * cols));
    wire_out *o = wire_out_new();
    wire_request_begin(o, 11, grad ? "backward" : "forward", grad ? 5 : 4);
    msgpack_packer *pk = wire_out_pk(o);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, uid);
    uint8_t *k1 = NULL, *k2 = NULL;
    wire_pack_str(pk, "inputs");
    msgpack_pack_array(pk, 1);
    pack_tensor(o, x, rows, cols, scheme, &k1);
    if (grad) {
        wire_pack_str(pk, "grad_outputs");
        msgpack_pack_array(pk, 1);
        pack_tensor(o, x, rows, cols, scheme, &k2);
        wire_pack_str(pk, "handle");
        msgpack_pack_uint64(pk, 3);
    } else {
        wire_pack_str(pk, "handle");
        msgpack_pack_uint64(pk, 3);
    }
    uint8_t *b = flat(o, len);
    free(k1);
    free(k2);
    free(x);
    return b;
}

/* det_dropout: a forward with a float32 input and a uint8 mask, as det_dropout_h16 takes them. */
static uint8_t *det_dropout(size_t *len)
{
    float x[3 * 16];
    uint8_t mask[3 * 16];
    values(x, 48);
    for (int i = 0; i < 48; i++) mask[i] = (uint8_t)(i % 3 != 0);
    wire_out *o = wire_out_new();
    wire_request_begin(o, 12, "forward", 4);
    msgpack_packer *pk = wire_out_pk(o);
    wire_pack_str(pk, "uid");
    wire_pack_str(pk, "expert.1");
    wire_pack_str(pk, "inputs");
    msgpack_pack_array(pk, 2);
    wire_tensor t = {.dtype = WIRE_DT_F32, .ndim = 2, .shape = {3, 16}, .numel = 48, .data = (const uint8_t *)x,
                     .nbytes = sizeof x};
    wire_tensor m = {.dtype = WIRE_DT_U8, .ndim = 2, .shape = {3, 16}, .numel = 48, .data = mask, .nbytes = 48};
    if (wire_tensor_pack(o, &t, NULL, NULL) != 0 || wire_tensor_pack(o, &m, NULL, NULL) != 0) die("pack");
    wire_pack_str(pk, "handle");
    msgpack_pack_nil(pk);
    return flat(o, len);
}

/* expert_reply: {"id", "result": {"outputs": [tensor], "handle": 3}} as an expert answers a forward. */
static uint8_t *expert_reply(wire_scheme scheme, const char *key, size_t *len)
{
    float x[4 * 8];
    values(x, 32);
    wire_out *o = wire_out_new();
    wire_reply_begin(o, 11);
    msgpack_packer *pk = wire_out_pk(o);
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, key);
    msgpack_pack_array(pk, 1);
    uint8_t *keep;
    pack_tensor(o, x, 4, 8, scheme, &keep);
    wire_pack_str(pk, "handle");
    msgpack_pack_uint64(pk, 3);
    uint8_t *b = flat(o, len);
    free(keep);
    return b;
}

static uint8_t *simple(const char *method, const char *uid, size_t *len)
{
    wire_out *o = wire_out_new();
    wire_request_begin(o, 7, method, uid ? 3 : 2);
    if (uid) {
        wire_pack_str(wire_out_pk(o), "uid");
        wire_pack_str(wire_out_pk(o), uid);
    }
    return flat(o, len);
}

/* ---- DHT messages ---- */

static dht_ident key_a, key_b;
static dht_peer_info peer_a, peer_b;   /* the fuzz_dht_apply nodes: test keys 1, 2 at 10.0.0.1, 10.0.0.2 */
static const uint8_t CHAL[DHT_CHALLENGE_BYTES] = "fuzz challenge, thirty-two bytes";
static const double NOW = 1700000000.0; /* the virtual clock's epoch (DHT_VCLOCK_EPOCH_S) */

static void peers(void)
{
    if (dht_ident_for_test(&key_a, 1) != 0 || dht_ident_for_test(&key_b, 2) != 0) die("dht_ident_for_test");
    peer_a = (dht_peer_info){.present = 1, .addr = {.host = "10.0.0.1", .port = 7000}};
    peer_b = (dht_peer_info){.present = 1, .addr = {.host = "10.0.0.2", .port = 7000}};
    dht_ident_id_of(key_a.pk, &peer_a.id);
    dht_ident_id_of(key_b.pk, &peer_b.id);
}

static dht_id key_of(int i)
{
    dht_id k;
    uint64_t rng = (uint64_t)i * 7919 + 1;
    dht_id_random(&k, &rng);
    return k;
}

static uint8_t *store_req(int n, int dict, const dht_peer_info *sender, const uint8_t *chal, size_t *len)
{
    dht_store_item items[4];
    static const uint8_t sub[] = "\xa4" "sub1";
    for (int i = 0; i < n; i++)
        items[i] = (dht_store_item){.key = key_of(i), .subkey = dict ? sub : NULL, .sklen = dict ? sizeof sub - 1 : 0,
                                    .value = (const uint8_t *)"\xa5value", .vlen = 6, .expiration = NOW + 60 + i};
    return flat(dht_proto_store_req(21, sender, items, (size_t)n, 0, chal), len);
}

static uint8_t *find_req(int n, const dht_peer_info *sender, const uint8_t *chal, size_t *len)
{
    dht_id keys[4];
    for (int i = 0; i < n; i++) keys[i] = key_of(i);
    return flat(dht_proto_find_req(22, sender, keys, (size_t)n, chal), len);
}

static uint8_t *find_reply(size_t *len)
{
    dht_subitem subs[2] = {{(const uint8_t *)"\xa1" "a", 2, (const uint8_t *)"\xa1x", 2, NOW + 30},
                           {(const uint8_t *)"\xa1" "b", 2, (const uint8_t *)"\xa1y", 2, NOW + 40}};
    dht_stored val = {.value = (const uint8_t *)"\xa5value", .vlen = 6, .expiration = NOW + 60};
    dht_stored dict = {.is_dict = 1, .subs = subs, .nsubs = 2, .expiration = NOW + 40};
    dht_node near[2] = {{.id = peer_a.id, .addr = peer_a.addr}, {.id = peer_b.id, .addr = peer_b.addr}};
    dht_find_entry e[3] = {{&val, near, 2}, {&dict, near, 1}, {NULL, near, 2}};
    dht_proof proof;
    if (dht_proto_proof_make(&key_b, CHAL, &peer_b, &proof) != 0) die("dht_proto_proof_make");
    return flat(dht_proto_find_reply(22, &peer_b, e, 3, &proof), len);
}

/* apply_record appends one fuzz_dht_apply record [sel][len16][body] to buf at *at. */
static void apply_record(uint8_t *buf, size_t *at, uint8_t sel, const uint8_t *body, size_t len)
{
    buf[(*at)++] = sel;
    buf[(*at)++] = (uint8_t)(len >> 8);
    buf[(*at)++] = (uint8_t)len;
    memcpy(buf + *at, body, len);
    *at += len;
}

static void dht_seeds(void)
{
    size_t n;
    uint8_t *b;
    struct { const char *name; uint8_t *body; size_t len; } s[10];
    int k = 0;
#define SEED(nm, expr) do { s[k].name = nm; s[k].body = expr; s[k].len = n; k++; } while (0)
    SEED("ping_b", flat(dht_proto_ping_req(20, &peer_b, CHAL), &n));
    SEED("ping_client", flat(dht_proto_ping_req(20, NULL, NULL), &n));
    SEED("store_b", store_req(3, 0, &peer_b, NULL, &n));
    SEED("store_dict", store_req(2, 1, &peer_b, CHAL, &n));
    SEED("store_client", store_req(1, 0, NULL, NULL, &n));
    SEED("find_b", find_req(3, &peer_b, CHAL, &n));
    SEED("find_client", find_req(1, NULL, NULL, &n));
    dht_proof proof;
    if (dht_proto_proof_make(&key_b, CHAL, &peer_b, &proof) != 0) die("dht_proto_proof_make");
    SEED("ping_reply", flat(dht_proto_ping_reply(20, &peer_b, &proof), &n));
    static const uint8_t stored[3] = {1, 0, 1};
    SEED("store_reply", flat(dht_proto_store_reply(21, &peer_b, stored, 3, NULL), &n));
    SEED("find_reply", find_reply(&n));
#undef SEED
    for (int i = 0; i < k; i++) put("dht_proto", s[i].name, s[i].body, s[i].len);

    static const char *const addrs[] = {
        "/ip4/10.0.0.2/tcp/7000/p2p/00112233445566778899aabbccddeeff", "/ip6/::1/tcp/31337",
        "/ip6/2001:db8::1/tcp/443/p2p/ABCDEF", "/dns4/example.org/tcp/80", "/ipfs/1234", "127.0.0.1:8080",
        "[::1]:99", "/ip4/0.0.0.0/tcp/0"};
    for (size_t i = 0; i < sizeof addrs / sizeof *addrs; i++) {
        char name[16];
        snprintf(name, sizeof name, "addr_%zu", i);
        put("dht_proto", name, addrs[i], strlen(addrs[i]));
    }

    /* fuzz_dht_apply: sequences of requests to node A (selector: source in bits 0-1, seconds / 10 above) */
    static const struct { const char *name; int recs[6]; uint8_t sel[6]; } seq[] = {
        {"probe_then_store", {0, 2, 5, -1}, {0 | 4, 0, 0}},
        {"store_find_expire", {3, 5, 5, -1}, {1, 2 | 8, 3 | 252}},
        {"client_mode", {1, 4, 6, -1}, {3, 2, 1}},
        {"one_ping", {0, -1}, {0}},
    };
    for (size_t q = 0; q < sizeof seq / sizeof *seq; q++) {
        size_t total = 0;
        for (int r = 0; seq[q].recs[r] >= 0; r++) total += 3 + s[seq[q].recs[r]].len;
        b = malloc(total);
        if (!b) die("malloc");
        size_t at = 0;
        for (int r = 0; seq[q].recs[r] >= 0; r++)
            apply_record(b, &at, seq[q].sel[r], s[seq[q].recs[r]].body, s[seq[q].recs[r]].len);
        put("dht_apply", seq[q].name, b, at);
        free(b);
    }
    for (int i = 0; i < k; i++) free(s[i].body);
}

/* ---- frames and .npy files ---- */

/* frame_stream writes [max_frame selector][2 chunk-seed bytes] then the bodies as frames, then tail. */
static void frame_stream(const char *name, uint8_t sel, uint8_t *const *bodies, const size_t *lens, int n,
                         const uint8_t *tail, size_t tail_len)
{
    size_t total = 3 + tail_len;
    for (int i = 0; i < n; i++) total += WIRE_FRAME_HDR + lens[i];
    uint8_t *b = malloc(total);
    if (!b) die("malloc");
    size_t at = 0;
    b[at++] = sel;
    b[at++] = 0x5a;
    b[at++] = 0xa5;
    for (int i = 0; i < n; i++) {
        wire_frame_put_header(b + at, (uint32_t)lens[i]);
        memcpy(b + at + WIRE_FRAME_HDR, bodies[i], lens[i]);
        at += WIRE_FRAME_HDR + lens[i];
    }
    if (tail_len) memcpy(b + at, tail, tail_len);
    put("frame", name, b, total);
    free(b);
}

static void npy_seeds(void)
{
    char path[512];
    float x[12];
    values(x, 12);
    uint8_t u[6] = {0, 1, 2, 3, 254, 255};
    int64_t s2[2] = {3, 4}, s1[1] = {6}, s0[1] = {0};
    char err[256];
    snprintf(path, sizeof path, "%s/npy", root);
    if (mkdir(path, 0777) != 0 && errno != EEXIST) die(path);
    struct { const char *name; wire_dtype dt; int ndim; const int64_t *shape; const void *data; } f[] = {
        {"f32_3x4.npy", WIRE_DT_F32, 2, s2, x}, {"u8_6.npy", WIRE_DT_U8, 1, s1, u},
        {"f32_scalar.npy", WIRE_DT_F32, 0, s0, x}, {"f32_empty.npy", WIRE_DT_F32, 1, s0, x}};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        snprintf(path, sizeof path, "%s/npy/%s", root, f[i].name);
        if (wire_npy_write(path, f[i].dt, f[i].ndim, f[i].shape, f[i].data, err, sizeof err) != 0) die(err);
    }
    /* what numpy writes for float64 and bool, which wire_npy_write does not */
    static const char f8_hdr[] = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
    static const char b1_hdr[] = "{\"descr\": \"|b1\", \"fortran_order\": False, \"shape\": (3L, 1), }";
    const char *hdrs[2] = {f8_hdr, b1_hdr};
    const char *names[2] = {"f8_2.npy", "b1_3x1_v2.npy"};
    for (int i = 0; i < 2; i++) {
        uint8_t b[256];
        size_t at = 0, hl = strlen(hdrs[i]);
        int v2 = i == 1;
        memcpy(b, "\x93NUMPY", 6);
        b[6] = v2 ? 2 : 1;
        b[7] = 0;
        at = 8;
        size_t pre = v2 ? 12 : 10, padded = (pre + hl + 1 + 63) / 64 * 64 - pre;
        b[at++] = (uint8_t)padded;
        b[at++] = (uint8_t)(padded >> 8);
        if (v2) { b[at++] = 0; b[at++] = 0; }
        memcpy(b + at, hdrs[i], hl);
        at += hl;
        while (at < pre + padded - 1) b[at++] = ' ';
        b[at++] = '\n';
        if (i == 0) {
            double d[2] = {1.5, -2.25};
            memcpy(b + at, d, sizeof d);
            at += sizeof d;
        } else {
            memcpy(b + at, "\x01\x00\x01", 3);
            at += 3;
        }
        put("npy", names[i], b, at);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    root = argv[1];
    if (mkdir(root, 0777) != 0 && errno != EEXIST) die(root);

    /* msg: requests and replies as the server and a client meet them */
    static const wire_scheme schemes[] = {WIRE_SCHEME_NONE, WIRE_SCHEME_FLOAT16, WIRE_SCHEME_MEANSTD_16BIT,
                                          WIRE_SCHEME_UNIFORM_8BIT, WIRE_SCHEME_BLOCKWISE_8BIT};
    uint8_t *bodies[32];
    size_t lens[32];
    int nb = 0;
    char name[64];
    bodies[nb] = simple("ping", NULL, &lens[nb]);
    put("msg", "ping", bodies[nb], lens[nb]);
    nb++;
    bodies[nb] = simple("info", "expert.0", &lens[nb]);
    put("msg", "info", bodies[nb], lens[nb]);
    nb++;
    for (size_t i = 0; i < sizeof schemes / sizeof *schemes; i++) {
        const char *sn = wire_compress_name(schemes[i]);
        bodies[nb] = compute("expert.0", 0, 3, 16, schemes[i], &lens[nb]);
        snprintf(name, sizeof name, "forward_ffn_h16_%s", sn);
        put("msg", name, bodies[nb], lens[nb]);
        nb++;
        bodies[nb] = compute("expert.0", 1, 5, 64, schemes[i], &lens[nb]);
        snprintf(name, sizeof name, "backward_ffn_h64_%s", sn);
        put("msg", name, bodies[nb], lens[nb]);
        nb++;
        size_t n;
        uint8_t *r = expert_reply(schemes[i], i % 2 ? "grad_inputs" : "outputs", &n);
        snprintf(name, sizeof name, "reply_%s", sn);
        put("msg", name, r, n);
        free(r);
    }
    bodies[nb] = det_dropout(&lens[nb]);
    put("msg", "forward_det_dropout_h16", bodies[nb], lens[nb]);
    nb++;
    size_t n;
    uint8_t *b = flat(wire_error_reply(9, -4, "bad field"), &n);
    put("msg", "error_reply", b, n);
    free(b);
    /* regression: a compressed reply of 4 bytes claiming [65536, 65536] values (test_remote_rx.c) */
    {
        static const uint8_t four[4] = {0, 0x3c, 0, 0x3c};
        wire_tensor t = {.dtype = WIRE_DT_F32, .compression = WIRE_SCHEME_FLOAT16, .ndim = 2,
                         .shape = {65536, 65536}, .numel = (size_t)1 << 32, .data = four, .nbytes = 4};
        wire_out *o = wire_out_new();
        wire_reply_begin(o, 13);
        msgpack_pack_map(wire_out_pk(o), 1);
        wire_pack_str(wire_out_pk(o), "outputs");
        msgpack_pack_array(wire_out_pk(o), 1);
        if (wire_tensor_pack(o, &t, NULL, NULL) != 0) die("pack");
        b = flat(o, &n);
        put("msg", "reply_claim_over_bytes", b, n);
        free(b);
    }

    /* frame: streams of those bodies, whole and with a zero length or an oversized header after them */
    static const uint8_t zero[4] = {0, 0, 0, 0}, big[6] = {0, 1, 0, 0, 0x82, 0xa2};
    frame_stream("ping_info", 16, bodies, lens, 2, NULL, 0);
    frame_stream("forward_then_zero", 16, bodies + 2, lens + 2, 2, zero, 4);
    frame_stream("small_limit", 6, bodies, lens, 2, NULL, 0);
    frame_stream("then_too_big", 12, bodies, lens, 1, big, sizeof big);
    frame_stream("partial", 16, bodies + 1, lens + 1, 1, big + 1, 3);
    for (int i = 0; i < nb; i++) free(bodies[i]);

    peers();
    dht_seeds();
    npy_seeds();
    return 0;
}
