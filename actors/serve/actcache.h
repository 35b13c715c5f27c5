/* actcache.h -- the node's activation cache: what a forward saved, kept until its backward comes.
 *
 * hivemind's server recomputes the whole forward inside every backward call. Here a forward batch of
 * an expert class that can save its activations (kern_class.forward_save) writes them to one refcounted
 * block; each request of the batch gets an entry (its rows of the block) under a random 64-bit handle,
 * which the forward reply carries. A backward request that returns the handle, for the same expert, the
 * same number of rows and the same input bytes (checked by a hash), takes its entry back and its batch
 * runs backward_saved, skipping the forward's products. Anything else (no handle, evicted, mismatch)
 * simply recomputes: the cache only ever saves work.
 *
 * Bounded in bytes: past max_bytes the least recently stored entries are dropped (a block is freed with
 * its last entry). A handle is good for one backward. Loop thread only.
 */
#ifndef DMOE_ACTCACHE_H
#define DMOE_ACTCACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct actcache actcache;
typedef struct act_entry act_entry;

/* The saved activations of one forward batch: B rows of row_floats. */
typedef struct {
    int refs;
    size_t row_floats;
    float *data;
} act_block;

/* actcache_new returns a cache of at most max_bytes (0: a cache that keeps nothing), or NULL. */
actcache *actcache_new(size_t max_bytes, uint64_t seed);
/* actcache_free drops every entry; NULL is a no-op. */
void actcache_free(actcache *c);
/* act_block_new allocates a block for rows x row_floats floats with one reference (the caller's);
 * NULL when out of memory. act_block_unref drops a reference, freeing the block with the last. */
act_block *act_block_new(int64_t rows, size_t row_floats);
void act_block_unref(act_block *b);
/* actcache_hash returns the hash of one request's inputs that a backward must match: XXH3-64 over each byte
 * range, seeded with the hash of the ranges before it. */
uint64_t actcache_hash(const void *const *ptrs, const size_t *lens, int n);
/* actcache_put keeps rows of b starting at row first for owner (an expert) and returns their handle
 * (never 0), or 0 when nothing was kept (cache disabled, one request bigger than the cache). b gains a
 * reference while the entry lives. */
uint64_t actcache_put(actcache *c, const void *owner, act_block *b, int64_t first, int64_t rows, uint64_t hash);
/* actcache_take removes and returns the entry under handle when it matches owner, rows and hash; NULL
 * otherwise (a mismatched entry stays). The caller releases it with act_entry_release. */
act_entry *actcache_take(actcache *c, uint64_t handle, const void *owner, int64_t rows, uint64_t hash);
/* act_entry_rows returns the entry's first saved row (rows x row_floats floats follow). */
const float *act_entry_rows(const act_entry *e);
/* act_entry_release frees a taken entry (and its block reference). NULL is a no-op. */
void act_entry_release(act_entry *e);

#endif
