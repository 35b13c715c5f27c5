/* actcache.c -- the activation cache (see actcache.h).
 *
 * Design notes. Entries sit in an rt_map by handle and on an LRU list (oldest at the head). A put that pushes the total over the bound evicts from the head. Handles are a counter
 * mixed through splitmix64 with a per-node seed, so they are unique per node and not guessable.
 */
#include "actors/serve/actcache.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "runtime/rt_map.h"

struct act_entry {
    uint64_t handle, hash;
    const void *owner;
    act_block *block;
    int64_t first, rows;
    size_t bytes;
    act_entry *prev, *next;     /* LRU */
};

struct actcache {
    size_t max_bytes, bytes, count;
    uint64_t counter, seed;
    rt_map by_handle;           /* handle -> act_entry */
    act_entry *head, *tail;
};

static uint64_t mix(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

actcache *actcache_new(size_t max_bytes, uint64_t seed)
{
    actcache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->max_bytes = max_bytes;
    c->seed = mix(seed);
    return c;
}

act_block *act_block_new(int64_t rows, size_t row_floats)
{
    act_block *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    size_t n = (size_t)rows * row_floats;
    if (posix_memalign((void **)&b->data, 64, (n ? n : 1) * sizeof(float)) != 0) { free(b); return NULL; }
    b->refs = 1;
    b->row_floats = row_floats;
    return b;
}

void act_block_unref(act_block *b)
{
    if (b && --b->refs == 0) {
        free(b->data);
        free(b);
    }
}

uint64_t actcache_hash(const void *const *ptrs, const size_t *lens, int n)
{
    uint64_t h = 0;
    for (int i = 0; i < n; i++) h = XXH3_64bits_withSeed(ptrs[i], lens[i], h);   /* chained: order matters */
    return h;
}

static void lru_unlink(actcache *c, act_entry *e)
{
    if (e->prev) e->prev->next = e->next;
    else c->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void detach(actcache *c, act_entry *e)
{
    lru_unlink(c, e);
    rt_map_del_u64(&c->by_handle, e->handle);
    c->bytes -= e->bytes;
    c->count--;
}

void act_entry_release(act_entry *e)
{
    if (!e) return;
    act_block_unref(e->block);
    free(e);
}

uint64_t actcache_put(actcache *c, const void *owner, act_block *b, int64_t first, int64_t rows, uint64_t hash)
{
    size_t bytes = (size_t)rows * b->row_floats * sizeof(float);
    if (!c || bytes > c->max_bytes) return 0;
    act_entry *e = calloc(1, sizeof *e);
    if (!e) return 0;   /* no memory only means no handle: the backward recomputes */
    e->handle = mix(c->seed ^ ++c->counter) | 1;   /* never 0 */
    if (rt_map_put_u64(&c->by_handle, e->handle, e) != 0) { free(e); return 0; }
    while (c->bytes + bytes > c->max_bytes && c->head) {   /* make room: the oldest go */
        act_entry *old = c->head;
        detach(c, old);
        act_entry_release(old);
    }
    e->hash = hash;
    e->owner = owner;
    e->block = b;
    b->refs++;
    e->first = first;
    e->rows = rows;
    e->bytes = bytes;
    e->prev = c->tail;
    if (c->tail) c->tail->next = e;
    else c->head = e;
    c->tail = e;
    c->bytes += bytes;
    c->count++;
    return e->handle;
}

act_entry *actcache_take(actcache *c, uint64_t handle, const void *owner, int64_t rows, uint64_t hash)
{
    if (!c || handle == 0) return NULL;
    act_entry *e = rt_map_get_u64(&c->by_handle, handle);
    if (!e || e->owner != owner || e->rows != rows || e->hash != hash) return NULL;
    detach(c, e);
    return e;
}

const float *act_entry_rows(const act_entry *e) { return e->block->data + (size_t)e->first * e->block->row_floats; }

void actcache_free(actcache *c)
{
    if (!c) return;
    while (c->head) {
        act_entry *e = c->head;
        detach(c, e);
        act_entry_release(e);
    }
    rt_map_clear(&c->by_handle);
    free(c);
}
