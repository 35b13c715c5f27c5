/* dht_storage.c -- local DHT storage with expirations (see dht_storage.h).
 *
 * Design notes. Keys live in an rt_map (id -> entry; the id bytes stay inside the entry) and in an
 * indexed binary min-heap ordered by expiration, so sweeps and "evict the entry that
 * expires first" are O(log n). A plain value is one malloc'd buffer; a dictionary is an unordered
 * array of dht_subitem whose buffers the storage owns. Every store first decides by hivemind's rules,
 * then allocates everything it may need, then evicts to make room, then applies: a refusal or a failed
 * allocation leaves the storage as it was (evictions aside, which hivemind's maxsize also performs).
 * Byte accounting counts value and subkey bytes only.
 *
 * Owners. Each plain value and each dictionary entry points at its owner's account (an rt_map of name ->
 * acct, an acct living while it holds something), charged with one item and the entry's bytes. A store
 * checks the owner's share first, counting what it replaces of the owner's own as freed; the account
 * is pinned for the whole store (evictions may empty it meanwhile) and dropped at the end if empty.
 */
#include "actors/dht/dht_storage.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_map.h"

typedef struct acct {
    size_t items, bytes;
    size_t len;
    char name[DHT_OWNER_MAX_BYTES];    /* the map's key points here */
} acct;

typedef struct entry {
    dht_id key;
    double exp;
    int is_dict;
    int sealed;            /* a dictionary of signed records: unsigned stores cannot touch it */
    uint8_t *val;
    size_t vlen;
    dht_subitem *subs;
    acct *own;             /* a plain value's owner (NULL: none) */
    acct **subown;         /* the owner of each dictionary entry, parallel to subs */
    size_t nsubs, capsubs;
    size_t bytes;          /* value bytes, or the sum of subkey + value bytes */
    size_t hidx;           /* position in the heap */
} entry;

struct dht_storage {
    dht_storage_limits lim;
    rt_map tab;            /* key id -> entry */
    entry **heap;
    size_t n, heapcap;
    size_t bytes;
    rt_map owners;         /* owner name -> acct */
    size_t owner_items, owner_bytes;   /* one owner's share */
    acct *pinned;          /* the account of the store in progress: not freed when it empties */
};

void dht_storage_default_limits(dht_storage_limits *lim)
{
    lim->max_value_bytes = DHT_MAX_VALUE_BYTES;
    lim->max_subkey_bytes = DHT_MAX_SUBKEY_BYTES;
    lim->max_subkeys = DHT_MAX_SUBKEYS;
    lim->max_keys = DHT_MAX_KEYS;
    lim->max_bytes = DHT_MAX_BYTES;
    lim->max_horizon = DHT_MAX_HORIZON;
    lim->owner_share = DHT_OWNER_SHARE;
    lim->expire_budget = DHT_EXPIRE_BUDGET;
}

int dht_storage_new(dht_storage **out, const dht_storage_limits *lim)
{
    dht_storage *s = calloc(1, sizeof *s);
    if (!s) return DMOE_ENOMEM;
    dht_storage_default_limits(&s->lim);
    if (lim) {
        if (lim->max_value_bytes) s->lim.max_value_bytes = lim->max_value_bytes;
        if (lim->max_subkey_bytes) s->lim.max_subkey_bytes = lim->max_subkey_bytes;
        if (lim->max_subkeys) s->lim.max_subkeys = lim->max_subkeys;
        if (lim->max_keys) s->lim.max_keys = lim->max_keys;
        if (lim->max_bytes) s->lim.max_bytes = lim->max_bytes;
        if (lim->max_horizon > 0) s->lim.max_horizon = lim->max_horizon;
        if (lim->owner_share) s->lim.owner_share = lim->owner_share;
        if (lim->expire_budget) s->lim.expire_budget = lim->expire_budget;
    }
    s->owner_items = s->lim.max_keys / s->lim.owner_share ? s->lim.max_keys / s->lim.owner_share : 1;
    s->owner_bytes = s->lim.max_bytes / s->lim.owner_share;
    *out = s;
    return 0;
}

static void charge(acct *a, size_t bytes)
{
    if (!a) return;
    a->items++;
    a->bytes += bytes;
}

/* release takes one item of bytes off a's account and drops the account when it empties (unless it is
 * the pinned one). */
static void release(dht_storage *s, acct *a, size_t bytes)
{
    if (!a) return;
    a->items--;
    a->bytes -= bytes;
    if (a->items == 0 && a != s->pinned) {
        rt_map_del(&s->owners, a->name, a->len);
        free(a);
    }
}

static void clear_content(dht_storage *s, entry *e)
{
    if (!e->is_dict) release(s, e->own, e->vlen);
    e->own = NULL;
    free(e->val);
    e->val = NULL;
    e->vlen = 0;
    for (size_t i = 0; i < e->nsubs; i++) {
        release(s, e->subown[i], e->subs[i].sklen + e->subs[i].vlen);
        free((void *)e->subs[i].subkey);
        free((void *)e->subs[i].value);
    }
    free(e->subs);
    free(e->subown);
    e->subs = NULL;
    e->subown = NULL;
    e->nsubs = e->capsubs = 0;
    e->bytes = 0;
}

void dht_storage_free(dht_storage *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        clear_content(s, s->heap[i]);
        free(s->heap[i]);
    }
    free(s->heap);
    rt_map_clear(&s->tab);
    rt_map_clear(&s->owners);   /* empty by now: every account went with its last entry */
    free(s);
}

/* ---- heap ---------------------------------------------------------------------------------------- */

static void heap_swap(dht_storage *s, size_t i, size_t j)
{
    entry *t = s->heap[i];
    s->heap[i] = s->heap[j];
    s->heap[j] = t;
    s->heap[i]->hidx = i;
    s->heap[j]->hidx = j;
}

static void heap_up(dht_storage *s, size_t i)
{
    while (i > 0 && s->heap[i]->exp < s->heap[(i - 1) / 2]->exp) {
        heap_swap(s, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(dht_storage *s, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->n && s->heap[l]->exp < s->heap[m]->exp) m = l;
        if (r < s->n && s->heap[r]->exp < s->heap[m]->exp) m = r;
        if (m == i) return;
        heap_swap(s, i, m);
        i = m;
    }
}

static void heap_fix(dht_storage *s, size_t i)
{
    entry *e = s->heap[i];
    heap_up(s, i);
    heap_down(s, e->hidx);
}

static int heap_reserve(dht_storage *s)
{
    if (s->n < s->heapcap) return 0;
    size_t ncap = s->heapcap ? 2 * s->heapcap : 64;
    entry **nh = realloc(s->heap, ncap * sizeof *nh);
    if (!nh) return DMOE_ENOMEM;
    s->heap = nh;
    s->heapcap = ncap;
    return 0;
}

/* remove_entry unlinks e from table and heap, forgets its bytes and frees it. */
static void remove_entry(dht_storage *s, entry *e)
{
    size_t i = e->hidx;
    rt_map_del(&s->tab, e->key.b, sizeof e->key.b);
    s->n--;
    if (i != s->n) {
        s->heap[i] = s->heap[s->n];
        s->heap[i]->hidx = i;
        heap_fix(s, i);
    }
    s->bytes -= e->bytes;
    clear_content(s, e);
    free(e);
}

/* ---- rules --------------------------------------------------------------------------------------- */

/* drop_expired_subs removes the dictionary entries of e that expired before now. */
static void drop_expired_subs(dht_storage *s, entry *e, double now)
{
    for (size_t i = 0; i < e->nsubs;) {
        dht_subitem *it = &e->subs[i];
        if (!(it->expiration < now)) {
            i++;
            continue;
        }
        size_t b = it->sklen + it->vlen;
        e->bytes -= b;
        s->bytes -= b;
        release(s, e->subown[i], b);
        free((void *)it->subkey);
        free((void *)it->value);
        e->subs[i] = e->subs[--e->nsubs];
        e->subown[i] = e->subown[e->nsubs];
    }
}

/* get_live returns key's entry if it has not expired at now, removing it (or its expired subkeys). */
static entry *get_live(dht_storage *s, const dht_id *key, double now)
{
    entry *e = rt_map_get(&s->tab, key->b, sizeof key->b);
    if (!e) return NULL;
    if (e->exp < now) {
        remove_entry(s, e);
        return NULL;
    }
    if (e->is_dict) drop_expired_subs(s, e, now);
    return e;
}

/* make_room evicts the entries expiring first (never target) until one more key (if newkey) and delta
 * more bytes fit. Returns 1 when they fit, 0 when the newcomer (expiring at exp) is the first to go. */
static int make_room(dht_storage *s, const entry *target, double exp, int newkey, long long delta)
{
    for (;;) {
        long long bytes = (long long)s->bytes + delta;
        if (s->n + (size_t)newkey <= s->lim.max_keys && bytes <= (long long)s->lim.max_bytes) return 1;
        entry *c = s->n ? s->heap[0] : NULL;
        if (c && c == target) {
            c = NULL;
            if (s->n > 1) c = s->heap[1];
            if (s->n > 2 && s->heap[2]->exp < c->exp) c = s->heap[2];
        }
        if (!c || !(c->exp < exp)) return 0;
        remove_entry(s, c);
    }
}

static uint8_t *dup_bytes(const void *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    if (d && n) memcpy(d, p, n);
    return d;
}

/* find_sub returns the index of subkey in e's dictionary, or -1. */
static long find_sub(const entry *e, const void *subkey, size_t sklen)
{
    for (size_t i = 0; i < e->nsubs; i++)
        if (e->subs[i].sklen == sklen && memcmp(e->subs[i].subkey, subkey, sklen) == 0) return (long)i;
    return -1;
}

static int reserve_subs(entry *e, size_t want)
{
    if (want <= e->capsubs) return 0;
    size_t ncap = e->capsubs ? 2 * e->capsubs : 4;
    while (ncap < want) ncap *= 2;
    dht_subitem *ns = realloc(e->subs, ncap * sizeof *ns);
    if (!ns) return DMOE_ENOMEM;
    e->subs = ns;
    acct **no = realloc(e->subown, ncap * sizeof *no);
    if (!no) return DMOE_ENOMEM;   /* subs grew, capsubs did not: the next reserve retries both */
    e->subown = no;
    e->capsubs = ncap;
    return 0;
}

/* new_entry fills e, already in the map under its key, and puts it in the (reserved) heap. */
static entry *new_entry(dht_storage *s, entry *e, double exp)
{
    e->exp = exp;
    e->hidx = s->n;
    s->heap[s->n++] = e;
    heap_up(s, e->hidx);
    return e;
}

/* store_as is dht_storage_store charged to account a (NULL: none); sealed 1 stores a signed record. */
static int store_as(dht_storage *s, acct *a, int sealed, const dht_id *key, const void *subkey, size_t sklen,
                    const void *value, size_t vlen, double expiration, double now)
{
    if (isnan(expiration) || expiration > now + s->lim.max_horizon || (sealed && !subkey)) return DMOE_EINVAL;
    if (vlen > s->lim.max_value_bytes) return DMOE_ETOOBIG;
    if (subkey && sklen > s->lim.max_subkey_bytes) return DMOE_ETOOBIG;
    if (expiration < now) return 0;

    entry *e = get_live(s, key, now);
    long sub_at = -1, victim = -1;
    int to_dict = 0;
    long long delta;
    if (e && e->sealed && !sealed) return 0;    /* unsigned values cannot touch signed records */
    if (e && !e->sealed && sealed) {             /* signed records replace unsigned content, whatever its age */
        to_dict = 1;
        delta = (long long)(sklen + vlen) - (long long)e->bytes;
    } else if (!subkey) {
        if (e && !(e->exp < expiration)) return 0;
        delta = (long long)vlen - (long long)(e ? e->bytes : 0);
    } else if (!e || (!e->is_dict && e->exp < expiration)) {
        to_dict = 1;
        delta = (long long)(sklen + vlen) - (long long)(e ? e->bytes : 0);
    } else if (e->is_dict) {
        sub_at = find_sub(e, subkey, sklen);
        if (sub_at >= 0) {
            if (!(e->subs[sub_at].expiration < expiration)) return 0;
            delta = (long long)vlen - (long long)e->subs[sub_at].vlen;
        } else {
            delta = (long long)(sklen + vlen);
            if (e->nsubs >= s->lim.max_subkeys) {   /* evict the subkey expiring first, or refuse */
                if (e->sealed) return 0;            /* one signer's record never evicts another's */
                victim = 0;
                for (size_t i = 1; i < e->nsubs; i++)
                    if (e->subs[i].expiration < e->subs[victim].expiration) victim = (long)i;
                if (!(e->subs[victim].expiration < expiration)) return 0;
                delta -= (long long)(e->subs[victim].sklen + e->subs[victim].vlen);
            }
        }
    } else {
        return 0;                                /* a plain value that lives at least as long */
    }
    if (a) {   /* the owner's share, what it replaces of its own counted as freed */
        acct *old = NULL;
        size_t old_bytes = 0;
        if (e && !e->is_dict && (!subkey || to_dict)) {
            old = e->own;
            old_bytes = e->vlen;
        } else if (sub_at >= 0 || victim >= 0) {
            long i = sub_at >= 0 ? sub_at : victim;
            old = e->subown[i];
            old_bytes = e->subs[i].sklen + e->subs[i].vlen;
        }
        size_t items = a->items - (old == a), bytes = a->bytes - (old == a ? old_bytes : 0);
        if (items + 1 > s->owner_items || bytes + (subkey ? sklen : 0) + vlen > s->owner_bytes) return 0;
    }

    /* Allocate everything before touching the storage. */
    uint8_t *vcopy = dup_bytes(value, vlen);
    uint8_t *skcopy = subkey && sub_at < 0 ? dup_bytes(subkey, sklen) : NULL;
    entry *fresh = e ? NULL : malloc(sizeof *fresh);
    dht_subitem *subs1 = to_dict ? malloc(4 * sizeof *subs1) : NULL;
    acct **own1 = to_dict ? malloc(4 * sizeof *own1) : NULL;
    int rc = 0, mapped = 0;
    if (!vcopy || (subkey && sub_at < 0 && !skcopy) || (!e && !fresh) || (to_dict && (!subs1 || !own1)))
        rc = DMOE_ENOMEM;
    if (rc == 0 && !e) {   /* the newcomer joins the map now (the only step that may fail) and leaves on refusal */
        memset(fresh, 0, sizeof *fresh);
        fresh->key = *key;
        if (heap_reserve(s) < 0 || rt_map_put(&s->tab, fresh->key.b, sizeof fresh->key.b, fresh) != 0)
            rc = DMOE_ENOMEM;
        else
            mapped = 1;
    }
    if (rc == 0 && e && e->is_dict && sub_at < 0 && victim < 0 && reserve_subs(e, e->nsubs + 1) < 0)
        rc = DMOE_ENOMEM;
    if (rc == 0 && !make_room(s, e, expiration, !e, delta)) rc = 1;   /* refused for room */
    if (rc != 0) {
        if (mapped) rt_map_del(&s->tab, key->b, sizeof key->b);
        free(vcopy);
        free(skcopy);
        free(fresh);
        free(subs1);
        free(own1);
        return rc < 0 ? rc : 0;
    }

    if (!e) e = new_entry(s, fresh, expiration);
    charge(a, (subkey ? sklen : 0) + vlen);   /* before any release: a stays alive */
    if (!subkey || to_dict) {
        s->bytes -= e->bytes;
        clear_content(s, e);
        e->sealed = sealed;
        if (!subkey) {
            e->is_dict = 0;
            e->val = vcopy;
            e->vlen = vlen;
            e->bytes = vlen;
            e->own = a;
        } else {
            e->is_dict = 1;
            e->subs = subs1;
            e->subown = own1;
            e->capsubs = 4;
            e->subs[0] = (dht_subitem){skcopy, sklen, vcopy, vlen, expiration};
            e->subown[0] = a;
            e->nsubs = 1;
            e->bytes = sklen + vlen;
        }
        s->bytes += e->bytes;
        e->exp = expiration;
        heap_fix(s, e->hidx);
        return 1;
    }
    if (sub_at >= 0) {
        dht_subitem *it = &e->subs[sub_at];
        release(s, e->subown[sub_at], it->sklen + it->vlen);
        e->subown[sub_at] = a;
        free((void *)it->value);
        it->value = vcopy;
        it->vlen = vlen;
        it->expiration = expiration;
    } else if (victim >= 0) {
        dht_subitem *it = &e->subs[victim];
        release(s, e->subown[victim], it->sklen + it->vlen);
        e->subown[victim] = a;
        free((void *)it->subkey);
        free((void *)it->value);
        *it = (dht_subitem){skcopy, sklen, vcopy, vlen, expiration};
    } else {
        e->subown[e->nsubs] = a;
        e->subs[e->nsubs++] = (dht_subitem){skcopy, sklen, vcopy, vlen, expiration};
    }
    e->bytes = (size_t)((long long)e->bytes + delta);
    s->bytes = (size_t)((long long)s->bytes + delta);
    if (expiration > e->exp) {
        e->exp = expiration;
        heap_fix(s, e->hidx);
    }
    return 1;
}

int dht_storage_store(dht_storage *s, const dht_id *key, const void *subkey, size_t sklen, const void *value,
                      size_t vlen, double expiration, double now)
{
    return store_as(s, NULL, 0, key, subkey, sklen, value, vlen, expiration, now);
}

/* store_owned is dht_storage_store_from with the sealed flag. */
static int store_owned(dht_storage *s, const char *owner, int sealed, const dht_id *key, const void *subkey,
                       size_t sklen, const void *value, size_t vlen, double expiration, double now)
{
    if (!owner) return store_as(s, NULL, sealed, key, subkey, sklen, value, vlen, expiration, now);
    size_t len = strlen(owner);
    if (len >= DHT_OWNER_MAX_BYTES) return DMOE_EINVAL;
    acct *a = rt_map_get(&s->owners, owner, len);
    if (!a) {
        if (!(a = calloc(1, sizeof *a))) return DMOE_ENOMEM;
        memcpy(a->name, owner, len);
        a->len = len;
        if (rt_map_put(&s->owners, a->name, a->len, a) != 0) {
            free(a);
            return DMOE_ENOMEM;
        }
    }
    s->pinned = a;
    int rc = store_as(s, a, sealed, key, subkey, sklen, value, vlen, expiration, now);
    s->pinned = NULL;
    if (a->items == 0) {
        rt_map_del(&s->owners, a->name, a->len);
        free(a);
    }
    return rc;
}

int dht_storage_store_from(dht_storage *s, const char *owner, const dht_id *key, const void *subkey, size_t sklen,
                           const void *value, size_t vlen, double expiration, double now)
{
    return store_owned(s, owner, 0, key, subkey, sklen, value, vlen, expiration, now);
}

int dht_storage_store_signed(dht_storage *s, const char *owner, const dht_id *key, const void *subkey, size_t sklen,
                             const void *value, size_t vlen, double expiration, double now)
{
    return store_owned(s, owner, 1, key, subkey, sklen, value, vlen, expiration, now);
}

void dht_storage_owner_usage(const dht_storage *s, const char *owner, size_t *items, size_t *bytes)
{
    size_t len = strlen(owner);
    const acct *a = len < DHT_OWNER_MAX_BYTES ? rt_map_get(&s->owners, owner, len) : NULL;
    *items = a ? a->items : 0;
    *bytes = a ? a->bytes : 0;
}

int dht_storage_get(dht_storage *s, const dht_id *key, double now, dht_stored *out)
{
    entry *e = get_live(s, key, now);
    if (!e) return DMOE_ENOTFOUND;
    out->is_dict = e->is_dict;
    out->sealed = e->sealed;
    out->value = e->is_dict ? NULL : e->val;
    out->vlen = e->is_dict ? 0 : e->vlen;
    out->subs = e->is_dict ? e->subs : NULL;
    out->nsubs = e->is_dict ? e->nsubs : 0;
    out->expiration = e->exp;
    return 0;
}

int dht_storage_remove(dht_storage *s, const dht_id *key)
{
    entry *e = rt_map_get(&s->tab, key->b, sizeof key->b);
    if (!e) return DMOE_ENOTFOUND;
    remove_entry(s, e);
    return 0;
}

size_t dht_storage_expire(dht_storage *s, double now)
{
    size_t dropped = 0;
    while (dropped < s->lim.expire_budget && s->n > 0 && s->heap[0]->exp < now) {
        remove_entry(s, s->heap[0]);
        dropped++;
    }
    return dropped;
}

size_t dht_storage_count(const dht_storage *s)
{
    return s->n;
}

size_t dht_storage_bytes(const dht_storage *s)
{
    return s->bytes;
}

double dht_storage_next_expiration(const dht_storage *s)
{
    return s->n ? s->heap[0]->exp : INFINITY;
}
