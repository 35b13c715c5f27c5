/* kern_rng.h -- a small seeded random generator (xoshiro256** seeded by splitmix64) and the
 * PyTorch-default initialisers built on it. Deterministic across platforms for a given seed; not
 * bit-identical to torch's generator (nobody can be without torch's Philox/MT code), but the same
 * distributions: Linear weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with
 * a = sqrt(5)), LayerNorm weight 1 and bias 0. Not thread-safe: one kern_rng per user.
 */
#ifndef DMOE_KERN_RNG_H
#define DMOE_KERN_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct { uint64_t s[4]; } kern_rng;

/* kern_rng_seed initialises r from seed (any value, 0 included). */
void kern_rng_seed(kern_rng *r, uint64_t seed);
/* kern_rng_next returns 64 random bits. */
uint64_t kern_rng_next(kern_rng *r);
/* kern_rng_uniform returns a float in [0, 1). */
float kern_rng_uniform(kern_rng *r);
/* kern_rng_normal returns a standard normal float (Box-Muller). */
float kern_rng_normal(kern_rng *r);
/* kern_rng_below returns an integer in [0, n) without modulo bias; n > 0. */
uint64_t kern_rng_below(kern_rng *r, uint64_t n);
/* kern_init_uniform fills p[n] with U(-bound, bound). */
void kern_init_uniform(float *p, size_t n, float bound, kern_rng *r);
/* kern_init_const fills p[n] with v. */
void kern_init_const(float *p, size_t n, float v);

#endif
