/* moe_beam.c -- exact best-first search for each sample's best live experts over the DHT's prefix
 * dictionaries (see moe_beam.h).
 *
 * Design notes. The grid is a tree: the root is uid_prefix ("ffn."), a node of depth d is the prefix
 * that fixes d coordinates ("ffn.3.", "ffn.3.7."), and the experts are its leaves. The DHT holds, for
 * every prefix with 1..D-1 coordinates, the dictionary of its live children (coordinate -> [some uid
 * below it, address]); a 1-d grid stores "expert.5." -> {-1: ["expert.5", address]} (FLAT_EXPERT).
 * The root itself is never stored, so its children are every coordinate of the first dimension.
 *
 * Every sample keeps a frontier, a max-heap of the prefixes it has not expanded yet, keyed by an upper
 * bound on the score of any expert below: the sum of the fixed coordinates' scores plus, for each
 * remaining dimension, the sample's maximum score in that dimension. Each round a sample pops, best
 * bound first, every prefix that could still place an expert in its top k (all of them while it has
 * fewer than k), at most BEAM_PER_SAMPLE that need a fetch; prefixes already known are expanded on the
 * spot. The popped prefixes of all samples form one provider call (each prefix at most once per search);
 * when their successors come back, each sample expands its popped prefixes into children with their
 * bounds, or into experts at the last dimension. A middle dictionary's value names one live expert
 * below each child; the sample scores it right away (a "hint"), which raises its k-th best early and
 * prunes the frontier. A sample is done when its frontier is empty or its best bound is below its k-th
 * best score: nothing left can enter, so the answer is exactly what exhaustive scoring of the live
 * experts gives, ties broken by uid in byte order (strcmp).
 *
 * Scores are summed in dimension order, the bound the same way with maxima in place of the unfixed
 * coordinates: IEEE addition rounds monotonically, so a bound is never below any score under it, and
 * the float sums equal those of a reference that adds coordinates in order. NaN scores count as -inf.
 *
 * Prefixes are interned in a table of entries indexed by an rt_map (prefix -> entry index); a frontier
 * node names its parent's entry and its coordinate and is interned only when popped.
 * Plain data, no I/O, no globals; the driver at the end runs on the loop thread.
 */
#include "actors/moe/route/moe_beam.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_map.h"

/* Prefixes asked in one round: dht_get_active_successors takes at most this many. */
#define BEAM_MAX_ROUND DHT_EXPERTS_MAX_BATCH
/* Fetches one sample may wait for per round: a 1-d grid (or a first dimension) of up to this size is
 * searched in one round, and a round stays bounded however wide the grid. */
#define BEAM_PER_SAMPLE 256
/* A prefix remembers its children's entries in an array as wide as their dimension up to this width
 * (256 KiB); a wider dimension looks its prefixes up in the map. */
#define BEAM_KIDS_MAX 65536

enum { E_UNKNOWN = 0, E_WANTED = 1, E_KNOWN = 2 };

typedef struct {
    char *key;
    int state;
    dht_successor *items;  /* sorted by coordinate, one per coordinate */
    size_t n;
    int32_t *kids;         /* child coordinate -> its entry, or -1 (made when a child is first interned) */
} entry;

/* A prefix on a sample's frontier, or popped and waiting for its successors. */
typedef struct {
    float bound;           /* no expert below scores more */
    float ps;              /* the fixed coordinates' scores, summed in order */
    int32_t parent;        /* entry of the parent prefix; -1: the root */
    int32_t coord;         /* the last fixed coordinate */
    int32_t ent;           /* this prefix's entry once interned, else -1 */
    int32_t depth;         /* fixed coordinates, 1..ndim */
} node;

typedef struct {
    node *heap;            /* max-heap by bound */
    size_t nheap, capheap;
    node *pend;            /* popped, waiting for this round's successors */
    size_t npend, cappend;
    moe_beam_expert *best; /* sorted, best first */
    int nbest;
    int done;
} sample;

struct moe_beam {
    char prefix[UID_MAX_LEN + 2];
    size_t plen;
    int ndim, grid[MOE_MAX_DIMS], off[MOE_MAX_DIMS], total;
    int64_t batch;
    int k;
    float *scores;         /* [batch, total], NaN replaced by -inf */
    float *maxes;          /* [batch, ndim] */
    entry *ents;
    size_t nents, capents;
    rt_map index;          /* prefix -> entry index + 1 */
    int32_t *root_kids;    /* the first dimension's coordinate -> its entry, or -1 */
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

/* intern returns the entry index of key, creating an unknown entry; -1 when out of memory. The map holds
 * index + 1 (its values are never NULL) under the entry's own copy of the key. */
static int32_t intern(moe_beam *b, const char *key)
{
    size_t len = strlen(key);
    void *v = rt_map_get(&b->index, key, len);
    if (v) return (int32_t)((uintptr_t)v - 1);
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
    if (rt_map_put(&b->index, e->key, len, (void *)(uintptr_t)(b->nents + 1)) != 0) {
        free(e->key);
        e->key = NULL;
        return -1;
    }
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

/* ---- scores and bounds ---- */

/* add is float addition with NaN (inf - inf) counted as -inf; it stays monotone in both arguments. */
static float add(float a, float c)
{
    float s = a + c;
    return s == s ? s : -INFINITY;
}

static const float *row(const moe_beam *b, const sample *s, int dim)
{
    return b->scores + (size_t)(s - b->smp) * (size_t)b->total + (size_t)b->off[dim];
}

/* bound_of adds the sample's maximum of every dimension from depth on to ps, in dimension order. */
static float bound_of(const moe_beam *b, const sample *s, float ps, int depth)
{
    const float *mx = b->maxes + (size_t)(s - b->smp) * (size_t)b->ndim;
    for (int d = depth; d < b->ndim; d++) ps = add(ps, mx[d]);
    return ps;
}

/* tail_score parses tail as the canonical coordinates of dimensions d..ndim-1 ("7.12": decimal, no
 * leading zeros, inside the grid), the first of which must be first, and returns 0 with *out = acc plus
 * their scores, in order; else -1. */
static int tail_score(const moe_beam *b, const sample *s, const char *tail, int d, float acc, int64_t first,
                      float *out)
{
    const char *p = tail;
    for (int dim = d; dim < b->ndim; dim++) {
        if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9')) return -1;
        int64_t v = 0;
        while (*p >= '0' && *p <= '9') {
            v = v * 10 + (*p++ - '0');
            if (v >= b->grid[dim]) return -1;
        }
        if (dim == d && v != first) return -1;
        acc = add(acc, row(b, s, dim)[v]);
        if (dim + 1 < b->ndim && *p++ != UID_DELIMITER) return -1;
    }
    if (*p != '\0') return -1;
    *out = acc;
    return 0;
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

/* ---- the per-sample search ---- */

/* beats says whether (score, uid) ranks before expert x: higher score, then smaller uid. */
static int beats(float score, const char *uid, const moe_beam_expert *x)
{
    if (score != x->score) return score > x->score;
    return strcmp(uid, x->uid) < 0;
}

/* pruned says whether nothing scoring at most bound can enter the sample's top k. */
static int pruned(const moe_beam *b, const sample *s, float bound)
{
    return s->nbest == b->k && bound < s->best[b->k - 1].score;
}

/* offer puts an expert in the sample's top k, once per uid. */
static void offer(moe_beam *b, sample *s, const char *uid, const wire_maddr *addr, float score)
{
    if (s->nbest == b->k && !beats(score, uid, &s->best[b->k - 1])) return;
    for (int i = 0; i < s->nbest; i++)
        if (strcmp(s->best[i].uid, uid) == 0) return;   /* found before, through a hint */
    int at = s->nbest < b->k ? s->nbest++ : b->k - 1;
    while (at > 0 && beats(score, uid, &s->best[at - 1])) {
        s->best[at] = s->best[at - 1];
        at--;
    }
    moe_beam_expert *x = &s->best[at];
    snprintf(x->uid, sizeof x->uid, "%s", uid);
    x->addr = *addr;
    x->score = score;
}

/* node_before orders the heap: higher bound first, then the parent entry and coordinate (determinism). */
static int node_before(const node *x, const node *y)
{
    if (x->bound != y->bound) return x->bound > y->bound;
    if (x->parent != y->parent) return x->parent < y->parent;
    return x->coord < y->coord;
}

static int heap_push(moe_beam *b, sample *s, const node *n)
{
    if (s->nheap == s->capheap) {
        size_t nc = s->capheap ? s->capheap * 2 : 64;
        node *nh = realloc(s->heap, nc * sizeof *nh);
        if (!nh) { b->oom = 1; return DMOE_ENOMEM; }
        s->heap = nh;
        s->capheap = nc;
    }
    size_t i = s->nheap++;
    while (i > 0 && node_before(n, &s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = *n;
    return 0;
}

static void heap_pop(sample *s)
{
    node last = s->heap[--s->nheap];
    size_t i = 0, n = s->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && node_before(&s->heap[c + 1], &s->heap[c])) c++;
        if (!node_before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
}

/* kid_slot returns where the entry of n's prefix is remembered under its parent (every sample pops the
 * same prefixes: this spares the key and the map each time), or NULL when its dimension is wider than
 * BEAM_KIDS_MAX or out of memory (oom set). */
static int32_t *kid_slot(moe_beam *b, const node *n)
{
    int width = b->grid[n->depth - 1];
    if (width > BEAM_KIDS_MAX) return NULL;
    int32_t **kids = n->parent < 0 ? &b->root_kids : &b->ents[n->parent].kids;
    if (!*kids) {
        *kids = malloc((size_t)width * sizeof **kids);
        if (!*kids) { b->oom = 1; return NULL; }
        for (int c = 0; c < width; c++) (*kids)[c] = -1;
    }
    return &(*kids)[n->coord];
}

/* node_entry interns the prefix of n; -1 when it would be too long for a key or out of memory (oom set). */
static int32_t node_entry(moe_beam *b, const node *n)
{
    int32_t *slot = kid_slot(b, n);
    if (b->oom) return -1;
    if (slot && *slot >= 0) return *slot;
    char key[UID_MAX_LEN + 2];
    const char *parent = n->parent < 0 ? b->prefix : b->ents[n->parent].key;
    int w = snprintf(key, sizeof key, "%s%d%c", parent, (int)n->coord, UID_DELIMITER);
    if (w < 0 || (size_t)w >= sizeof key) return -1;
    int32_t e = intern(b, key);
    if (e < 0) { b->oom = 1; return -1; }
    slot = kid_slot(b, n);   /* intern may have moved the entries */
    if (slot) *slot = e;
    return e;
}

/* expand turns the known prefix n into the sample's children and experts. */
static void expand(moe_beam *b, sample *s, const node *n)
{
    const char *key = b->ents[n->ent].key;
    size_t klen = strlen(key);
    const dht_successor *it = b->ents[n->ent].items;
    size_t cnt = b->ents[n->ent].n;
    int d = n->depth;
    if (d == b->ndim) {   /* a 1-d grid: "expert.5." holds its expert under FLAT_EXPERT */
        for (size_t j = 0; j < cnt; j++)
            if (it[j].coord == UID_FLAT_EXPERT && strlen(it[j].uid) + 1 == klen && strncmp(it[j].uid, key, klen - 1) == 0)
                offer(b, s, it[j].uid, &it[j].addr, n->ps);
        return;
    }
    for (size_t j = 0; j < cnt && !b->oom; j++) {
        int64_t c = it[j].coord;
        if (c < 0 || c >= b->grid[d]) continue;
        const char *uid = it[j].uid;
        int under = strncmp(uid, key, klen) == 0;
        float score;
        if (d + 1 == b->ndim) {   /* the children are experts: the uid must be key + c */
            if (under && tail_score(b, s, uid + klen, d, n->ps, c, &score) == 0) offer(b, s, uid, &it[j].addr, score);
            continue;
        }
        node ch = { 0, add(n->ps, row(b, s, d)[c]), n->ent, (int32_t)c, -1, d + 1 };
        ch.bound = bound_of(b, s, ch.ps, d + 1);
        if (pruned(b, s, ch.bound)) continue;
        if (heap_push(b, s, &ch) != 0) return;
        if (under && tail_score(b, s, uid + klen, d, n->ps, c, &score) == 0)   /* the hint */
            offer(b, s, uid, &it[j].addr, score);
    }
}

/* advance expands the sample's prefixes fed last round, then pops its frontier for this round: known
 * prefixes are expanded at once, unknown ones requested (up to BEAM_PER_SAMPLE, and BEAM_MAX_ROUND for
 * the round). */
static void advance(moe_beam *b, sample *s)
{
    for (size_t i = 0; i < s->npend && !b->oom; i++) expand(b, s, &s->pend[i]);
    s->npend = 0;
    int asked = 0;
    while (s->nheap > 0 && !b->oom) {
        node n = s->heap[0];
        if (pruned(b, s, n.bound)) { s->nheap = 0; break; }   /* the best bound cannot enter: nor can the rest */
        if (asked >= BEAM_PER_SAMPLE) break;
        n.ent = node_entry(b, &n);
        if (n.ent < 0) { heap_pop(s); continue; }   /* a key too long for any uid holds no expert */
        int st = b->ents[n.ent].state;
        if (st == E_UNKNOWN && b->nwant >= BEAM_MAX_ROUND) break;   /* the round is full: next round */
        heap_pop(s);
        if (st == E_KNOWN) { expand(b, s, &n); continue; }
        if (request(b, n.ent) != 0) { b->oom = 1; break; }
        if (s->npend == s->cappend) {
            size_t nc = s->cappend ? s->cappend * 2 : 16;
            node *np = realloc(s->pend, nc * sizeof *np);
            if (!np) { b->oom = 1; break; }
            s->pend = np;
            s->cappend = nc;
        }
        s->pend[s->npend++] = n;
        asked++;
    }
    s->done = s->nheap == 0 && s->npend == 0;
}

/* ---- the core's interface ---- */

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
    size_t ns = (size_t)batch * (size_t)b->total;
    b->scores = malloc(ns * sizeof *b->scores);
    b->maxes = malloc((size_t)batch * (size_t)ndim * sizeof *b->maxes);
    b->smp = calloc((size_t)batch, sizeof *b->smp);
    if (!b->scores || !b->maxes || !b->smp) { moe_beam_free(b); return DMOE_ENOMEM; }
    for (size_t i = 0; i < ns; i++) b->scores[i] = scores[i] == scores[i] ? scores[i] : -INFINITY;
    for (int64_t i = 0; i < batch; i++) {
        sample *s = &b->smp[i];
        for (int d = 0; d < ndim; d++) {
            const float *r = row(b, s, d);
            float mx = -INFINITY;
            for (int c = 0; c < grid[d]; c++) mx = r[c] > mx ? r[c] : mx;
            b->maxes[i * ndim + d] = mx;
        }
        s->best = malloc((size_t)beam_size * sizeof *s->best);
        if (!s->best) { moe_beam_free(b); return DMOE_ENOMEM; }
        for (int c = 0; c < grid[0]; c++) {   /* the root is never stored: its children are the first dimension */
            node n = { 0, row(b, s, 0)[c], -1, c, -1, 1 };
            n.bound = bound_of(b, s, n.ps, 1);
            if (heap_push(b, s, &n) != 0) { moe_beam_free(b); return DMOE_ENOMEM; }
        }
    }
    *out = b;
    return 0;
}

size_t moe_beam_want(moe_beam *b, const char *const **prefixes)
{
    if (!b->open) {
        b->nwant = 0;
        for (int64_t i = 0; i < b->batch && !b->oom; i++)
            if (!b->smp[i].done) advance(b, &b->smp[i]);
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

static int succ_by_coord(const void *pa, const void *pb)
{
    const dht_successor *a = pa, *c = pb;
    if (a->coord != c->coord) return a->coord < c->coord ? -1 : 1;
    return strcmp(a->uid, c->uid);
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
            /* in coordinate order, one successor per coordinate (a peer could repeat one) */
            qsort(e->items, per[i].n, sizeof *e->items, succ_by_coord);
            size_t u = 0;
            for (size_t j = 0; j < per[i].n; j++)
                if (u == 0 || e->items[u - 1].coord != e->items[j].coord) e->items[u++] = e->items[j];
            e->n = u;
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

int moe_beam_sample_done(const moe_beam *b, int64_t s)
{
    if (s < 0 || s >= b->batch) return 0;
    return b->smp[s].done;   /* set by advance (moe_beam_want); a round that asks nothing leaves every sample done */
}

int moe_beam_rounds(const moe_beam *b) { return b->rounds; }
size_t moe_beam_fetched(const moe_beam *b) { return b->fetched; }

void moe_beam_free(moe_beam *b)
{
    if (!b) return;
    for (int64_t i = 0; b->smp && i < b->batch; i++) {
        sample *s = &b->smp[i];
        free(s->heap);
        free(s->pend);
        free(s->best);
    }
    for (size_t e = 0; e < b->nents; e++) {
        free(b->ents[e].key);
        free(b->ents[e].items);
        free(b->ents[e].kids);
    }
    free(b->root_kids);
    free(b->smp);
    free(b->ents);
    rt_map_clear(&b->index);
    free(b->want);
    free(b->want_ent);
    free(b->scores);
    free(b->maxes);
    free(b);
}

/* ---- the driver ---- */

struct moe_search {
    moe_succ_provider p;
    moe_beam *b;
    moe_search_cb cb;
    moe_search_progress_cb progress;
    void *arg;
    int cancelled;
};

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
    if (rc == 0) {
        moe_beam *b = s->b;
        const char *const *pf;
        moe_search_progress_cb progress = moe_beam_want(b, &pf) ? s->progress : NULL;   /* gathers the next round */
        void *parg = s->arg;
        rc = step(s);   /* asks for that round, or ends the search (and frees s) */
        if (rc == 0) {
            if (progress) progress(parg, b);   /* s lives on: the provider has the next round */
            return;
        }
    }
    msg = err ? msg : dmoe_strerror(rc);
    s->cb(s->arg, rc, msg ? msg : dmoe_strerror(rc), s->b);
    free(s);
}

int moe_beam_search(const moe_succ_provider *p, moe_beam *b, moe_search_cb cb, void *arg, moe_search **out)
{
    return moe_beam_search_progress(p, b, cb, NULL, arg, out);
}

int moe_beam_search_progress(const moe_succ_provider *p, moe_beam *b, moe_search_cb cb, moe_search_progress_cb progress,
                             void *arg, moe_search **out)
{
    moe_search *s = calloc(1, sizeof *s);
    if (!s) return DMOE_ENOMEM;
    s->p = *p;
    s->b = b;
    s->cb = cb;
    s->progress = progress;
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
