/* moe_beam.h -- the search for each sample's best live experts of a grid (hivemind's MoEBeamSearcher),
 * exact and batched.
 *
 * Experts live in a grid named by uids "<uid_prefix><c0>.<c1>...<c(D-1)>". The gating function gives,
 * for every sample, a score per coordinate of every dimension; an expert's score is the sum of its
 * coordinates' scores, added in dimension order. For each sample the search returns the beam_size live
 * experts with the highest scores -- exactly what exhaustive scoring of every live expert would return,
 * ties broken by uid in byte order (strcmp) -- or all of them when fewer are alive. It walks the DHT's
 * prefix dictionaries ("<uid_prefix>i.", then "<uid_prefix>i.j.", ...; a one-dimensional grid reads
 * hivemind's FLAT_EXPERT entries "expert.5." / -1) best-first: a prefix is fetched only while the best
 * score any expert below it could reach (its fixed coordinates' scores plus the maximum of every other
 * dimension) can still enter the sample's top k. Unlike hivemind's beam, which keeps the beam_size best
 * prefixes per dimension, it never misses an expert because a kept prefix lacked the winning column.
 *
 * The core (moe_beam_new / want / feed / result) is a pure state machine that does no I/O: it says which
 * prefixes it needs next -- the union over all samples, each prefix once per search -- and is fed their
 * successors. A test can feed it from a table; moe_beam_search drives it from any successors provider
 * (the DHT through moe_succ_dht, moe_adapt.h: one dht_get_active_successors call per round, with
 * negative caching); moe_beam_search_progress also says after each round which samples are final
 * (moe_beam_sample_done), so their experts can be called while the search goes on.
 * A one-dimensional grid of up to 256 coordinates takes one round; a dense grid of D dimensions about
 * D - 1.
 *
 * Threads: the core is plain data (any one thread at a time); moe_beam_search runs on the loop thread,
 * its callback too, never inside moe_beam_search itself.
 */
#ifndef DMOE_MOE_BEAM_H
#define DMOE_MOE_BEAM_H

#include <stddef.h>
#include <stdint.h>

#include "actors/grid/dht_experts.h"

/* Dimensions of a grid (hivemind allows any; uids stay short). */
#define MOE_MAX_DIMS 8
/* Largest beam (k_best): each sample keeps its best experts in a sorted array of this many. */
#define MOE_MAX_BEAM 256

/* One expert found for a sample: its uid, where it is served, and its score. */
typedef struct {
    char uid[UID_MAX_LEN + 1];
    wire_maddr addr;
    float score;
} moe_beam_expert;

typedef struct moe_beam moe_beam;

/* moe_beam_new prepares a search for batch samples. uid_prefix is "name." (a trailing '.' is added when
 * missing), grid[0..ndim) the sizes, scores the row-major [batch, sum(grid)] gating scores (copied),
 * beam_size the k_best. Returns 0 and *out, or DMOE_EINVAL (bad prefix, sizes, batch < 1) / DMOE_ENOMEM. */
int moe_beam_new(const char *uid_prefix, const int *grid, int ndim, int64_t batch, const float *scores,
                 int beam_size, moe_beam **out);
/* moe_beam_want returns how many prefixes the search needs next and points *prefixes at them (owned by
 * b, valid until the next moe_beam_feed); 0 means the search is over. */
size_t moe_beam_want(moe_beam *b, const char *const **prefixes);
/* moe_beam_feed gives the successors of the prefixes of the last moe_beam_want, per[i] for prefix i
 * (copied). Returns 0, or DMOE_EINVAL when n is not the count asked for, DMOE_ENOMEM. */
int moe_beam_feed(moe_beam *b, const dht_successors *per, size_t n);
/* moe_beam_result returns how many experts sample s got (0..beam_size) and points *out at them, best
 * first: by score, then by uid in byte order (owned by b). Valid once moe_beam_want returned 0. NaN
 * scores count as -inf. */
size_t moe_beam_result(const moe_beam *b, int64_t s, const moe_beam_expert **out);
/* moe_beam_sample_done says whether sample s's search has ended: its result (moe_beam_result) is final
 * and no later round changes it. Up to date once moe_beam_want has gathered the round (or returned 0);
 * a search that ends with the last round reports every sample done. */
int moe_beam_sample_done(const moe_beam *b, int64_t s);
/* moe_beam_rounds returns the provider calls made; moe_beam_fetched the prefixes asked in total. */
int moe_beam_rounds(const moe_beam *b);
size_t moe_beam_fetched(const moe_beam *b);
/* moe_beam_free frees b; NULL is a no-op. */
void moe_beam_free(moe_beam *b);

/* moe_beam_expert_coords parses the coordinates of uid under uid_prefix into coords[0..ndim). Returns 0
 * when uid is "<uid_prefix>c0.c1...", with exactly ndim decimal coordinates each inside grid, else
 * DMOE_EINVAL. */
int moe_beam_expert_coords(const char *uid_prefix, const int *grid, int ndim, const char *uid, int *coords);

/* ---- driving the core from a successors provider ---- */

/* A provider of successors: get finds the live successors of prefixes[0..n) and calls cb once, later
 * (never inside get), with per[i] for prefix i (borrowed for the callback). get returns 0, or a negative
 * code (cb will not run). dht_get_active_successors has exactly this shape. */
typedef struct {
    void *impl;
    int (*get)(void *impl, const char *const *prefixes, size_t n, dht_successors_cb cb, void *arg);
} moe_succ_provider;

typedef struct moe_search moe_search;

/* Completion of moe_beam_search: err 0 and b complete, or a provider error (b then incomplete). */
typedef void (*moe_search_cb)(void *arg, int err, const char *msg, moe_beam *b);

/* Progress of moe_beam_search: a round was fed and the next one asked for; the samples that
 * moe_beam_sample_done now reports have their final result, so their experts can be called while the
 * search goes on. It may cancel the search (moe_search_cancel). */
typedef void (*moe_search_progress_cb)(void *arg, moe_beam *b);

/* moe_beam_search runs b to completion over provider p (copied), one provider call per round. b stays
 * the caller's but must live until cb runs or moe_search_cancel is called. Returns 0 and *out (the
 * handle, freed by the search itself after cb) or DMOE_ENOMEM / the provider's error (cb not called). */
int moe_beam_search(const moe_succ_provider *p, moe_beam *b, moe_search_cb cb, void *arg, moe_search **out);
/* moe_beam_search_progress is moe_beam_search that also calls progress (NULL: none) after every round
 * but the last, once the next round's provider call is out -- never inside this call, and never after
 * cb. The last round's newly finished samples are reported by cb alone. */
int moe_beam_search_progress(const moe_succ_provider *p, moe_beam *b, moe_search_cb cb, moe_search_progress_cb progress,
                             void *arg, moe_search **out);
/* moe_search_cancel drops the search: cb will not run, b is no longer touched (the caller may free it
 * now), and the handle frees itself when the provider's outstanding call returns. */
void moe_search_cancel(moe_search *s);

#endif
