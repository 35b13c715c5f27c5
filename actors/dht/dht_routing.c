/* dht_routing.c -- k-bucket routing table and address blacklist (see dht_routing.h).
 *
 * Design notes. A bucket is a prefix: the ids whose first `depth` bits equal those of `prefix`. The
 * buckets partition the id space and are kept in an array sorted by prefix, so the bucket covering an
 * id is found by binary search on the lower bound. Splitting bucket i at depth d makes two buckets of
 * depth d + 1 (bit d clear / set) and re-files its nodes in their old order, then its replacements,
 * which become bucket nodes while a half has room -- as hivemind's KBucket.split.
 *
 * Inside a bucket, nodes[] and repl[] are ordered from least to most recently seen, so "update" moves
 * an entry to the end and the ping candidate is the first entry without a ping pending. The
 * replacement cache holds at most k entries; when full the stalest is dropped.
 *
 * The per-host limit is checked by a scan of the whole table, only for an id that is new or moves to
 * another host: a known peer refreshed at its host (the common case) costs nothing more.
 *
 * The blacklist is a small unsorted array scanned linearly: it only holds peers that failed lately.
 */
#include "actors/dht/dht_routing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"

typedef struct {
    dht_id prefix;
    int depth;
    dht_node *nodes, *repl;   /* each with room for k entries */
    size_t n, nrepl;
    double last_updated;
} bucket;

struct dht_routing {
    dht_id self;
    size_t k;
    int depth_modulo;
    uint64_t rng;
    size_t max_per_host;
    int limit_loopback;
    bucket *b;
    size_t nb, capb;
};

/* ---- addresses ----------------------------------------------------------------------------------- */

int dht_addr_parse(dht_addr *out, const char *text)
{
    if (!text) return DMOE_EINVAL;
    const char *colon = strrchr(text, ':');
    if (!colon) return DMOE_EINVAL;
    const char *h = text;
    size_t hlen = (size_t)(colon - text);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    } else if (memchr(h, ':', hlen)) {
        return DMOE_EINVAL;                      /* a bare v6 address is ambiguous */
    }
    if (hlen == 0 || hlen >= DHT_HOST_MAX) return DMOE_EINVAL;
    const char *p = colon + 1;
    if (!*p || strlen(p) > 5) return DMOE_EINVAL;
    unsigned port = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9') return DMOE_EINVAL;
        port = port * 10 + (unsigned)(*p - '0');
    }
    if (port == 0 || port > 65535) return DMOE_EINVAL;
    memcpy(out->host, h, hlen);
    out->host[hlen] = '\0';
    out->port = (uint16_t)port;
    return 0;
}

char *dht_addr_format(const dht_addr *a, char *buf, size_t cap)
{
    if (strchr(a->host, ':'))
        snprintf(buf, cap, "[%s]:%u", a->host, (unsigned)a->port);
    else
        snprintf(buf, cap, "%s:%u", a->host, (unsigned)a->port);
    return buf;
}

int dht_addr_eq(const dht_addr *a, const dht_addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

int dht_addr_same_host(const dht_addr *a, const dht_addr *b)
{
    return strcmp(a->host, b->host) == 0;
}

int dht_addr_host_limited(const dht_addr *a, int limit_loopback)
{
    if (limit_loopback) return 1;
    return !(strncmp(a->host, "127.", 4) == 0 || strcmp(a->host, "::1") == 0 || strcmp(a->host, "localhost") == 0);
}

/* ---- table --------------------------------------------------------------------------------------- */

static int bucket_alloc(bucket *bk, size_t k)
{
    bk->nodes = calloc(k, sizeof *bk->nodes);
    bk->repl = calloc(k, sizeof *bk->repl);
    if (!bk->nodes || !bk->repl) {
        free(bk->nodes);
        free(bk->repl);
        return DMOE_ENOMEM;
    }
    bk->n = bk->nrepl = 0;
    return 0;
}

static void bucket_free(bucket *bk)
{
    free(bk->nodes);
    free(bk->repl);
}

int dht_routing_new(dht_routing **out, const dht_id *self, size_t bucket_size, int depth_modulo, uint64_t seed,
                    double now)
{
    if (!self || depth_modulo < 0) return DMOE_EINVAL;
    dht_routing *t = calloc(1, sizeof *t);
    if (!t) return DMOE_ENOMEM;
    t->self = *self;
    t->k = bucket_size ? bucket_size : DHT_BUCKET_SIZE;
    t->depth_modulo = depth_modulo ? depth_modulo : DHT_DEPTH_MODULO;
    t->rng = seed;
    t->max_per_host = DHT_MAX_PER_HOST;
    t->capb = 8;
    t->b = calloc(t->capb, sizeof *t->b);
    if (!t->b || bucket_alloc(&t->b[0], t->k) < 0) {
        free(t->b);
        free(t);
        return DMOE_ENOMEM;
    }
    t->nb = 1;
    t->b[0].last_updated = now;
    *out = t;
    return 0;
}

void dht_routing_free(dht_routing *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->nb; i++) bucket_free(&t->b[i]);
    free(t->b);
    free(t);
}

void dht_routing_set_host_limit(dht_routing *t, size_t max_per_host, int limit_loopback)
{
    t->max_per_host = max_per_host ? max_per_host : DHT_MAX_PER_HOST;
    t->limit_loopback = limit_loopback != 0;
}

const dht_id *dht_routing_self(const dht_routing *t)
{
    return &t->self;
}

size_t dht_routing_bucket_of(const dht_routing *t, const dht_id *id)
{
    size_t lo = 0, hi = t->nb;                  /* the last bucket whose prefix <= id */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (dht_id_cmp(&t->b[mid].prefix, id) <= 0) lo = mid;
        else hi = mid;
    }
    return lo;
}

static int in_range(const bucket *bk, const dht_id *id)
{
    return dht_id_common_prefix(&bk->prefix, id) >= bk->depth;
}

static long find_in(const dht_node *arr, size_t n, const dht_id *id)
{
    for (size_t i = 0; i < n; i++)
        if (dht_id_eq(&arr[i].id, id)) return (long)i;
    return -1;
}

static void remove_at(dht_node *arr, size_t *n, size_t i)
{
    memmove(&arr[i], &arr[i + 1], (*n - i - 1) * sizeof *arr);
    (*n)--;
}

/* host_count counts the entries at host, skipping id (NULL: none). */
static size_t host_count(const dht_routing *t, const char *host, const dht_id *skip)
{
    size_t n = 0;
    for (size_t bi = 0; bi < t->nb; bi++) {
        const bucket *bk = &t->b[bi];
        for (size_t j = 0; j < bk->n; j++)
            n += strcmp(bk->nodes[j].addr.host, host) == 0 && !(skip && dht_id_eq(&bk->nodes[j].id, skip));
        for (size_t j = 0; j < bk->nrepl; j++)
            n += strcmp(bk->repl[j].addr.host, host) == 0 && !(skip && dht_id_eq(&bk->repl[j].id, skip));
    }
    return n;
}

size_t dht_routing_host_count(const dht_routing *t, const char *host)
{
    return host_count(t, host, NULL);
}

int dht_routing_admits(const dht_routing *t, const dht_id *id, const dht_addr *addr)
{
    if (!dht_addr_host_limited(addr, t->limit_loopback)) return 1;
    const bucket *bk = &t->b[dht_routing_bucket_of(t, id)];
    long at = find_in(bk->nodes, bk->n, id);
    if (at >= 0 && dht_addr_same_host(&bk->nodes[at].addr, addr)) return 1;
    at = find_in(bk->repl, bk->nrepl, id);
    if (at >= 0 && dht_addr_same_host(&bk->repl[at].addr, addr)) return 1;
    return host_count(t, addr->host, id) < t->max_per_host;
}

/* file_node puts a node into a fresh half during a split: bucket if room, else replacements. */
static void file_node(bucket *bk, size_t k, const dht_node *nd)
{
    if (bk->n < k) bk->nodes[bk->n++] = *nd;
    else if (bk->nrepl < k) bk->repl[bk->nrepl++] = *nd;
}

/* split_bucket replaces bucket i by its two halves. 0 or DMOE_ENOMEM (table unchanged). */
static int split_bucket(dht_routing *t, size_t i)
{
    if (t->nb == t->capb) {
        bucket *nbk = realloc(t->b, 2 * t->capb * sizeof *nbk);
        if (!nbk) return DMOE_ENOMEM;
        t->b = nbk;
        t->capb *= 2;
    }
    bucket left, right;
    if (bucket_alloc(&left, t->k) < 0) return DMOE_ENOMEM;
    if (bucket_alloc(&right, t->k) < 0) {
        bucket_free(&left);
        return DMOE_ENOMEM;
    }
    bucket *old = &t->b[i];
    int d = old->depth;
    left.prefix = right.prefix = old->prefix;
    right.prefix.b[d >> 3] |= (uint8_t)(0x80u >> (d & 7));
    left.depth = right.depth = d + 1;
    left.last_updated = right.last_updated = old->last_updated;
    for (size_t j = 0; j < old->n; j++)
        file_node(dht_id_bit(&old->nodes[j].id, d) ? &right : &left, t->k, &old->nodes[j]);
    for (size_t j = 0; j < old->nrepl; j++)
        file_node(dht_id_bit(&old->repl[j].id, d) ? &right : &left, t->k, &old->repl[j]);
    bucket_free(old);
    memmove(&t->b[i + 2], &t->b[i + 1], (t->nb - i - 1) * sizeof *t->b);
    t->b[i] = left;
    t->b[i + 1] = right;
    t->nb++;
    return 0;
}

int dht_routing_add_or_update(dht_routing *t, const dht_id *id, const dht_addr *addr, double now, dht_node *to_ping)
{
    if (dht_id_eq(id, &t->self)) return DMOE_EINVAL;
    if (!dht_routing_admits(t, id, addr)) return DHT_RT_REFUSED;
    for (;;) {
        size_t bi = dht_routing_bucket_of(t, id);
        bucket *bk = &t->b[bi];
        long at = find_in(bk->nodes, bk->n, id);
        if (at >= 0) {
            dht_node nd = bk->nodes[at];
            nd.addr = *addr;
            nd.last_seen = now;
            nd.ping_pending = 0;
            remove_at(bk->nodes, &bk->n, (size_t)at);
            bk->nodes[bk->n++] = nd;
            bk->last_updated = now;
            return DHT_RT_UPDATED;
        }
        if (bk->n < t->k) {
            long r = find_in(bk->repl, bk->nrepl, id);
            if (r >= 0) remove_at(bk->repl, &bk->nrepl, (size_t)r);
            dht_node *nd = &bk->nodes[bk->n++];
            nd->id = *id;
            nd->addr = *addr;
            nd->last_seen = now;
            nd->ping_pending = 0;
            bk->last_updated = now;
            return DHT_RT_ADDED;
        }
        if (bk->depth < DHT_ID_BITS && (in_range(bk, &t->self) || bk->depth % t->depth_modulo != 0)) {
            int rc = split_bucket(t, bi);
            if (rc < 0) return rc;
            continue;
        }
        long r = find_in(bk->repl, bk->nrepl, id);
        if (r >= 0) remove_at(bk->repl, &bk->nrepl, (size_t)r);
        else if (bk->nrepl == t->k) remove_at(bk->repl, &bk->nrepl, 0);
        dht_node *nd = &bk->repl[bk->nrepl++];
        nd->id = *id;
        nd->addr = *addr;
        nd->last_seen = now;
        nd->ping_pending = 0;
        bk->last_updated = now;
        for (size_t j = 0; j < bk->n; j++) {
            if (bk->nodes[j].ping_pending) continue;
            bk->nodes[j].ping_pending = 1;
            if (to_ping) *to_ping = bk->nodes[j];
            return DHT_RT_PING;
        }
        return DHT_RT_CACHED;
    }
}

int dht_routing_remove(dht_routing *t, const dht_id *id)
{
    bucket *bk = &t->b[dht_routing_bucket_of(t, id)];
    long at = find_in(bk->nodes, bk->n, id);
    if (at >= 0) {
        remove_at(bk->nodes, &bk->n, (size_t)at);
        if (bk->nrepl > 0) bk->nodes[bk->n++] = bk->repl[--bk->nrepl];
        return 0;
    }
    at = find_in(bk->repl, bk->nrepl, id);
    if (at < 0) return DMOE_ENOTFOUND;
    remove_at(bk->repl, &bk->nrepl, (size_t)at);
    return 0;
}

int dht_routing_remove_at(dht_routing *t, const dht_id *id, const dht_addr *addr)
{
    const bucket *bk = &t->b[dht_routing_bucket_of(t, id)];
    long at = find_in(bk->nodes, bk->n, id);
    const dht_node *e = at >= 0 ? &bk->nodes[at] : NULL;
    if (!e && (at = find_in(bk->repl, bk->nrepl, id)) >= 0) e = &bk->repl[at];
    if (!e || !dht_addr_eq(&e->addr, addr)) return DMOE_ENOTFOUND;
    return dht_routing_remove(t, id);
}

int dht_routing_knows(const dht_routing *t, const dht_id *id, const dht_addr *addr)
{
    const bucket *bk = &t->b[dht_routing_bucket_of(t, id)];
    long at = find_in(bk->nodes, bk->n, id);
    if (at >= 0) return dht_addr_eq(&bk->nodes[at].addr, addr);
    at = find_in(bk->repl, bk->nrepl, id);
    return at >= 0 && dht_addr_eq(&bk->repl[at].addr, addr);
}

int dht_routing_get(const dht_routing *t, const dht_id *id, dht_node *out)
{
    const bucket *bk = &t->b[dht_routing_bucket_of(t, id)];
    long at = find_in(bk->nodes, bk->n, id);
    if (at < 0) return DMOE_ENOTFOUND;
    *out = bk->nodes[at];
    return 0;
}

/* heap_down restores a max-heap (farthest from target at the root) below position i. */
static void heap_down(dht_node *h, size_t n, size_t i, const dht_id *target)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && dht_id_distance_cmp(target, &h[l].id, &h[m].id) > 0) m = l;
        if (r < n && dht_id_distance_cmp(target, &h[r].id, &h[m].id) > 0) m = r;
        if (m == i) return;
        dht_node tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

size_t dht_routing_nearest(const dht_routing *t, const dht_id *target, size_t k, const dht_id *exclude,
                           dht_node *out)
{
    size_t n = 0;
    if (k == 0) return 0;
    for (size_t bi = 0; bi < t->nb; bi++) {
        const bucket *bk = &t->b[bi];
        for (size_t j = 0; j < bk->n; j++) {
            const dht_node *nd = &bk->nodes[j];
            if (exclude && dht_id_eq(&nd->id, exclude)) continue;
            if (n < k) {
                out[n++] = *nd;
                if (n == k)
                    for (size_t i = k / 2 + 1; i-- > 0;) heap_down(out, n, i, target);
            } else if (dht_id_distance_cmp(target, &nd->id, &out[0].id) < 0) {
                out[0] = *nd;
                heap_down(out, n, 0, target);
            }
        }
    }
    if (n < k)
        for (size_t i = n / 2 + 1; i-- > 0;) heap_down(out, n, i, target);
    for (size_t end = n; end > 1; end--) {       /* heap sort: farthest goes last */
        dht_node tmp = out[0];
        out[0] = out[end - 1];
        out[end - 1] = tmp;
        heap_down(out, end - 1, 0, target);
    }
    return n;
}

size_t dht_routing_stale(dht_routing *t, double now, double period, dht_id *out, size_t cap)
{
    size_t n = 0;
    for (size_t bi = 0; bi < t->nb && n < cap; bi++) {
        const bucket *bk = &t->b[bi];
        if (bk->last_updated >= now - period) continue;
        dht_id r;
        dht_id_random(&r, &t->rng);
        for (int i = 0; i < bk->depth; i++) {    /* keep the bucket's prefix bits */
            uint8_t mask = (uint8_t)(0x80u >> (i & 7));
            r.b[i >> 3] = (uint8_t)((r.b[i >> 3] & ~mask) | (bk->prefix.b[i >> 3] & mask));
        }
        out[n++] = r;
    }
    return n;
}

void dht_routing_touch(dht_routing *t, const dht_id *id, double now)
{
    t->b[dht_routing_bucket_of(t, id)].last_updated = now;
}

size_t dht_routing_size(const dht_routing *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->nb; i++) n += t->b[i].n;
    return n;
}

size_t dht_routing_num_buckets(const dht_routing *t)
{
    return t->nb;
}

int dht_routing_bucket(const dht_routing *t, size_t i, dht_bucket_view *out)
{
    if (i >= t->nb) return DMOE_EINVAL;
    const bucket *bk = &t->b[i];
    out->prefix = bk->prefix;
    out->depth = bk->depth;
    out->nodes = bk->nodes;
    out->n = bk->n;
    out->repl = bk->repl;
    out->nrepl = bk->nrepl;
    out->last_updated = bk->last_updated;
    return 0;
}

/* ---- blacklist ----------------------------------------------------------------------------------- */

typedef struct {
    dht_addr addr;
    int fails;
    double until;
} ban;

struct dht_blacklist {
    double base, rate, max_ban;
    ban *v;
    size_t n, cap;
};

int dht_blacklist_new(dht_blacklist **out, double base, double rate, double max_ban)
{
    dht_blacklist *bl = calloc(1, sizeof *bl);
    if (!bl) return DMOE_ENOMEM;
    bl->base = base > 0 ? base : DHT_BAN_BASE;
    bl->rate = rate > 0 ? rate : DHT_BAN_RATE;
    bl->max_ban = max_ban > 0 ? max_ban : DHT_BAN_MAX;
    *out = bl;
    return 0;
}

void dht_blacklist_free(dht_blacklist *bl)
{
    if (!bl) return;
    free(bl->v);
    free(bl);
}

static long ban_find(const dht_blacklist *bl, const dht_addr *addr)
{
    for (size_t i = 0; i < bl->n; i++)
        if (dht_addr_eq(&bl->v[i].addr, addr)) return (long)i;
    return -1;
}

/* ban_slot returns a free entry: appended, or the one whose ban ends first when full. */
static ban *ban_slot(dht_blacklist *bl)
{
    if (bl->n == bl->cap && bl->cap < DHT_BLACKLIST_MAX) {
        size_t ncap = bl->cap ? 2 * bl->cap : 16;
        if (ncap > DHT_BLACKLIST_MAX) ncap = DHT_BLACKLIST_MAX;
        ban *nv = realloc(bl->v, ncap * sizeof *nv);
        if (nv) {
            bl->v = nv;
            bl->cap = ncap;
        }
    }
    if (bl->n < bl->cap) return &bl->v[bl->n++];
    if (bl->n == 0) return NULL;
    size_t oldest = 0;
    for (size_t i = 1; i < bl->n; i++)
        if (bl->v[i].until < bl->v[oldest].until) oldest = i;
    return &bl->v[oldest];
}

double dht_blacklist_fail(dht_blacklist *bl, const dht_addr *addr, double now)
{
    long i = ban_find(bl, addr);
    ban *b;
    if (i >= 0) {
        b = &bl->v[i];
        if (b->until > now) return 0.0;
    } else {
        if (!(b = ban_slot(bl))) return 0.0;     /* no memory at all: do not ban */
        b->addr = *addr;
        b->fails = 0;
    }
    double len = bl->base;
    for (int f = 0; f < b->fails && len < bl->max_ban; f++) len *= bl->rate;
    if (len > bl->max_ban) len = bl->max_ban;
    b->fails++;
    b->until = now + len;
    return len;
}

void dht_blacklist_ok(dht_blacklist *bl, const dht_addr *addr)
{
    long i = ban_find(bl, addr);
    if (i < 0) return;
    bl->v[i] = bl->v[--bl->n];
}

int dht_blacklist_banned(const dht_blacklist *bl, const dht_addr *addr, double now)
{
    long i = ban_find(bl, addr);
    return i >= 0 && bl->v[i].until > now;
}

size_t dht_blacklist_size(const dht_blacklist *bl)
{
    return bl->n;
}
