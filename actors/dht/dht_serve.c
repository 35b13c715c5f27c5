/* dht_serve.c -- the DHT node's answers: incoming ping, find and store requests (see dht_node.h).
 *
 * A transport hands each request to dht_node_deliver, which wraps it in a job for the node's actor, so
 * a burst of requests is served at most RT_ACTOR_BATCH per round. In turn, each is decoded by dht_proto,
 * its sender is handed to dht_node_heard (refreshed, or probed: nothing it claims is believed before a
 * proof), what it stores passes the signed-record policy (dht_node_classify: one refused item refuses the
 * request) and goes to dht_node_store_from charged to the IP address it came from, and it is
 * answered at once (nothing in a DHT request waits for anything else), with a proof of our id when it
 * carried a challenge. A find reply to an address no round trip has proven is at most DHT_REPLY_FACTOR
 * times its request: beyond, it is cut (values dropped, then nearest peers halved) and carries a token
 * for that address, which the requester sends back to get it all (wire/PROTOCOL_DHT.md, "Reply
 * sizes"). A ping without a challenge over the cap is answered with a nil PEER (alive, nothing more); a
 * ping with one, and a store, fit by their shape (the challenge, the values sent weigh more than the
 * proof, the flags answered). Every request is answered exactly once, or released unanswered when the node
 * drops it (inreq_drop). Loop thread only; calls the node below it, never the lookups above.
 */
#include "actors/dht/dht_node.h"
#include "actors/dht/dht_node_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <sodium.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

typedef struct {
    dht_job job;
    wire_msg *m;
    dht_respond_fn respond;
    void *ctx;
    int answered;
    char from[DHT_OWNER_MAX_BYTES];   /* the sender's IP address ("?": unknown) */
} inreq;

static void answer(inreq *q, wire_out *o)
{
    q->answered = 1;
    q->respond(q->ctx, o);
}

static void answer_error(inreq *q, int code, const char *msg)
{
    LOG_DEBUG("dht request %s refused: %s", q->m->method, msg);
    answer(q, wire_error_reply(q->m->id, code, msg));
}

/* proof_for returns the proof answering q's challenge (NULL when it carried none). */
static const dht_proof *proof_for(dht *d, const uint8_t *chal, dht_proof *out)
{
    if (!chal || dht_proto_proof_make(&d->ident, chal, &d->self, out) != 0) return NULL;
    d->istats.signed_proofs++;
    return out;
}

/* ---- reply sizes ---- */

static int count_bytes(void *data, const char *buf, size_t len)
{
    *(size_t *)data += len;
    return 0;
}

/* request_bytes returns the size of q's request, as its map packs (without the frame header). */
static size_t request_bytes(const inreq *q)
{
    size_t n = 0;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &n, count_bytes);
    msgpack_pack_object(&pk, q->m->root);
    return n;
}

/* token_for writes the address token of host: a keyed hash only this node can make, sent only to host. */
static void token_for(const dht *d, const char *host, uint8_t out[DHT_TOKEN_BYTES])
{
    crypto_generichash(out, DHT_TOKEN_BYTES, (const uint8_t *)host, strlen(host), d->token_key, sizeof d->token_key);
}

/* address_proven returns 1 when q's source address is proven: a round trip went there before, or q
 * carries the token a cut reply sent there (which proves it from now on). */
static int address_proven(dht *d, const inreq *q)
{
    if (strcmp(q->from, "?") == 0) return 0;
    if (dht_node_host_proven(d, q->from)) return 1;
    uint8_t tok[DHT_TOKEN_BYTES], want[DHT_TOKEN_BYTES];
    int has = 0;
    char err[128];
    if (dht_proto_token_decode(&q->m->root, tok, &has, err, sizeof err) != 0 || !has) return 0;
    token_for(d, q->from, want);
    if (sodium_memcmp(tok, want, DHT_TOKEN_BYTES) != 0) return 0;
    dht_node_prove_host(d, q->from);
    return 1;
}

/* cut_to_cap returns reply o, or, when it is over DHT_REPLY_FACTOR times q's request, a reply cut to
 * fit with a token for q's address (o is consumed): first without the values found, then with half
 * the nearest peers each time, down to none -- a reply of that shape always fits (each key's entry
 * is smaller than the key was in the request). e[0..n) is changed. */
static wire_out *cut_to_cap(dht *d, const inreq *q, wire_out *o, dht_find_entry *e, size_t n, const dht_proof *pr)
{
    size_t cap = DHT_REPLY_FACTOR * request_bytes(q);
    if (wire_out_len(o) <= cap) return o;
    wire_out_free(o);
    uint8_t tok[DHT_TOKEN_BYTES];
    token_for(d, q->from, tok);
    d->istats.cut_replies++;
    for (size_t i = 0; i < n; i++) e[i].found = NULL;
    for (;;) {
        o = dht_proto_find_reply_cut(q->m->id, &d->self, e, n, pr, tok);
        size_t most = 0;
        for (size_t i = 0; i < n; i++) most = e[i].n_nearest > most ? e[i].n_nearest : most;
        if (!o || wire_out_len(o) <= cap || most == 0) return o;
        wire_out_free(o);
        for (size_t i = 0; i < n; i++) e[i].n_nearest /= 2;
    }
}

static void serve_find(dht *d, inreq *q, const uint8_t *chal)
{
    dht_find_req req;
    char err[256] = "";
    int rc = dht_proto_find_decode(&q->m->root, &req, err, sizeof err);
    if (rc) {
        answer_error(q, rc, err);
        return;
    }
    dht_node_heard(d, &req.sender, q->from);
    double now = dht_node_now(d);
    size_t k = d->cfg.bucket_size < DHT_PROTO_MAX_NEAREST ? d->cfg.bucket_size : DHT_PROTO_MAX_NEAREST;
    dht_find_entry *e = calloc(req.n, sizeof *e);
    dht_stored *st = calloc(req.n, sizeof *st);
    dht_node *near = calloc(req.n * k, sizeof *near);
    if (!e || !st || !near) {
        free(e);
        free(st);
        free(near);
        answer_error(q, DMOE_ENOMEM, "out of memory");
        return;
    }
    /* A get below that drops an expired key frees that key's entries only: the pointers of the keys
     * found before stay valid (dht_storage.h). Expiring the rest is the sweep's work (dht_node.c). */
    for (size_t i = 0; i < req.n; i++) {
        if (dht_storage_get(d->store, &req.keys[i], now, &st[i]) == 0 ||
            dht_storage_get(d->cache, &req.keys[i], now, &st[i]) == 0)
            e[i].found = &st[i];
        e[i].nearest = near + i * k;
        e[i].n_nearest = dht_routing_nearest(d->rt, &req.keys[i], k, req.sender.present ? &req.sender.id : NULL,
                                             near + i * k);
    }
    dht_proof proof;
    const dht_proof *pr = proof_for(d, chal, &proof);
    wire_out *o = dht_proto_find_reply(q->m->id, &d->self, e, req.n, pr);
    if (o && !address_proven(d, q)) o = cut_to_cap(d, q, o, e, req.n, pr);
    answer(q, o);
    free(e);
    free(st);
    free(near);
}

static void serve_store(dht *d, inreq *q, const uint8_t *chal)
{
    dht_store_req req;
    char err[256] = "";
    double now = dht_node_now(d);
    int rc = dht_proto_store_decode(&q->m->root, now, &req, err, sizeof err);
    if (rc) {
        answer_error(q, rc, err);
        return;
    }
    dht_node_heard(d, &req.sender, q->from);
    uint8_t stored[DHT_PROTO_MAX_KEYS], cls[DHT_PROTO_MAX_KEYS];
    for (size_t i = 0; i < req.n; i++) {   /* one item the policy refuses refuses the request, nothing stored */
        int c = dht_node_classify(d, &req.items[i], err, sizeof err);
        if (c < 0) {
            char m[320];
            snprintf(m, sizeof m, "item %zu: %s", i, err);
            answer_error(q, c, m);
            return;
        }
        cls[i] = (uint8_t)c;
    }
    for (size_t i = 0; i < req.n; i++)
        stored[i] = dht_node_store_from(d, q->from, &req.items[i], req.in_cache, cls[i]) == 1;
    dht_proof proof;
    answer(q, dht_proto_store_reply(q->m->id, &d->self, stored, req.n, proof_for(d, chal, &proof)));
}

static void serve(dht *d, inreq *q)
{
    uint8_t chal[DHT_CHALLENGE_BYTES];
    int has_chal = 0;
    char err[256] = "";
    if (d->stopped) {
        answer_error(q, DMOE_ESHUTDOWN, "the DHT node is stopping");
    } else if (d->cfg.client_mode) {
        answer_error(q, DMOE_ENOMETHOD, "a client-mode DHT node answers no DHT requests");
    } else if (strncmp(q->m->method, "dht_", 4) == 0 &&
               dht_proto_challenge_decode(&q->m->root, chal, &has_chal, err, sizeof err) != 0) {
        answer_error(q, DMOE_EINVAL, err);
    } else if (strcmp(q->m->method, "dht_ping") == 0) {
        dht_peer_info who;
        int rc = dht_proto_peer_decode(&q->m->root, "node", &who, err, sizeof err);
        if (rc) {
            answer_error(q, rc, err);
            return;
        }
        dht_node_heard(d, &who, q->from);
        dht_proof proof;
        wire_out *o = dht_proto_ping_reply(q->m->id, &d->self, proof_for(d, has_chal ? chal : NULL, &proof));
        if (o && !has_chal && !address_proven(d, q) && wire_out_len(o) > DHT_REPLY_FACTOR * request_bytes(q)) {
            /* Cut: a bare ping from an unproven address is answered, but without our PEER. */
            wire_out_free(o);
            d->istats.cut_replies++;
            o = dht_proto_ping_reply(q->m->id, NULL, NULL);
        }
        answer(q, o);
    } else if (strcmp(q->m->method, "dht_find") == 0) {
        serve_find(d, q, has_chal ? chal : NULL);
    } else if (strcmp(q->m->method, "dht_store") == 0) {
        serve_store(d, q, has_chal ? chal : NULL);
    } else {
        snprintf(err, sizeof err, "unknown DHT method %.40s", q->m->method);
        answer_error(q, DMOE_ENOMETHOD, err);
    }
}

static void inreq_drop(rt_msg *m)
{
    inreq *q = (inreq *)m;
    if (!q->answered) q->respond(q->ctx, NULL);
    wire_msg_free(q->m);
    free(q->m);
    free(q);
}

static void inreq_run(dht *d, dht_job *j)
{
    serve(d, (inreq *)j);
    rt_msg_drop(&j->msg);
}

void dht_node_deliver(dht *d, wire_msg *m, const char *from, dht_respond_fn respond, void *ctx)
{
    inreq *q = calloc(1, sizeof *q);
    if (!q) {
        respond(ctx, wire_error_reply(m->id, DMOE_ENOMEM, "out of memory"));
        wire_msg_free(m);
        free(m);
        return;
    }
    q->job.msg.drop = inreq_drop;
    q->job.run = inreq_run;
    q->m = m;
    q->respond = respond;
    q->ctx = ctx;
    snprintf(q->from, sizeof q->from, "%s", from && *from ? from : "?");
    if (dht_node_job(d, &q->job) != 0) {
        answer(q, wire_error_reply(m->id, DMOE_ESHUTDOWN, "the DHT node is stopping"));
        inreq_drop(&q->job.msg);
    }
}
