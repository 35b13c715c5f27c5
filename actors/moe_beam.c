/* moe_beam.c -- batched beam search over the DHT's prefix dictionaries (see moe_beam.h).
 *
 * Design notes. Every sample runs hivemind's per-sample algorithm as a small state machine (INIT, the
 * middle dimensions, FINAL, DONE). Samples never talk to the network: when a sample needs the
 * successors of a prefix it does not know yet, it interns the prefix in the search's table and marks it
 * wanted; moe_beam_want gathers the wanted prefixes of all samples (each prefix once per search), and
 * moe_beam_feed stores their successors and lets the samples advance again. So a batch of 256 samples
 * costs one provider call per round and one DHT get per distinct prefix, instead of one per sample.
 *
 * The initial beam looks ahead: a sample asks for its next (beam_size - beam length) untried
 * first-dimension prefixes at once (hivemind keeps that many gets in flight) and consumes the answers
 * strictly in score order, so the beam is the first beam_size non-empty prefixes, as in hivemind.
 * Prefixes are interned in a string table (xxHash, open addressing over stable entry indices).
 *
 * Plain data, no I/O, no globals; the driver at the end runs on the loop thread.
 */
#include "actors/moe_beam.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "runtime/rt_err.h"

/* Prefixes asked in one round: dht_get_active_successors takes at most this many. */
#define BEAM_MAX_ROUND DHT_EXPERTS_MAX_BATCH

enum { E_UNKNOWN = 0, E_WANTED = 1, E_KNOWN = 2 };
enum { P_INIT = 0, P_DIMS, P_FINAL, P_DONE };

typedef struct {
    char *key;
    int state;
    dht_successor *items;
    size_t n;
} entry;

typedef struct {
    float score;
    int32_t ent;
} item;

typedef struct {
    int phase, dim, cand_ready;
    int32_t *order;        /* first-dimension coordinates, best first */
    int next;              /* INIT: the next coordinate of order to consume */
    item *beam, *cand;
    int nbeam, ncand;
    moe_beam_expert *best; /* sorted, best first */
    int nbest;
    uint64_t *seen;        /* hashes of the uids offered to the heap (hivemind's unique_experts) */
    size_t nseen, capseen;
} sample;

struct moe_beam {
    char prefix[UID_MAX_LEN + 2];
    size_t plen;
    int ndim, grid[MOE_MAX_DIMS], off[MOE_MAX_DIMS], total;
    int64_t batch;
    int k;
    float *scores;
    entry *ents;
    size_t nents, capents;
    int32_t *slots;        /* hash index into ents, -1 empty */
    size_t nslots;
    const char **want;
    int32_t *want_ent;
    size_t nwant, capwant;
    int open;              /* a round has been gathered and not yet fed */
    int rounds;
    size_t fetched;
    sample *smp;
    int oom;
};

/* ---- the prefix table ---- */

static int grow_slots(moe_beam *b)
{
    size_t ns = b->nslots ? b->nslots * 2 : 256;
    int32_t *s = malloc(ns * sizeof *s);
    if (!s) return DMOE_ENOMEM;
    for (size_t i = 0; i < ns; i++) s[i] = -1;
    for (size_t e = 0; e < b->nents; e++) {
        size_t h = (size_t)XXH3_64bits(b->ents[e].key, strlen(b->ents[e].key)) & (ns - 1);
        while (s[h] >= 0) h = (h + 1) & (ns - 1);
        s[h] = (int32_t)e;
    }
    free(b->slots);
    b->slots = s;
    b->nslots = ns;
    return 0;
}

/* intern returns the entry index of key, creating an unknown entry; -1 when out of memory. */
static int32_t intern(moe_beam *b, const char *key)
{
    if ((b->nents + 1) * 2 > b->nslots && grow_slots(b) != 0) return -1;
    size_t len = strlen(key);
    size_t h = (size_t)XXH3_64bits(key, len) & (b->nslots - 1);
    while (b->slots[h] >= 0) {
        if (strcmp(b->ents[b->slots[h]].key, key) == 0) return b->slots[h];
        h = (h + 1) & (b->nslots - 1);
    }
    if (b->nents == b->capents) {
        size_t nc = b->capents ? b->capents * 2 : 128;
        entry *ne = realloc(b->ents, nc * sizeof *ne);
        if (!ne) return -1;
        b->ents = ne;
        b->capents = nc;
    }
    entry *e = &b->ents[b->nents];
    memset(e, 0, sizeof *e);
    e->key = strdup(key);
    if (!e->key) return -1;
    b->slots[h] = (int32_t)b->nents;
    return (int32_t)b->nents++;
}

/* request marks entry e wanted in this round (once). Returns 0 or DMOE_ENOMEM. */
static int request(moe_beam *b, int32_t e)
{
    if (b->ents[e].state != E_UNKNOWN) return 0;
    if (b->nwant == b->capwant) {
        size_t nc = b->capwant ? b->capwant * 2 : 64;
        const char **nw = realloc(b->want, nc * sizeof *nw);
        if (!nw) return DMOE_ENOMEM;
        b->want = nw;
        int32_t *ne = realloc(b->want_ent, nc * sizeof *ne);
        if (!ne) return DMOE_ENOMEM;
        b->want_ent = ne;
        b->capwant = nc;
    }
    b->ents[e].state = E_WANTED;
    b->want[b->nwant] = b->ents[e].key;
    b->want_ent[b->nwant++] = e;
    return 0;
}

/* ---- the per-sample algorithm ---- */

static const float *row(const moe_beam *b, const sample *s, int dim)
{
    return b->scores + (size_t)(s - b->smp) * (size_t)b->total + (size_t)b->off[dim];
}

int moe_beam_expert_coords(const char *uid_prefix, const int *grid, int ndim, const char *uid, int *coords)
{
    size_t plen = strlen(uid_prefix);
    if (strncmp(uid, uid_prefix, plen) != 0) return DMOE_EINVAL;
    const char *p = uid + plen;
    for (int d = 0; d < ndim; d++) {
        if (*p < '0' || *p > '9') return DMOE_EINVAL;
        long v = 0;
        while (*p >= '0' && *p <= '9') {
            v = v * 10 + (*p++ - '0');
            if (v >= grid[d]) return DMOE_EINVAL;
        }
        coords[d] = (int)v;
        if (d + 1 < ndim && *p++ != UID_DELIMITER) return DMOE_EINVAL;
    }
    return *p == '\0' ? 0 : DMOE_EINVAL;
}

/* offer puts an expert in the sample's heap of the beam_size best, once per uid. */
static void offer(moe_beam *b, sample *s, const dht_successor *m, float score)
{
    uint64_t h = XXH3_64bits(m->uid, strlen(m->uid));
    for (size_t i = 0; i < s->nseen; i++)
        if (s->seen[i] == h) return;
    if (s->nseen == s->capseen) {
        size_t nc = s->capseen ? s->capseen * 2 : 16;
        uint64_t *ns = realloc(s->seen, nc * sizeof *ns);
        if (!ns) { b->oom = 1; return; }
        s->seen = ns;
        s->capseen = nc;
    }
    s->seen[s->nseen++] = h;
    int at;
    if (s->nbest < b->k) at = s->nbest++;
    else if (score > s->best[b->k - 1].score) at = b->k - 1;
    else return;
    while (at > 0 && s->best[at - 1].score < score) {
        s->best[at] = s->best[at - 1];
        at--;
    }
    moe_beam_expert *x = &s->best[at];
    snprintf(x->uid, sizeof x->uid, "%s", m->uid);
    x->addr = m->addr;
    x->score = score;
}

/* add_matching offers every expert named by the beam's successors (hivemind's _iterate_matching_experts). */
static void add_matching(moe_beam *b, sample *s)
{
    int coords[MOE_MAX_DIMS];
    for (int i = 0; i < s->nbeam; i++) {
        const entry *e = &b->ents[s->beam[i].ent];
        for (size_t j = 0; j < e->n; j++) {
            const dht_successor *m = &e->items[j];
            if (b->ndim == 1 && m->coord == UID_FLAT_EXPERT) {
                offer(b, s, m, s->beam[i].score);
            } else if (moe_beam_expert_coords(b->prefix, b->grid, b->ndim, m->uid, coords) == 0) {
                float score = 0;
                for (int d = 0; d < b->ndim; d++) score += row(b, s, d)[coords[d]];
                offer(b, s, m, score);
            }
        }
    }
}

typedef struct {
    float score;
    int32_t parent;
    int64_t coord;
} pair;

static int pair_desc(const void *pa, const void *pb)
{
    const pair *a = pa, *c = pb;
    if (a->score != c->score) return a->score > c->score ? -1 : 1;
    if (a->parent != c->parent) return a->parent < c->parent ? -1 : 1;
    return a->coord > c->coord ? -1 : a->coord < c->coord;
}

/* form_candidates picks the beam_size best successors of the beam for dimension s->dim. */
static int form_candidates(moe_beam *b, sample *s)
{
    size_t total = 0;
    for (int i = 0; i < s->nbeam; i++) total += b->ents[s->beam[i].ent].n;
    pair *all = malloc((total ? total : 1) * sizeof *all);
    if (!all) return DMOE_ENOMEM;
    size_t n = 0;
    const float *sd = row(b, s, s->dim);
    for (int i = 0; i < s->nbeam; i++) {
        const entry *e = &b->ents[s->beam[i].ent];
        for (size_t j = 0; j < e->n; j++) {
            int64_t c = e->items[j].coord;
            if (c < 0 || c >= b->grid[s->dim]) continue;
            int dup = 0;   /* a malicious dictionary could repeat a coordinate */
            for (size_t q = 0; q < n && !dup; q++) dup = all[q].parent == i && all[q].coord == c;
            if (!dup) all[n++] = (pair){ s->beam[i].score + sd[c], i, c };
        }
    }
    qsort(all, n, sizeof *all, pair_desc);
    s->ncand = 0;
    char key[UID_MAX_LEN + 24];
    for (size_t q = 0; q < n && s->ncand < b->k; q++) {
        int w = snprintf(key, sizeof key, "%s%lld.", b->ents[s->beam[all[q].parent].ent].key, (long long)all[q].coord);
        if (w < 0 || (size_t)w >= sizeof key) continue;
        int32_t e = intern(b, key);
        if (e < 0) { free(all); return DMOE_ENOMEM; }
        s->cand[s->ncand++] = (item){ all[q].score, e };
    }
    free(all);
    return 0;
}

static int32_t first_dim_entry(moe_beam *b, int coord)
{
    char key[UID_MAX_LEN + 16];
    snprintf(key, sizeof key, "%s%d.", b->prefix, coord);
    return intern(b, key);
}

/* advance runs sample s as far as the known prefixes allow, requesting the unknown ones it needs.
 * Returns 0 or DMOE_ENOMEM. */
static int advance(moe_beam *b, sample *s)
{
    for (;;) {
        if (s->phase == P_INIT) {
            while (s->nbeam < b->k && s->next < b->grid[0]) {
                int c = s->order[s->next];
                int32_t e = first_dim_entry(b, c);
                if (e < 0) return DMOE_ENOMEM;
                if (b->ents[e].state != E_KNOWN) {
                    int need = b->k - s->nbeam;
                    for (int q = s->next; q < b->grid[0] && need > 0; q++) {
                        int32_t f = first_dim_entry(b, s->order[q]);
                        if (f < 0 || request(b, f) != 0) return DMOE_ENOMEM;
                        if (b->ents[f].state != E_KNOWN) need--;
                    }
                    return 0;
                }
                if (b->ents[e].n) s->beam[s->nbeam++] = (item){ row(b, s, 0)[c], e };
                s->next++;
            }
            s->phase = P_DIMS;
            s->dim = 1;
        } else if (s->phase == P_DIMS) {
            if (s->dim >= b->ndim - 1 || s->nbeam == 0) { s->phase = P_FINAL; continue; }
            if (!s->cand_ready) {
                add_matching(b, s);
                if (form_candidates(b, s) != 0) return DMOE_ENOMEM;
                s->cand_ready = 1;
            }
            int waiting = 0;
            for (int i = 0; i < s->ncand; i++) {
                if (b->ents[s->cand[i].ent].state == E_KNOWN) continue;
                if (request(b, s->cand[i].ent) != 0) return DMOE_ENOMEM;
                waiting = 1;
            }
            if (waiting) return 0;
            s->nbeam = 0;
            for (int i = 0; i < s->ncand; i++)
                if (b->ents[s->cand[i].ent].n) s->beam[s->nbeam++] = s->cand[i];
            s->cand_ready = 0;
            s->dim++;
        } else if (s->phase == P_FINAL) {
            add_matching(b, s);
            s->phase = P_DONE;
        } else {
            return 0;
        }
    }
}

/* ---- the core's interface ---- */

typedef struct {
    float s;
    int i;
} ranked;

static int ranked_desc(const void *pa, const void *pb)
{
    const ranked *a = pa, *c = pb;
    if (a->s != c->s) return a->s > c->s ? -1 : 1;
    return a->i > c->i ? -1 : a->i < c->i;   /* hivemind pops the larger index first on ties */
}

int moe_beam_new(const char *uid_prefix, const int *grid, int ndim, int64_t batch, const float *scores,
                 int beam_size, moe_beam **out)
{
    if (!uid_prefix || !grid || !scores || ndim < 1 || ndim > MOE_MAX_DIMS || batch < 1 || beam_size < 1 ||
        beam_size > MOE_MAX_BEAM)
        return DMOE_EINVAL;
    moe_beam *b = calloc(1, sizeof *b);
    if (!b) return DMOE_ENOMEM;
    size_t pl = strlen(uid_prefix);
    if (pl + 2 > sizeof b->prefix) { free(b); return DMOE_EINVAL; }
    snprintf(b->prefix, sizeof b->prefix, "%s%s", uid_prefix, pl && uid_prefix[pl - 1] == UID_DELIMITER ? "" : ".");
    b->plen = strlen(b->prefix);
    if (!uid_is_valid_prefix(b->prefix)) { free(b); return DMOE_EINVAL; }
    b->ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        if (grid[d] < 1 || b->total > (1 << 24)) { free(b); return DMOE_EINVAL; }
        b->grid[d] = grid[d];
        b->off[d] = b->total;
        b->total += grid[d];
    }
    b->batch = batch;
    b->k = beam_size;
    b->scores = malloc((size_t)batch * (size_t)b->total * sizeof *b->scores);
    b->smp = calloc((size_t)batch, sizeof *b->smp);
    ranked *r = malloc((size_t)grid[0] * sizeof *r);
    int rc = b->scores && b->smp && r ? 0 : DMOE_ENOMEM;
    if (rc == 0) memcpy(b->scores, scores, (size_t)batch * (size_t)b->total * sizeof *b->scores);
    for (int64_t i = 0; rc == 0 && i < batch; i++) {
        sample *s = &b->smp[i];
        s->order = malloc((size_t)grid[0] * sizeof *s->order);
        s->beam = malloc((size_t)beam_size * sizeof *s->beam);
        s->cand = malloc((size_t)beam_size * sizeof *s->cand);
        s->best = malloc((size_t)beam_size * sizeof *s->best);
        if (!s->order || !s->beam || !s->cand || !s->best) { rc = DMOE_ENOMEM; break; }
        const float *s0 = row(b, s, 0);
        for (int c = 0; c < grid[0]; c++) r[c] = (ranked){ s0[c], c };
        qsort(r, (size_t)grid[0], sizeof *r, ranked_desc);
        for (int c = 0; c < grid[0]; c++) s->order[c] = r[c].i;
    }
    free(r);
    if (rc) { moe_beam_free(b); return rc; }
    *out = b;
    return 0;
}

size_t moe_beam_want(moe_beam *b, const char *const **prefixes)
{
    if (!b->open) {
        b->nwant = 0;
        for (int64_t i = 0; i < b->batch && !b->oom; i++) {
            if (b->smp[i].phase == P_DONE) continue;
            if (b->nwant + (size_t)b->k > BEAM_MAX_ROUND) break;   /* the rest advance next round */
            if (advance(b, &b->smp[i]) != 0) b->oom = 1;
        }
        if (b->oom) b->nwant = 0;
        b->open = 1;
        if (b->nwant) {
            b->rounds++;
            b->fetched += b->nwant;
        }
    }
    *prefixes = (const char *const *)b->want;
    return b->nwant;
}

int moe_beam_feed(moe_beam *b, const dht_successors *per, size_t n)
{
    if (!b->open || n != b->nwant) return DMOE_EINVAL;
    for (size_t i = 0; i < n; i++) {
        entry *e = &b->ents[b->want_ent[i]];
        if (per[i].n) {
            e->items = malloc(per[i].n * sizeof *e->items);
            if (!e->items) return DMOE_ENOMEM;
            memcpy(e->items, per[i].items, per[i].n * sizeof *e->items);
            e->n = per[i].n;
        }
        e->state = E_KNOWN;
    }
    b->open = 0;
    b->nwant = 0;
    return 0;
}

size_t moe_beam_result(const moe_beam *b, int64_t s, const moe_beam_expert **out)
{
    if (s < 0 || s >= b->batch) { *out = NULL; return 0; }
    *out = b->smp[s].best;
    return (size_t)b->smp[s].nbest;
}

int moe_beam_rounds(const moe_beam *b) { return b->rounds; }
size_t moe_beam_fetched(const moe_beam *b) { return b->fetched; }

void moe_beam_free(moe_beam *b)
{
    if (!b) return;
    for (int64_t i = 0; b->smp && i < b->batch; i++) {
        sample *s = &b->smp[i];
        free(s->order);
        free(s->beam);
        free(s->cand);
        free(s->best);
        free(s->seen);
    }
    for (size_t e = 0; e < b->nents; e++) {
        free(b->ents[e].key);
        free(b->ents[e].items);
    }
    free(b->smp);
    free(b->ents);
    free(b->slots);
    free(b->want);
    free(b->want_ent);
    free(b->scores);
    free(b);
}

/* ---- the driver ---- */

struct moe_search {
    moe_succ_provider p;
    moe_beam *b;
    moe_search_cb cb;
    void *arg;
    int cancelled;
};

static int dht_provider_get(void *impl, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg)
{
    moe_dht_succ *s = impl;
    char err[256];
    return dht_get_active_successors(s->d, prefixes, n, s->neg_cache_s, cb, arg, err, sizeof err);
}

void moe_succ_dht(moe_dht_succ *s, moe_succ_provider *p)
{
    p->impl = s;
    p->get = dht_provider_get;
}

static void on_successors(void *arg, int err, const char *msg, const dht_successors *per, size_t n);

/* step asks for the next round or completes. Returns 0 or the provider's error (nothing called). */
static int step(moe_search *s)
{
    const char *const *pf;
    size_t n = moe_beam_want(s->b, &pf);
    if (n == 0) {
        s->cb(s->arg, s->b->oom ? DMOE_ENOMEM : 0, s->b->oom ? "out of memory" : "", s->b);
        free(s);
        return 0;
    }
    return s->p.get(s->p.impl, pf, n, on_successors, s);
}

static void on_successors(void *arg, int err, const char *msg, const dht_successors *per, size_t n)
{
    moe_search *s = arg;
    if (s->cancelled) { free(s); return; }
    int rc = err ? err : moe_beam_feed(s->b, per, n);
    if (rc == 0) rc = step(s);
    else msg = err ? msg : dmoe_strerror(rc);
    if (rc) {
        s->cb(s->arg, rc, msg ? msg : dmoe_strerror(rc), s->b);
        free(s);
    }
}

int moe_beam_search(const moe_succ_provider *p, moe_beam *b, moe_search_cb cb, void *arg, moe_search **out)
{
    moe_search *s = calloc(1, sizeof *s);
    if (!s) return DMOE_ENOMEM;
    s->p = *p;
    s->b = b;
    s->cb = cb;
    s->arg = arg;
    const char *const *pf;
    size_t n = moe_beam_want(b, &pf);
    int rc = n == 0 ? (b->oom ? DMOE_ENOMEM : DMOE_EINVAL) : p->get(p->impl, pf, n, on_successors, s);
    if (rc) { free(s); return rc; }
    if (out) *out = s;
    return 0;
}

void moe_search_cancel(moe_search *s)
{
    if (!s) return;
    s->cancelled = 1;
    s->b = NULL;
}
