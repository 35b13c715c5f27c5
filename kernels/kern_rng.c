/* kern_rng.c -- xoshiro256** seeded through splitmix64, and the PyTorch-default initialisers on top.
 *
 * Owns nothing but the caller's kern_rng state: every function takes the generator it advances, so
 * two users (say, two experts initialised on two worker threads) never share state. The output
 * sequence depends only on the seed, on every platform: all arithmetic is on uint64_t, and the float
 * conversions take the top 24 bits (exact in a float).
 *
 * Algorithms (public-domain designs by Blackman and Vigna):
 *   seeding:  the four state words are four successive splitmix64 outputs of the seed, so seed 0 gives
 *             a non-zero state too;
 *   next:     xoshiro256** (result = rotl(s1 * 5, 7) * 9, then the linear xor/shift state update);
 *   uniform:  top 24 bits * 2^-24, in [0, 1);
 *   normal:   Box-Muller on (1 - u1) in (0, 1] and u2;
 *   below:    rejection of the lowest (2^64 mod n) values, then modulo: no bias.
 */
#include "kernels/kern_rng.h"

#include <math.h>

static uint64_t rng_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void kern_rng_seed(kern_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = rng_splitmix64(&x);
}

uint64_t kern_rng_next(kern_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rng_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rng_rotl(s[3], 45);
    return result;
}

float kern_rng_uniform(kern_rng *r)
{
    return (float)(kern_rng_next(r) >> 40) * (1.0f / 16777216.0f);
}

float kern_rng_normal(kern_rng *r)
{
    double u1 = 1.0 - (double)(kern_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); /* (0, 1] */
    double u2 = (double)(kern_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);       /* [0, 1) */
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t kern_rng_below(kern_rng *r, uint64_t n)
{
    if (n <= 1) return 0;
    uint64_t threshold = (0 - n) % n; /* 2^64 mod n */
    for (;;) {
        uint64_t x = kern_rng_next(r);
        if (x >= threshold) return x % n;
    }
}

void kern_init_uniform(float *p, size_t n, float bound, kern_rng *r)
{
    for (size_t i = 0; i < n; i++) p[i] = (2.0f * kern_rng_uniform(r) - 1.0f) * bound;
}

void kern_init_const(float *p, size_t n, float v)
{
    for (size_t i = 0; i < n; i++) p[i] = v;
}
