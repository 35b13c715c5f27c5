/* rt_map.c -- the one hash map (see rt_map.h): linear probing, backward-shift deletion. */
#include "runtime/rt_map.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "runtime/rt_err.h"

static uint64_t hash_of(const void *key, size_t len)
{
    uint64_t h = XXH3_64bits(key, len);
    return h ? h : 1;                          /* 0 marks an empty slot */
}

static const void *slot_key(const rt_map_slot *s) { return s->len <= RT_MAP_INLINE ? s->key.b : s->key.p; }

static int slot_is(const rt_map_slot *s, uint64_t h, const void *key, size_t len)
{
    return s->hash == h && s->len == len && memcmp(slot_key(s), key, len) == 0;
}

/* find returns the slot holding the key, or the empty slot where it would go. cap must be > 0. */
static size_t find(const rt_map *m, uint64_t h, const void *key, size_t len)
{
    size_t mask = m->cap - 1, i = (size_t)h & mask;
    while (m->slots[i].hash && !slot_is(&m->slots[i], h, key, len)) i = (i + 1) & mask;
    return i;                                  /* ends: the load is at most 1/2, so an empty slot exists */
}

static int grow(rt_map *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 16;
    if (ncap > SIZE_MAX / sizeof(rt_map_slot)) return DMOE_ENOMEM;
    rt_map_slot *ns = calloc(ncap, sizeof *ns);
    if (!ns) return DMOE_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        const rt_map_slot *s = &m->slots[i];
        if (!s->hash) continue;
        size_t j = (size_t)s->hash & (ncap - 1);
        while (ns[j].hash) j = (j + 1) & (ncap - 1);
        ns[j] = *s;
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return 0;
}

void *rt_map_get(const rt_map *m, const void *key, size_t len)
{
    if (!m->n) return NULL;
    size_t i = find(m, hash_of(key, len), key, len);
    return m->slots[i].hash ? m->slots[i].val : NULL;
}

int rt_map_put(rt_map *m, const void *key, size_t len, void *val)
{
    if (len > UINT32_MAX) return DMOE_EINVAL;
    uint64_t h = hash_of(key, len);
    if (m->cap) {
        size_t i = find(m, h, key, len);
        if (m->slots[i].hash) { m->slots[i].val = val; return 0; }
    }
    if ((m->n + 1) * 2 > m->cap && grow(m) != 0) return DMOE_ENOMEM;
    rt_map_slot *s = &m->slots[find(m, h, key, len)];
    s->hash = h;
    s->len = (uint32_t)len;
    if (len <= RT_MAP_INLINE) memcpy(s->key.b, key, len);
    else s->key.p = key;
    s->val = val;
    m->n++;
    return 0;
}

/* remove_slot empties slot i and shifts the rest of its probe run back so every entry stays reachable
 * from its home slot (Knuth's algorithm R). */
static void remove_slot(rt_map *m, size_t i)
{
    size_t mask = m->cap - 1, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->slots[j].hash) break;
        size_t home = (size_t)m->slots[j].hash & mask;
        /* j's entry may move to i unless its home lies cyclically in (i, j]. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays) continue;
        m->slots[i] = m->slots[j];
        i = j;
    }
    memset(&m->slots[i], 0, sizeof m->slots[i]);
    m->n--;
}

void *rt_map_del(rt_map *m, const void *key, size_t len)
{
    if (!m->n) return NULL;
    size_t i = find(m, hash_of(key, len), key, len);
    if (!m->slots[i].hash) return NULL;
    void *v = m->slots[i].val;
    remove_slot(m, i);
    return v;
}

void *rt_map_next(const rt_map *m, rt_map_iter *it, const void **key, size_t *len)
{
    if (!m->cap) return NULL;
    size_t mask = m->cap - 1;
    if (!it->started) {
        size_t e = 0;
        while (m->slots[e].hash) e++;          /* ends: the load is at most 1/2 */
        it->start = (e + 1) & mask;
        it->k = 0;
        it->started = 1;
    }
    for (; it->k < m->cap; it->k++) {
        const rt_map_slot *s = &m->slots[(it->start + it->k) & mask];
        if (!s->hash) continue;
        if (key) *key = slot_key(s);
        if (len) *len = s->len;
        it->k++;
        return s->val;
    }
    return NULL;
}

void rt_map_del_at(rt_map *m, rt_map_iter *it)
{
    it->k--;                                   /* the entry just returned; look at its slot again */
    remove_slot(m, (it->start + it->k) & (m->cap - 1));
}

void rt_map_clear(rt_map *m)
{
    if (!m) return;
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}
