/* rt_map.h -- the project's one hash map: byte-string keys to pointers, open addressing.
 *
 * Every table that finds things by a key -- calls by request id, cached activations by handle, DHT
 * values by key id, experts by uid -- is an rt_map. Keys are byte strings of any length: a key of up to
 * RT_MAP_INLINE bytes (a u64 id, a 128-bit DHT id) is copied into the map; a longer one (a uid) is held
 * by pointer, and the caller keeps its bytes alive and unchanged while the entry is in the map (the
 * usual way: the key lives inside the value). Values are caller-owned pointers, never NULL.
 *
 * Design notes. Linear probing over a power-of-two array of slots, each holding the key's 64-bit
 * XXH3 hash (0 marks an empty slot; a real 0 hash is stored as 1), so most mismatches cost one compare
 * and no key read. The load stays at most 1/2; the array doubles when it would pass that. Deletion
 * shifts later entries of the run back (no tombstones), so lookups stay short after any churn.
 * Iteration (rt_map_next) visits every entry once; it starts just after an empty slot, so no probe
 * run wraps across its start, and deleting the entry just visited (rt_map_del_at: the shift only
 * moves entries not yet visited into the freed slot, which is looked at again) visits every other
 * entry exactly once too. Nothing else may change the map during an iteration.
 *
 * Not thread-safe: one owner (an actor, on the loop thread, or a pure core). All functions are O(1)
 * expected except growth.
 */
#ifndef DMOE_RT_MAP_H
#define DMOE_RT_MAP_H

#include <stddef.h>
#include <stdint.h>

/* Keys of at most this many bytes are copied into the map. */
#define RT_MAP_INLINE 16

typedef struct rt_map_slot {
    uint64_t hash;                     /* 0: empty */
    uint32_t len;
    union { uint8_t b[RT_MAP_INLINE]; const void *p; } key;
    void *val;
} rt_map_slot;

typedef struct rt_map {
    rt_map_slot *slots;
    size_t cap, n;                     /* cap: 0 or a power of two */
} rt_map;

/* RT_MAP_INIT is an empty map; so is a zeroed rt_map. It allocates on the first put. */
#define RT_MAP_INIT { NULL, 0, 0 }

/* rt_map_get returns the value stored under key[0..len), or NULL. */
void *rt_map_get(const rt_map *m, const void *key, size_t len);

/* rt_map_put stores val (not NULL) under key[0..len), replacing any value there. Returns 0, or
 * DMOE_ENOMEM (the map is unchanged). A key longer than RT_MAP_INLINE must outlive the entry. */
int rt_map_put(rt_map *m, const void *key, size_t len, void *val);

/* rt_map_del removes key[0..len) and returns its value, or NULL when it was not there. */
void *rt_map_del(rt_map *m, const void *key, size_t len);

/* An iteration's position: start each one with RT_MAP_ITER_INIT. */
typedef struct rt_map_iter { size_t start, k; int started; } rt_map_iter;
#define RT_MAP_ITER_INIT { 0, 0, 0 }

/* rt_map_next returns the next entry's value (and, when key is not NULL, points *key / *len at its
 * key) and advances it, or returns NULL at the end. */
void *rt_map_next(const rt_map *m, rt_map_iter *it, const void **key, size_t *len);

/* rt_map_del_at removes the entry rt_map_next just returned; the iteration goes on with the next one. */
void rt_map_del_at(rt_map *m, rt_map_iter *it);

/* rt_map_count returns the number of entries. */
static inline size_t rt_map_count(const rt_map *m) { return m->n; }

/* rt_map_clear removes every entry and frees the slots (values stay the caller's). The map is empty and
 * usable again. NULL is a no-op. */
void rt_map_clear(rt_map *m);

/* rt_map_u64 / rt_map_put_u64 / rt_map_del_u64: the same for a 64-bit integer key. */
static inline void *rt_map_get_u64(const rt_map *m, uint64_t k) { return rt_map_get(m, &k, sizeof k); }
static inline int rt_map_put_u64(rt_map *m, uint64_t k, void *val) { return rt_map_put(m, &k, sizeof k, val); }
static inline void *rt_map_del_u64(rt_map *m, uint64_t k) { return rt_map_del(m, &k, sizeof k); }

#endif
