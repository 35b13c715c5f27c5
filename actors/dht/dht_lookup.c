/* dht_lookup.c -- one actor per iterative lookup: find nodes, store, get (see dht_lookup.h).
 *
 * Design notes. A lookup keeps its candidates sorted by XOR distance to the target (at most
 * DHT_LOOKUP_MAX_CAND; the farthest fall off), each NEW, WAITING (a find in flight), SLOW (a find in
 * flight past the soft timeout), OK (answered) or FAILED. step() walks the list from the nearest,
 * counting candidates neither failed nor slow up to k, and sends a dht_find to each NEW one while fewer
 * than alpha finds that are not slow are in flight; when no such find is in flight and no NEW candidate
 * is among the k nearest, the search is over (Kademlia's termination rule).
 *
 * Soft timeout (libtorrent's DHT does the same). A peer that drops finds would otherwise hold one of the
 * alpha slots for the whole RPC timeout (3 s), and a lookup that meets a few such peers runs out of its
 * deadline. Each find in flight (the finds list) remembers when it left; one timer per lookup (soft)
 * fires when the oldest find that is not slow has waited dht_node_soft_timeout_ms (adaptive: the node's
 * smoothed RTT + 4 deviations, dht_rtt.h), and every find that has waited that long becomes slow: it
 * frees its alpha slot and its candidate leaves the k nearest live ones, so the next candidate is asked
 * in its place. The RPC runs on to its hard timeout: an answer that comes late, while the lookup still
 * searches, is used as any other (the candidate OK, its peers added, its value merged). A get's slow
 * finds do not hold the end of its search (it wants a value soon, from whoever has it); a store's and a
 * find_nodes' do: they choose the k (or num_replicas) nearest peers that answered, and ending without a
 * slow one would pass over an honest replica -- a new node's first finds to honest peers take two
 * round trips (their replies to an unproven address are cut, then sent again with the token), and a
 * store that did not wait for them went to the hostile peers that answered at once (found by
 * dmoe-dhtsim: stale records after a server's replacement declared). Only the hard timeout fails a
 * find, and only the node (dht_node.c) evicts and blacklists, so a slow peer stays in the routing
 * table. Each candidate
 * remembers its hop count: the seeds from our routing table are hop 1, a peer named by a hop-h reply is
 * hop h + 1. Like the routing table, the list takes at most max_per_host candidates from one IP address
 * (the nearest ones it hears of first), so ids ground on one host cannot crowd out the honest replicas.
 *
 * Phases: SEARCH -> (STORING for a store) -> DONE. The lookup sits in its node's list while not DONE:
 * gets of the same key and latest flag join a SEARCHing one as waiters, and dht_node_stop aborts them
 * all. The list belongs to this file: its head is in a lookup_set, the part (dht_node.h) this file
 * attaches to the node the first time it is needed; the node reaches it only through the part's hooks
 * (stop: abort them all; refresh: look up the ids of stale buckets; release: free the set).
 *
 * Callbacks run from the lookup's handler (start, deadline, soft timer) or from an RPC's completion,
 * never from the call that created the lookup. The actor is stopped (and freed after the round) only
 * when it is DONE and no RPC of it is in flight (slow finds included), so completions never meet freed
 * memory; a completion after DONE only counts itself out.
 *
 * Values found are copied into the lookup (plain value, or a dictionary merged per subkey, the newest
 * expiration winning; between a plain value and a dictionary the later expiration wins, as the
 * storage rules decide). Only what the signed-record policy accepts is merged (dht_trust_accept: good
 * signatures, capped lifetimes, trusted keys in a private swarm, records only for dht_get_signed), so a
 * forged answer is dropped before it can end a search early: the lookup goes on to honest replicas. An
 * entry already held with a later expiration is not checked again.
 */
#include "actors/dht/dht_lookup.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/trust/dht_trust.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

enum { LK_NODES = 0, LK_GET = 1, LK_STORE = 2 };
enum { PH_SEARCH = 0, PH_STORING = 1, PH_DONE = 2 };
enum { C_NEW = 0, C_WAIT = 1, C_OK = 2, C_FAIL = 3, C_SLOW = 4 };
enum { MSG_START = 1, MSG_DEADLINE = 2, MSG_SOFT = 3 };

typedef struct {
    dht_node n;
    int state, hops, had_value;
} cand;

/* One find in flight: the lookup's list of them (finds) is what the soft timer looks at. */
typedef struct lk_rpc {
    struct dht_lookup *lk;
    dht_id id;
    int hops;
    int slow;                  /* passed the soft timeout: no longer holds an alpha slot */
    uint64_t sent_us;          /* on the node's clock (dht_clock_us) */
    struct lk_rpc *prev, *next;
} lk_rpc;

typedef struct {
    dht_get_cb cb;
    void *arg;
} waiter;

struct dht_lookup {
    rt_actor actor;
    dht_timer deadline;
    dht_timer soft;            /* fires when the oldest find not yet slow reaches the soft timeout */
    rt_signal start;
    dht *d;
    struct lookup_set *set;
    int mode, phase, latest;
    int signed_only;       /* a get that keeps signed records only (dht_get_signed) */
    char refused[200];     /* a store: the first replica's reason for refusing it */
    dht_id target;
    size_t k;
    struct dht_lookup *prev, *next;
    cand c[DHT_LOOKUP_MAX_CAND];
    size_t nc;
    int inflight;              /* RPCs in flight, slow finds included (the actor is reaped at 0) */
    int nslow;                 /* slow finds among them */
    lk_rpc *finds;             /* the finds in flight */
    size_t rpcs, slow;         /* finds sent; finds that passed the soft timeout */
    /* what was found */
    int found, is_dict, hops_found;
    uint8_t *value;
    size_t vlen;
    dht_subitem *subs;
    size_t nsubs, capsubs;
    double exp;
    /* who waits */
    waiter *w;
    size_t nw, capw;
    dht_nodes_cb nodes_cb;
    void *nodes_arg;
    dht_store_item items[DHT_PROTO_MAX_KEYS];   /* a store's entries, all of key target */
    size_t nitems;
    size_t item_stored[DHT_PROTO_MAX_KEYS];     /* replicas that accepted each entry */
    dht_store_cb store_cb;                      /* dht_store (one entry) */
    dht_store_dict_cb dict_cb;                  /* or dht_store_dict */
    void *store_arg;
    int store_pending;
};

/* A node's lookups: the part this file attaches to the node, and the head of its list. */
typedef struct lookup_set {
    dht_part part;
    dht *d;
    dht_lookup *head;
} lookup_set;

/* The kind of a lookup_set's part. */
static const char set_kind = 0;

/* ---- list, lifetime ---- */

static void unlink_lookup(dht_lookup *lk)
{
    dht_lookup **head = &lk->set->head;
    if (lk->prev) lk->prev->next = lk->next;
    else if (*head == lk) *head = lk->next;
    if (lk->next) lk->next->prev = lk->prev;
    lk->prev = lk->next = NULL;
}

static void set_done(dht_lookup *lk)
{
    if (lk->phase == PH_DONE) return;
    lk->phase = PH_DONE;
    unlink_lookup(lk);
    dht_timer_cancel(&lk->deadline);
    dht_timer_cancel(&lk->soft);
}

static void maybe_reap(dht_lookup *lk)
{
    if (lk->phase == PH_DONE && lk->inflight == 0) rt_actor_stop(&lk->actor);
}

static void free_subs(dht_lookup *lk)
{
    for (size_t i = 0; i < lk->nsubs; i++) {
        free((void *)lk->subs[i].subkey);
        free((void *)lk->subs[i].value);
    }
    lk->nsubs = 0;
}

static void destroy(rt_actor *self)
{
    dht_lookup *lk = (dht_lookup *)self;
    dht_timer_deinit(&lk->deadline);
    dht_timer_deinit(&lk->soft);
    free(lk->value);
    free_subs(lk);
    free(lk->subs);
    free(lk->w);
    for (size_t i = 0; i < lk->nitems; i++) {
        free((void *)lk->items[i].subkey);
        free((void *)lk->items[i].value);
    }
    free(lk);
}

/* ---- found values ---- */

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *q = malloc(n ? n : 1);
    if (q && n) memcpy(q, p, n);
    return q;
}

static int set_plain(dht_lookup *lk, const uint8_t *v, size_t n, double exp)
{
    uint8_t *q = dup_bytes(v, n);
    if (!q) return DMOE_ENOMEM;
    free(lk->value);
    free_subs(lk);
    lk->value = q;
    lk->vlen = n;
    lk->exp = exp;
    lk->is_dict = 0;
    lk->found = 1;
    return 0;
}

static int merge_sub(dht_lookup *lk, const dht_subitem *s)
{
    for (size_t i = 0; i < lk->nsubs; i++) {
        dht_subitem *t = &lk->subs[i];
        if (t->sklen != s->sklen || memcmp(t->subkey, s->subkey, s->sklen) != 0) continue;
        if (s->expiration <= t->expiration) return 0;
        uint8_t *q = dup_bytes(s->value, s->vlen);
        if (!q) return DMOE_ENOMEM;
        free((void *)t->value);
        t->value = q;
        t->vlen = s->vlen;
        t->expiration = s->expiration;
        return 0;
    }
    if (lk->nsubs == lk->capsubs) {
        size_t cap = lk->capsubs ? lk->capsubs * 2 : 8;
        dht_subitem *ns = realloc(lk->subs, cap * sizeof *ns);
        if (!ns) return DMOE_ENOMEM;
        lk->subs = ns;
        lk->capsubs = cap;
    }
    uint8_t *sk = dup_bytes(s->subkey, s->sklen), *v = dup_bytes(s->value, s->vlen);
    if (!sk || !v) {
        free(sk);
        free(v);
        return DMOE_ENOMEM;
    }
    lk->subs[lk->nsubs++] = (dht_subitem){ sk, s->sklen, v, s->vlen, s->expiration };
    return 0;
}

/* policy_ok applies the signed-record policy to one entry found (subkey NULL: a plain value). */
static int policy_ok(const dht_lookup *lk, const uint8_t *subkey, size_t sklen, const uint8_t *v, size_t vlen, double exp,
                  double now)
{
    const dht_cfg *c = dht_node_cfg(lk->d);
    return dht_trust_accept(c->trusted_keys, c->max_record_lifetime_s, lk->signed_only, &lk->target, subkey, sklen, v,
                            vlen, exp, now);
}

/* held_newer returns 1 when the lookup already holds subkey s with an expiration at least s's. */
static int held_newer(const dht_lookup *lk, const dht_subitem *s)
{
    if (!lk->found || !lk->is_dict) return 0;
    for (size_t i = 0; i < lk->nsubs; i++)
        if (lk->subs[i].sklen == s->sklen && memcmp(lk->subs[i].subkey, s->subkey, s->sklen) == 0)
            return s->expiration <= lk->subs[i].expiration;
    return 0;
}

/* merge takes in a value found somewhere (plain or dictionary); entries expired at now, or that the
 * policy refuses, are ignored. */
static void merge(dht_lookup *lk, int is_dict, const uint8_t *v, size_t vlen, const dht_subitem *subs,
                  size_t nsubs, double exp, double now, int hops)
{
    if (exp < now) return;
    int first = !lk->found;
    if (!is_dict) {
        if ((!lk->found || exp > lk->exp) && policy_ok(lk, NULL, 0, v, vlen, exp, now)) {
            if (set_plain(lk, v, vlen, exp) == 0) lk->hops_found = hops;
        }
        return;
    }
    uint8_t *ok = calloc(nsubs ? nsubs : 1, 1);
    if (!ok) return;
    double okexp = -INFINITY;
    for (size_t i = 0; i < nsubs; i++)
        if (subs[i].expiration >= now && !held_newer(lk, &subs[i]) &&
            policy_ok(lk, subs[i].subkey, subs[i].sklen, subs[i].value, subs[i].vlen, subs[i].expiration, now)) {
            ok[i] = 1;
            if (subs[i].expiration > okexp) okexp = subs[i].expiration;
        }
    exp = okexp;
    if (exp == -INFINITY || (lk->found && !lk->is_dict && exp <= lk->exp)) {
        free(ok);
        return;
    }
    if (lk->found && !lk->is_dict) {
        free(lk->value);
        lk->value = NULL;
        lk->vlen = 0;
        lk->exp = 0;
    }
    lk->is_dict = 1;
    lk->found = 1;
    for (size_t i = 0; i < nsubs; i++)
        if (ok[i] && merge_sub(lk, &subs[i]) == 0 && subs[i].expiration > lk->exp) lk->exp = subs[i].expiration;
    free(ok);
    if (first || lk->nsubs == 0) lk->hops_found = hops;
    if (lk->nsubs == 0) lk->found = 0;
}

/* ---- candidates ---- */

static void add_cand(dht_lookup *lk, const dht_node *n, int hops)
{
    if (dht_id_eq(&n->id, dht_node_id(lk->d))) return;
    size_t pos = lk->nc;
    for (size_t i = 0; i < lk->nc; i++) {
        int c = dht_id_distance_cmp(&lk->target, &n->id, &lk->c[i].n.id);
        if (c == 0) return;
        if (c < 0 && pos == lk->nc) pos = i;
    }
    for (size_t i = pos; i < lk->nc; i++)
        if (dht_id_eq(&lk->c[i].n.id, &n->id)) return;
    if (pos == DHT_LOOKUP_MAX_CAND) return;
    const dht_cfg *cfg = dht_node_cfg(lk->d);
    if (dht_addr_host_limited(&n->addr, cfg->limit_loopback)) {   /* at most max_per_host per IP address */
        size_t same = 0;
        for (size_t i = 0; i < lk->nc; i++) same += dht_addr_same_host(&lk->c[i].n.addr, &n->addr);
        if (same >= cfg->max_per_host) return;
    }
    size_t last = lk->nc < DHT_LOOKUP_MAX_CAND ? lk->nc : DHT_LOOKUP_MAX_CAND - 1;
    memmove(&lk->c[pos + 1], &lk->c[pos], (last - pos) * sizeof lk->c[0]);
    lk->c[pos] = (cand){ *n, C_NEW, hops, 0 };
    lk->c[pos].n.last_seen = 0;
    lk->c[pos].n.ping_pending = 0;
    if (lk->nc < DHT_LOOKUP_MAX_CAND) lk->nc++;
}

static cand *find_cand(dht_lookup *lk, const dht_id *id)
{
    for (size_t i = 0; i < lk->nc; i++)
        if (dht_id_eq(&lk->c[i].n.id, id)) return &lk->c[i];
    return NULL;
}

/* ---- phases ---- */

static void search_done(dht_lookup *lk, int err);

static void on_find(void *arg, int err, const char *msg, const dht_find_rep *rep);

/* soft_arm arms the soft timer for the oldest find in flight that is not slow yet (cancels it when there
 * is none). */
static void soft_arm(dht_lookup *lk)
{
    uint64_t oldest = UINT64_MAX;
    for (const lk_rpc *r = lk->finds; r; r = r->next)
        if (!r->slow && r->sent_us < oldest) oldest = r->sent_us;
    if (oldest == UINT64_MAX) {
        dht_timer_cancel(&lk->soft);
        return;
    }
    uint64_t due = oldest + dht_node_soft_timeout_ms(lk->d) * 1000, now = dht_clock_us(dht_node_clock(lk->d));
    uint64_t ms = due > now ? (due - now + 999) / 1000 : 1;
    if (dht_timer_start(&lk->soft, ms, 0) != 0)
        LOG_DEBUG("out of memory arming a lookup's soft timer: its finds hold their slots to the RPC timeout");
}

/* soft_expire marks slow every find in flight that has waited the soft timeout: it stops holding an
 * alpha slot and its candidate stops counting among the k nearest live ones (C_SLOW), so step() asks the
 * next candidate. The RPC runs on; a late answer is used as any other. */
static void soft_expire(dht_lookup *lk)
{
    uint64_t now = dht_clock_us(dht_node_clock(lk->d)), soft_us = dht_node_soft_timeout_ms(lk->d) * 1000;
    for (lk_rpc *r = lk->finds; r; r = r->next) {
        if (r->slow || now - r->sent_us < soft_us) continue;
        r->slow = 1;
        lk->nslow++;
        lk->slow++;
        cand *c = find_cand(lk, &r->id);
        if (c && c->state == C_WAIT) c->state = C_SLOW;
    }
}

static void step(dht_lookup *lk)
{
    if (lk->phase != PH_SEARCH) return;
    if (lk->mode == LK_GET && lk->found && !lk->latest) {
        search_done(lk, 0);
        return;
    }
    size_t live = 0, alpha = dht_node_cfg(lk->d)->alpha;
    for (size_t i = 0; i < lk->nc && live < lk->k; i++) {
        cand *c = &lk->c[i];
        if (c->state == C_FAIL || c->state == C_SLOW) continue;
        if (c->state == C_NEW) {
            if ((size_t)(lk->inflight - lk->nslow) >= alpha) {
                live++;
                continue;
            }
            lk_rpc *r = malloc(sizeof *r);
            int rc = r ? 0 : DMOE_ENOMEM;
            if (r) {
                uint64_t now_us = dht_clock_us(dht_node_clock(lk->d));
                *r = (lk_rpc){ lk, c->n.id, c->hops, 0, now_us, NULL, lk->finds };
                rc = dht_node_find(lk->d, &c->n, &lk->target, 1, on_find, r);
                if (rc) free(r);
            }
            if (rc) {
                c->state = C_FAIL;
                continue;
            }
            if (lk->finds) lk->finds->prev = r;
            lk->finds = r;
            c->state = C_WAIT;
            lk->inflight++;
            lk->rpcs++;
        }
        live++;
    }
    /* A get's slow finds do not hold its end; a store or find_nodes waits for them (see the notes) */
    if (lk->inflight == (lk->mode == LK_GET ? lk->nslow : 0)) search_done(lk, 0);
    else soft_arm(lk);
}

static void on_find(void *arg, int err, const char *msg, const dht_find_rep *rep)
{
    lk_rpc *r = arg;
    dht_lookup *lk = r->lk;
    lk->inflight--;
    lk->nslow -= r->slow;
    if (r->prev) r->prev->next = r->next;
    else lk->finds = r->next;
    if (r->next) r->next->prev = r->prev;
    cand *c = find_cand(lk, &r->id);
    if (lk->phase == PH_SEARCH) {
        if (err) {
            if (c) c->state = C_FAIL;
        } else {
            const dht_find_result *res = &rep->results[0];
            if (c) c->state = C_OK;
            for (size_t i = 0; i < res->n_nearest; i++) add_cand(lk, &res->nearest[i], r->hops + 1);
            if (res->type != DHT_FOUND_NONE) {
                merge(lk, res->type == DHT_FOUND_DICT, res->value, res->vlen, res->subs, res->nsubs, res->expiration,
                      dht_node_now(lk->d), r->hops);
                c = find_cand(lk, &r->id);
                if (c) c->had_value = 1;
            }
        }
        step(lk);
    }
    free(r);
    maybe_reap(lk);
}

static void on_cache_store(void *arg, int err, const char *msg, const dht_store_rep *rep)
{
    dht_lookup *lk = arg;
    lk->inflight--;
    maybe_reap(lk);
}

/* value_items lists what was found as store items (at most cap); returns the count. */
static size_t value_items(const dht_lookup *lk, dht_store_item *items, size_t cap)
{
    if (!lk->is_dict) {
        items[0] = (dht_store_item){ lk->target, NULL, 0, lk->value, lk->vlen, lk->exp };
        return 1;
    }
    size_t n = lk->nsubs < cap ? lk->nsubs : cap;
    for (size_t i = 0; i < n; i++)
        items[i] = (dht_store_item){ lk->target, lk->subs[i].subkey, lk->subs[i].sklen, lk->subs[i].value,
                                     lk->subs[i].vlen, lk->subs[i].expiration };
    return n;
}

static void cache_found(dht_lookup *lk)
{
    dht *d = lk->d;
    dht_store_item items[DHT_PROTO_MAX_KEYS];
    size_t n = value_items(lk, items, DHT_PROTO_MAX_KEYS);
    for (size_t i = 0; i < n; i++) dht_node_store_local(d, &items[i], 1);
    /* The nearest node that answered without the value; those that had it are skipped (a plain get
     * usually ends at its nearest answering node, the one that had the value). */
    for (size_t i = 0; i < lk->nc; i++) {
        cand *c = &lk->c[i];
        if (c->state != C_OK || c->had_value) continue;
        if (dht_node_store_rpc(d, &c->n, items, n, 1, on_cache_store, lk) == 0) lk->inflight++;
        break;
    }
}

static void finish_get(dht_lookup *lk, int err, const char *msg)
{
    if (err == 0 && lk->found && !dht_node_cfg(lk->d)->no_cache && !dht_node_is_stopped(lk->d)) cache_found(lk);
    set_done(lk);
    dht_get_result r = { lk->found && err == 0, lk->is_dict, lk->value, lk->vlen, lk->subs, lk->nsubs, lk->exp,
                         lk->hops_found, lk->rpcs, lk->slow };
    if (!r.found) {
        r.is_dict = 0;
        r.nsubs = 0;
    }
    for (size_t i = 0; i < lk->nw; i++) lk->w[i].cb(lk->w[i].arg, err, msg, &r);
    lk->nw = 0;
}

/* store_finish calls a store's callback: err 0 when every entry reached a replica, else err, or
 * DMOE_ENOTFOUND with msg when err is 0 but some entry reached none. */
static void store_finish(dht_lookup *lk, int err, const char *msg)
{
    size_t missing = 0;
    for (size_t i = 0; i < lk->nitems; i++) missing += lk->item_stored[i] == 0;
    if (!err && missing) err = DMOE_ENOTFOUND;
    if (lk->store_cb) lk->store_cb(lk->store_arg, err, msg, lk->item_stored[0]);
    if (lk->dict_cb) lk->dict_cb(lk->store_arg, err, msg, lk->item_stored, lk->nitems);
}

static void on_store_done(void *arg, int err, const char *msg, const dht_store_rep *rep)
{
    dht_lookup *lk = arg;
    lk->inflight--;
    lk->store_pending--;
    for (size_t i = 0; !err && rep && i < lk->nitems && i < rep->n; i++) lk->item_stored[i] += rep->stored[i] != 0;
    if (err == DMOE_EINVAL && msg && msg[0] && !lk->refused[0]) snprintf(lk->refused, sizeof lk->refused, "%s", msg);
    if (lk->store_pending == 0 && lk->phase == PH_STORING) {
        char m[280] = "";
        size_t missing = 0;
        for (size_t i = 0; i < lk->nitems; i++) missing += lk->item_stored[i] == 0;
        if (missing)
            snprintf(m, sizeof m, "no replica accepted %s%s%s", lk->nitems > 1 ? "some entries" : "the value",
                     lk->refused[0] ? ": " : "", lk->refused);
        set_done(lk);
        store_finish(lk, 0, m);
    }
    maybe_reap(lk);
}

static void start_storing(dht_lookup *lk)
{
    dht *d = lk->d;
    const dht_cfg *cfg = dht_node_cfg(d);
    size_t want = cfg->num_replicas, sent = 0;
    lk->phase = PH_STORING;
    lk->store_pending = 1;   /* held while sending, released by the on_store_done call below */
    lk->inflight++;
    size_t nok = 0;
    const dht_node *kth = NULL;
    for (size_t i = 0; i < lk->nc; i++)
        if (lk->c[i].state == C_OK && ++nok == want) {
            kth = &lk->c[i].n;
            break;
        }
    if (!cfg->client_mode && (!kth || dht_id_distance_cmp(&lk->target, dht_node_id(d), &kth->id) < 0)) {
        for (size_t j = 0; j < lk->nitems; j++) {
            const dht_store_item *it = &lk->items[j];
            int rc = dht_node_store_local(d, it, 0);
            if (rc == 1) lk->item_stored[j]++;
            else if (rc == DMOE_EINVAL && !lk->refused[0])   /* the policy's reason, as a replica would give it */
                dht_trust_check_store(cfg->trusted_keys, cfg->max_record_lifetime_s, &it->key, it->subkey, it->sklen,
                                      it->value, it->vlen, it->expiration, dht_node_now(d), lk->refused,
                                      sizeof lk->refused);
        }
        want--;
    }
    for (size_t i = 0; i < lk->nc && sent < want; i++) {
        cand *c = &lk->c[i];
        if (c->state != C_OK) continue;
        sent++;
        if (dht_node_store_rpc(d, &c->n, lk->items, lk->nitems, 0, on_store_done, lk) == 0) {
            lk->inflight++;
            lk->store_pending++;
        }
    }
    on_store_done(lk, DMOE_ECONN, "", NULL);
}

static void search_done(dht_lookup *lk, int err)
{
    if (lk->phase != PH_SEARCH) return;
    if (lk->mode == LK_GET) {
        finish_get(lk, lk->found ? 0 : err, lk->found || !err ? "" : "the lookup deadline passed");
    } else if (lk->mode == LK_STORE) {
        start_storing(lk);
    } else {
        dht_node out[DHT_LOOKUP_MAX_CAND];
        size_t n = 0;
        int hops = 0;
        for (size_t i = 0; i < lk->nc && n < lk->k; i++)
            if (lk->c[i].state == C_OK) {
                out[n++] = lk->c[i].n;
                if (lk->c[i].hops > hops) hops = lk->c[i].hops;
            }
        set_done(lk);
        if (lk->nodes_cb) lk->nodes_cb(lk->nodes_arg, 0, "", out, n, hops);
    }
}

static void abort_lookup(dht_lookup *lk, int err, const char *msg)
{
    if (lk->phase == PH_DONE) return;
    int mode = lk->mode;
    if (mode == LK_GET) {
        lk->found = 0;
        finish_get(lk, err, msg);
    } else {
        set_done(lk);
        if (mode == LK_STORE) store_finish(lk, err, msg);
        if (mode == LK_NODES && lk->nodes_cb) lk->nodes_cb(lk->nodes_arg, err, msg, NULL, 0, 0);
    }
    maybe_reap(lk);
}

/* ---- the actor ---- */

static void start(dht_lookup *lk)
{
    dht *d = lk->d;
    if (dht_node_is_stopped(d)) {
        abort_lookup(lk, DMOE_ESHUTDOWN, "the DHT node is stopping");
        return;
    }
    if (lk->mode == LK_GET) {
        double now = dht_node_now(d);
        dht_stored st;
        if (dht_storage_get(dht_node_storage(d), &lk->target, now, &st) == 0)
            merge(lk, st.is_dict, st.value, st.vlen, st.subs, st.nsubs, st.expiration, now, 0);
        if (dht_storage_get(dht_node_cache(d), &lk->target, now, &st) == 0)
            merge(lk, st.is_dict, st.value, st.vlen, st.subs, st.nsubs, st.expiration, now, 0);
        if (lk->found && !lk->latest) {
            set_done(lk);   /* found locally: nothing to cache, answer now */
            dht_get_result r = { 1, lk->is_dict, lk->value, lk->vlen, lk->subs, lk->nsubs, lk->exp, 0, 0, 0 };
            for (size_t i = 0; i < lk->nw; i++) lk->w[i].cb(lk->w[i].arg, 0, "", &r);
            lk->nw = 0;
            maybe_reap(lk);
            return;
        }
    }
    dht_node seeds[DHT_LOOKUP_MAX_CAND];
    size_t n = dht_routing_nearest(dht_node_routing(d), &lk->target, lk->k, NULL, seeds);
    for (size_t i = 0; i < n; i++) add_cand(lk, &seeds[i], 1);
    if (dht_timer_start(&lk->deadline, dht_node_cfg(d)->lookup_timeout_ms, 0) != 0) {
        abort_lookup(lk, DMOE_ENOMEM, "out of memory arming the lookup deadline");
        return;
    }
    step(lk);
    maybe_reap(lk);
}

static void handle(rt_actor *self, rt_msg *m)
{
    dht_lookup *lk = (dht_lookup *)self;
    if (m->type == MSG_START) {
        rt_msg_drop(m);
        start(lk);
        return;
    }
    if (m->type == MSG_DEADLINE && lk->phase == PH_SEARCH) {
        LOG_DEBUG("lookup deadline: %d RPCs still in flight", lk->inflight);
        search_done(lk, DMOE_ETIMEDOUT);
        maybe_reap(lk);
    }
    if (m->type == MSG_SOFT && lk->phase == PH_SEARCH) {
        soft_expire(lk);
        step(lk);
        maybe_reap(lk);
    }
    rt_msg_drop(m);
}

/* ---- the set ---- */

static void set_stop(dht_part *p)
{
    lookup_set *set = (lookup_set *)p;
    /* Each abort unlinks the head, so the loop ends when the list is empty. */
    while (set->head) abort_lookup(set->head, DMOE_ESHUTDOWN, "the DHT node is stopping");
}

static void set_refresh(dht_part *p, const dht_id *ids, size_t n)
{
    lookup_set *set = (lookup_set *)p;
    for (size_t i = 0; i < n; i++)
        if (dht_find_nodes(set->d, &ids[i], 0, NULL, NULL) != 0) LOG_DEBUG("a stale-bucket refresh did not start");
}

static void set_release(dht_part *p) { free(p); }

static lookup_set *get_set(dht *d)
{
    lookup_set *set = (lookup_set *)dht_node_part(d, &set_kind);
    if (set) return set;
    set = calloc(1, sizeof *set);
    if (!set) return NULL;
    set->part = (dht_part){ NULL, &set_kind, set_stop, set_refresh, set_release };
    set->d = d;
    dht_node_attach(d, &set->part);
    return set;
}

int dht_lookup_attach(dht *d) { return get_set(d) ? 0 : DMOE_ENOMEM; }

static dht_lookup *lookup_new(dht *d, int mode, const dht_id *target, size_t k)
{
    lookup_set *set = get_set(d);
    if (!set) return NULL;
    dht_lookup *lk = calloc(1, sizeof *lk);
    if (!lk) return NULL;
    rt_actor_init(&lk->actor, dht_node_loop(d), "dht_lookup", handle, destroy);
    if (dht_timer_init(&lk->deadline, dht_node_clock(d), &lk->actor, MSG_DEADLINE) != 0 ||
        dht_timer_init(&lk->soft, dht_node_clock(d), &lk->actor, MSG_SOFT) != 0) {
        dht_timer_deinit(&lk->deadline);
        dht_timer_deinit(&lk->soft);
        free(lk);
        return NULL;
    }
    lk->set = set;
    rt_signal_init(&lk->start, &lk->actor, MSG_START);
    lk->d = d;
    lk->mode = mode;
    lk->target = *target;
    lk->k = k ? k : dht_node_cfg(d)->bucket_size;
    if (lk->k > DHT_LOOKUP_MAX_CAND) lk->k = DHT_LOOKUP_MAX_CAND;
    lk->next = set->head;
    if (set->head) set->head->prev = lk;
    set->head = lk;
    return lk;
}

static int add_waiter(dht_lookup *lk, dht_get_cb cb, void *arg)
{
    if (lk->nw == lk->capw) {
        size_t cap = lk->capw ? lk->capw * 2 : 4;
        waiter *w = realloc(lk->w, cap * sizeof *w);
        if (!w) return DMOE_ENOMEM;
        lk->w = w;
        lk->capw = cap;
    }
    lk->w[lk->nw++] = (waiter){ cb, arg };
    return 0;
}

/* get is dht_get, keeping signed records only when signed_only. */
static int get(dht *d, const dht_id *key, int latest, int signed_only, dht_get_cb cb, void *arg)
{
    if (dht_node_is_stopped(d)) return DMOE_ESHUTDOWN;
    lookup_set *set = get_set(d);
    if (!set) return DMOE_ENOMEM;
    for (dht_lookup *lk = set->head; lk; lk = lk->next)
        if (lk->mode == LK_GET && lk->phase == PH_SEARCH && lk->latest == !!latest &&
            lk->signed_only == signed_only && lk->nw < DHT_LOOKUP_MAX_WAITERS && dht_id_eq(&lk->target, key))
            return add_waiter(lk, cb, arg);
    dht_lookup *lk = lookup_new(d, LK_GET, key, 0);
    if (!lk) return DMOE_ENOMEM;
    lk->latest = !!latest;
    lk->signed_only = signed_only;
    if (add_waiter(lk, cb, arg) != 0) {
        set_done(lk);
        rt_actor_stop(&lk->actor);
        return DMOE_ENOMEM;
    }
    rt_signal_raise(&lk->start);
    return 0;
}

int dht_get(dht *d, const dht_id *key, int latest, dht_get_cb cb, void *arg) { return get(d, key, latest, 0, cb, arg); }

int dht_get_signed(dht *d, const dht_id *key, int latest, dht_get_cb cb, void *arg)
{
    return get(d, key, latest, 1, cb, arg);
}

/* store_new starts a store of entries[0..n) (n >= 1) under key with callbacks set by the caller.
 * Returns the lookup, its entries copied, or NULL (DMOE_ENOMEM) with nothing started. */
static dht_lookup *store_new(dht *d, const dht_id *key, const dht_dict_entry *entries, size_t n, double expiration)
{
    dht_lookup *lk = lookup_new(d, LK_STORE, key, 0);
    if (!lk) return NULL;
    size_t k = dht_node_cfg(d)->num_replicas;
    if (lk->k < k) lk->k = k;
    for (size_t i = 0; i < n; i++) {
        const dht_dict_entry *e = &entries[i];
        uint8_t *sk = e->subkey ? dup_bytes(e->subkey, e->sklen) : NULL, *v = dup_bytes(e->value, e->vlen);
        lk->items[lk->nitems++] = (dht_store_item){ *key, sk, e->subkey ? e->sklen : 0, v, e->vlen, expiration };
        if ((e->subkey && !sk) || !v) {
            set_done(lk);
            rt_actor_stop(&lk->actor);   /* destroy frees the copies made so far */
            return NULL;
        }
    }
    return lk;
}

/* entry_check returns 0 when an entry fits the protocol's bounds, else DMOE_ETOOBIG. */
static int entry_check(const void *subkey, size_t sklen, size_t vlen)
{
    if (vlen > DHT_MAX_VALUE_BYTES || (subkey && (sklen == 0 || sklen > DHT_MAX_SUBKEY_BYTES))) return DMOE_ETOOBIG;
    return 0;
}

int dht_store(dht *d, const dht_id *key, const void *subkey, size_t sklen, const void *value, size_t vlen,
              double expiration, dht_store_cb cb, void *arg)
{
    if (dht_node_is_stopped(d)) return DMOE_ESHUTDOWN;
    if (entry_check(subkey, sklen, vlen) != 0) return DMOE_ETOOBIG;
    if (!isfinite(expiration)) return DMOE_EINVAL;
    dht_dict_entry e = { subkey, sklen, value, vlen };
    dht_lookup *lk = store_new(d, key, &e, 1, expiration);
    if (!lk) return DMOE_ENOMEM;
    lk->store_cb = cb;
    lk->store_arg = arg;
    rt_signal_raise(&lk->start);
    return 0;
}

int dht_store_dict(dht *d, const dht_id *key, const dht_dict_entry *entries, size_t n, double expiration,
                   dht_store_dict_cb cb, void *arg)
{
    if (dht_node_is_stopped(d)) return DMOE_ESHUTDOWN;
    if (n == 0 || n > DHT_PROTO_MAX_KEYS) return n ? DMOE_ETOOBIG : DMOE_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!entries[i].subkey) return DMOE_EINVAL;
        if (entry_check(entries[i].subkey, entries[i].sklen, entries[i].vlen) != 0) return DMOE_ETOOBIG;
    }
    if (!isfinite(expiration)) return DMOE_EINVAL;
    dht_lookup *lk = store_new(d, key, entries, n, expiration);
    if (!lk) return DMOE_ENOMEM;
    lk->dict_cb = cb;
    lk->store_arg = arg;
    rt_signal_raise(&lk->start);
    return 0;
}

int dht_find_nodes(dht *d, const dht_id *target, size_t k, dht_nodes_cb cb, void *arg)
{
    if (dht_node_is_stopped(d)) return DMOE_ESHUTDOWN;
    dht_lookup *lk = lookup_new(d, LK_NODES, target, k);
    if (!lk) return DMOE_ENOMEM;
    lk->nodes_cb = cb;
    lk->nodes_arg = arg;
    rt_signal_raise(&lk->start);
    return 0;
}
