/* dht_serve.c -- the DHT node's answers: incoming ping, find and store requests (see dht_node.h).
 *
 * A transport hands each request to dht_node_deliver, which wraps it in a job for the node's actor, so
 * a burst of requests is served at most RT_ACTOR_BATCH per round. In turn, each is decoded by dht_proto,
 * its sender is handed to dht_node_heard (refreshed, or probed: nothing it claims is believed before a
 * proof), what it stores goes to dht_node_store_from charged to the IP address it came from, and it is
 * answered at once (nothing in a DHT request waits for anything else), with a proof of our id when it
 * carried a challenge. Every request is answered exactly once, or released unanswered when the node
 * drops it (inreq_drop). Loop thread only; calls the node below it, never the lookups above.
 */
#include "actors/dht/dht_node.h"
#include "actors/dht/dht_node_impl.h"

#include <stdio.h>
#include <stdlib.h>
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
    /* Expire first so that the gets below drop nothing and every pointer stays valid. */
    dht_storage_expire(d->store, now);
    dht_storage_expire(d->cache, now);
    for (size_t i = 0; i < req.n; i++) {
        if (dht_storage_get(d->store, &req.keys[i], now, &st[i]) == 0 ||
            dht_storage_get(d->cache, &req.keys[i], now, &st[i]) == 0)
            e[i].found = &st[i];
        e[i].nearest = near + i * k;
        e[i].n_nearest = dht_routing_nearest(d->rt, &req.keys[i], k, req.sender.present ? &req.sender.id : NULL,
                                             near + i * k);
    }
    dht_proof proof;
    answer(q, dht_proto_find_reply(q->m->id, &d->self, e, req.n, proof_for(d, chal, &proof)));
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
    uint8_t stored[DHT_PROTO_MAX_KEYS];
    for (size_t i = 0; i < req.n; i++) {
        const dht_store_item *it = &req.items[i];
        stored[i] = dht_node_store_from(d, q->from, it, req.in_cache) == 1;
    }
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
        answer(q, dht_proto_ping_reply(q->m->id, &d->self, proof_for(d, has_chal ? chal : NULL, &proof)));
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
