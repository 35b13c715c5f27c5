/* uid.c -- expert uid grammar, declaration keys and pattern sampling (see uid.h).
 *
 * Validation is a hand-written matcher for hivemind's two regular expressions; it reads the string
 * once, block by block. Declaration keys follow hivemind's declare_experts loop: pad a one-coordinate
 * uid with FLAT_EXPERT, then split off the last coordinate d-1 times.
 *
 * Pattern sampling: the bracket blocks of a pattern span a grid of N = prod(b - a) uids, numbered in
 * mixed radix. Drawing is a sparse Fisher-Yates shuffle over [0, N): a small hash map remembers only
 * the swapped positions, so every draw is a fresh grid cell, memory is O(draws), and a grid exactly
 * num_experts wide comes back whole. hivemind draws with replacement and drops repeats, which within
 * its attempt budget gives the same distribution of distinct uids. The generator is a local
 * splitmix64, seeded by the caller, so tests are reproducible.
 */
#include "actors/grid/uid.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_map.h"

/* Refuse requests whose draw budget would not fit comfortably in memory and an int. */
#define UID_MAX_EXPERTS (1 << 24)
/* Largest grid sampled exactly; bigger grids (a product over 2^62 cells) are refused as absurd. */
#define UID_MAX_GRID (UINT64_C(1) << 62)

/* is_coord_span returns whether s[0..n) is "0" or a decimal number without a leading zero. */
static int is_coord_span(const char *s, size_t n)
{
    if (n == 0) return 0;
    if (s[0] == '0') return n == 1;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

/* match_grammar checks name block, then coordinates; trailing_dot selects PREFIX_PATTERN. */
static int match_grammar(const char *s, int trailing_dot)
{
    if (!s) return 0;
    const char *dot = strchr(s, UID_DELIMITER);
    if (!dot || dot == s) return 0;              /* no coordinate part, or empty name */
    const char *p = dot + 1;                     /* just after a delimiter */
    for (;;) {
        const char *next = strchr(p, UID_DELIMITER);
        if (!next) {
            if (trailing_dot) return *p == '\0';
            return is_coord_span(p, strlen(p));
        }
        if (!is_coord_span(p, (size_t)(next - p))) return 0;
        p = next + 1;
    }
}

int uid_is_valid(const char *uid)
{
    return match_grammar(uid, 0);
}

int uid_is_valid_prefix(const char *prefix)
{
    return match_grammar(prefix, 1);
}

/* parse_i64 parses s[0..n) as an optional '-' then decimal digits into *out; 0 or DMOE_EINVAL. */
static int parse_i64(const char *s, size_t n, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    if (n > 0 && s[0] == '-') { neg = 1; i = 1; }
    if (i == n) return DMOE_EINVAL;
    uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return DMOE_EINVAL;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (lim - d) / 10) return DMOE_EINVAL;
        v = v * 10 + d;
    }
    *out = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return 0;
}

int uid_split(const char *uid, char *prefix, size_t cap, int64_t *last_coord)
{
    if (!uid) return DMOE_EINVAL;
    size_t n = strlen(uid);
    while (n > 0 && uid[n - 1] == UID_DELIMITER) n--;
    size_t pivot = n;
    while (pivot > 0 && uid[pivot - 1] != UID_DELIMITER) pivot--;
    if (pivot == 0) return DMOE_EINVAL;          /* no delimiter left of the last block */
    int64_t coord;
    if (parse_i64(uid + pivot, n - pivot, &coord) < 0) return DMOE_EINVAL;
    if (prefix) {
        if (pivot + 1 > cap) return DMOE_ETOOBIG;
        memcpy(prefix, uid, pivot);
        prefix[pivot] = '\0';
    }
    if (last_coord) *last_coord = coord;
    return 0;
}

int uid_declaration_keys(const char *uid, uid_decl_key *out, size_t cap)
{
    if (!uid_is_valid(uid)) return DMOE_EINVAL;
    size_t n = strlen(uid);
    if (n > UID_MAX_LEN) return DMOE_ETOOBIG;
    size_t ndots = 0;
    for (size_t i = 0; i < n; i++) ndots += uid[i] == UID_DELIMITER;
    size_t count = ndots > 1 ? ndots : 2;       /* the uid + (ndots - 1) prefixes, or + the flat one */
    if (count > cap) return DMOE_ETOOBIG;

    /* work holds the current "prefix" of hivemind's loop; "+ .-1" fits in UID_MAX_LEN + 4. */
    char work[UID_MAX_LEN + 8];
    memcpy(work, uid, n + 1);
    if (ndots == 1) {
        snprintf(work + n, sizeof work - n, "%c%d", UID_DELIMITER, UID_FLAT_EXPERT);
        ndots = 2;
    }
    uid_decl_key tmp[UID_MAX_DECL_KEYS];
    memcpy(tmp[0].key, uid, n + 1);
    tmp[0].has_subkey = 0;
    tmp[0].subkey = 0;
    for (size_t i = 0; i + 1 < ndots; i++) {
        int64_t coord;
        char next[UID_MAX_LEN + 8];
        int rc = uid_split(work, next, sizeof next, &coord);
        if (rc < 0) return rc;                   /* a coordinate over int64 */
        memcpy(tmp[i + 1].key, next, strlen(next) + 1);
        tmp[i + 1].has_subkey = 1;
        tmp[i + 1].subkey = coord;
        memcpy(work, next, strlen(next) + 1);
    }
    memcpy(out, tmp, count * sizeof *out);
    return (int)count;
}

/* ---- merged declarations ---------------------------------------------------------------------------- */

int uid_declaration_plan(const char *const *uids, size_t n, uid_decl_entry **out, size_t *bad)
{
    uid_decl_key keys[UID_MAX_DECL_KEYS];
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int k = uid_declaration_keys(uids[i], keys, UID_MAX_DECL_KEYS);
        if (k < 0) {
            if (bad) *bad = i;
            return k;
        }
        total += (size_t)k;
    }
    /* all (key, subkey) records once, zero-padded so that a record's bytes are its identity */
    uid_decl_entry *all = calloc(total ? total : 1, sizeof *all), *sorted = calloc(total ? total : 1, sizeof *sorted);
    size_t *group = calloc(total ? total : 1, sizeof *group), *count = calloc(total + 1, sizeof *count);
    rt_map seen = RT_MAP_INIT, groups = RT_MAP_INIT;   /* record bytes -> 1; key string -> group + 1 */
    size_t m = 0, ngroups = 0;
    int rc = all && sorted && group && count ? 0 : DMOE_ENOMEM;
    for (size_t i = 0; i < n && rc == 0; i++) {
        int k = uid_declaration_keys(uids[i], keys, UID_MAX_DECL_KEYS);
        for (int j = 0; j < k && rc == 0; j++) {
            uid_decl_entry *e = &all[m];
            snprintf(e->k.key, sizeof e->k.key, "%s", keys[j].key);
            e->k.has_subkey = keys[j].has_subkey;
            e->k.subkey = keys[j].subkey;
            e->uid = i;
            if (rt_map_get(&seen, &e->k, sizeof e->k)) {
                memset(e, 0, sizeof *e);
                continue;
            }
            size_t g = (size_t)(uintptr_t)rt_map_get(&groups, e->k.key, strlen(e->k.key));
            if (g == 0) {
                g = ++ngroups;
                if (rt_map_put(&groups, e->k.key, strlen(e->k.key), (void *)(uintptr_t)g) != 0) rc = DMOE_ENOMEM;
            }
            if (rc == 0 && rt_map_put(&seen, &e->k, sizeof e->k, e) != 0) rc = DMOE_ENOMEM;
            group[m++] = g - 1;
        }
    }
    if (rc == 0) {   /* a stable counting sort by group: first-seen key order, entries in order within */
        for (size_t i = 0; i < m; i++) count[group[i] + 1]++;
        for (size_t g = 0; g < ngroups; g++) count[g + 1] += count[g];
        for (size_t i = 0; i < m; i++) sorted[count[group[i]]++] = all[i];
    }
    rt_map_clear(&seen);
    rt_map_clear(&groups);
    free(all);
    free(group);
    free(count);
    if (rc != 0 || m == 0) {
        free(sorted);
        sorted = NULL;
    }
    if (rc != 0) return rc;
    *out = sorted;
    return (int)m;
}

/* ---- pattern sampling ---------------------------------------------------------------------------- */

typedef struct {
    const char *lit;     /* literal block text (not NUL-terminated), or NULL for a range */
    size_t litlen;
    uint64_t lo, width;  /* range [lo, lo + width) */
} pat_block;

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

uint64_t uid_rng_below(uint64_t *state, uint64_t n)
{
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t r = splitmix64(state);
        if (r >= threshold) return r % n;
    }
}

/* parse_u64_span parses decimal digits only (no sign, no spaces) into *out; 0 or -1. */
static int parse_u64_span(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 18) return -1;             /* 18 digits keep every value under 10^18 */
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* parse_pattern fills blocks (array of at most nmax) and the grid size; 0 or DMOE_EINVAL with err. */
static int parse_pattern(const char *pattern, pat_block *blocks, size_t nmax, size_t *nblocks, uint64_t *grid,
                         char *err, size_t errlen)
{
    size_t nb = 0;
    uint64_t n = 1;
    const char *p = pattern;
    for (;;) {
        const char *end = strchr(p, UID_DELIMITER);
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (nb == nmax) {
            dmoe_set_err(err, errlen, "expert pattern %s has too many blocks", pattern);
            return DMOE_EINVAL;
        }
        pat_block *b = &blocks[nb];
        if (!memchr(p, '[', len) && !memchr(p, ']', len)) {
            int ok = nb == 0 ? len > 0 : is_coord_span(p, len);
            if (!ok) {
                dmoe_set_err(err, errlen, "expert pattern %s has invalid block '%.*s': %s", pattern, (int)len, p,
                        nb == 0 ? "the name block is empty" : "a fixed coordinate must be 0 or a number "
                        "without leading zeros");
                return DMOE_EINVAL;
            }
            b->lit = p;
            b->litlen = len;
        } else {
            const char *colon = len >= 2 ? memchr(p + 1, ':', len - 2) : NULL;
            uint64_t lo, hi;
            if (len < 5 || p[0] != '[' || p[len - 1] != ']' || !colon ||
                parse_u64_span(p + 1, (size_t)(colon - p - 1), &lo) < 0 ||
                parse_u64_span(colon + 1, (size_t)(p + len - 1 - colon - 1), &hi) < 0) {
                dmoe_set_err(err, errlen, "expert pattern %s has invalid block '%.*s': block must be either "
                        "fixed or a range [from:to]", pattern, (int)len, p);
                return DMOE_EINVAL;
            }
            if (hi <= lo) {
                dmoe_set_err(err, errlen, "expert pattern %s has an empty range '%.*s'", pattern, (int)len, p);
                return DMOE_EINVAL;
            }
            b->lit = NULL;
            b->lo = lo;
            b->width = hi - lo;
            if (n > UID_MAX_GRID / b->width) {
                dmoe_set_err(err, errlen, "expert pattern %s spans more than 2^62 uids", pattern);
                return DMOE_EINVAL;
            }
            n *= b->width;
        }
        nb++;
        if (!end) break;
        p = end + 1;
    }
    if (nb < 2) {
        dmoe_set_err(err, errlen, "expert pattern %s has no coordinate block (expected name.[from:to]...)", pattern);
        return DMOE_EINVAL;
    }
    *nblocks = nb;
    *grid = n;
    return 0;
}

/* render writes the uid for grid cell idx into buf; 0 or DMOE_ETOOBIG. */
static int render(const pat_block *blocks, size_t nb, uint64_t idx, char *buf, size_t cap)
{
    uint64_t coords[UID_MAX_LEN];
    for (size_t i = nb; i-- > 0;) {
        if (blocks[i].lit) continue;
        coords[i] = blocks[i].lo + idx % blocks[i].width;
        idx /= blocks[i].width;
    }
    size_t off = 0;
    for (size_t i = 0; i < nb; i++) {
        int w;
        if (blocks[i].lit)
            w = snprintf(buf + off, cap - off, "%s%.*s", i ? "." : "", (int)blocks[i].litlen, blocks[i].lit);
        else
            w = snprintf(buf + off, cap - off, "%s%llu", i ? "." : "", (unsigned long long)coords[i]);
        if (w < 0 || (size_t)w >= cap - off) return DMOE_ETOOBIG;
        off += (size_t)w;
    }
    return 0;
}

/* A sparse permutation: slot i holds swapped[i] if present, else i. Open addressing, linear probing. */
typedef struct {
    uint64_t *keys, *vals;
    size_t mask;
} sparse_map;

#define SPARSE_EMPTY UINT64_MAX

static int sparse_init(sparse_map *m, size_t max_entries)
{
    size_t cap = 16;
    while (cap < 2 * max_entries + 2) cap <<= 1;
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        free(m->keys);
        free(m->vals);
        return DMOE_ENOMEM;
    }
    for (size_t i = 0; i < cap; i++) m->keys[i] = SPARSE_EMPTY;
    m->mask = cap - 1;
    return 0;
}

static size_t sparse_slot(const sparse_map *m, uint64_t k)
{
    size_t h = (size_t)((k * UINT64_C(0x9E3779B97F4A7C15)) >> 17) & m->mask;
    while (m->keys[h] != SPARSE_EMPTY && m->keys[h] != k) h = (h + 1) & m->mask;
    return h;
}

static uint64_t sparse_get(const sparse_map *m, uint64_t k)
{
    size_t h = sparse_slot(m, k);
    return m->keys[h] == k ? m->vals[h] : k;
}

static void sparse_set(sparse_map *m, uint64_t k, uint64_t v)
{
    size_t h = sparse_slot(m, k);
    m->keys[h] = k;
    m->vals[h] = v;
}

static void sparse_free(sparse_map *m)
{
    free(m->keys);
    free(m->vals);
}

/* PAT_MAX_BLOCKS bounds a pattern's blocks: each but the last takes at least two bytes of an uid. */
#define PAT_MAX_BLOCKS (UID_MAX_LEN / 2 + 1)

int uid_pattern_shape(const char *pattern, uint64_t *grid, uint64_t *row, int *ncoords, char *err, size_t errlen)
{
    pat_block blocks[PAT_MAX_BLOCKS];
    size_t nb = 0;
    uint64_t n = 0;
    if (!pattern) {
        dmoe_set_err(err, errlen, "no expert pattern");
        return DMOE_EINVAL;
    }
    int rc = parse_pattern(pattern, blocks, PAT_MAX_BLOCKS, &nb, &n, err, errlen);
    if (rc < 0) return rc;
    *grid = n;
    *row = blocks[nb - 1].lit ? 1 : blocks[nb - 1].width;
    *ncoords = (int)nb - 1;
    return 0;
}

int uid_pattern_at(const char *pattern, uint64_t idx, char *buf, size_t cap)
{
    pat_block blocks[PAT_MAX_BLOCKS];
    size_t nb = 0;
    uint64_t n = 0;
    if (!pattern || parse_pattern(pattern, blocks, PAT_MAX_BLOCKS, &nb, &n, NULL, 0) < 0 || idx >= n)
        return DMOE_EINVAL;
    return render(blocks, nb, idx, buf, cap);
}

void uid_list_free(char **uids)
{
    if (!uids) return;
    for (char **p = uids; *p; p++) free(*p);
    free(uids);
}

int uid_pattern_generate(const char *pattern, int num_experts, uint64_t seed, uid_taken_fn taken, void *arg,
                         char ***uids_out, char *err, size_t errlen)
{
    if (num_experts <= 0 || num_experts > UID_MAX_EXPERTS) {
        dmoe_set_err(err, errlen, "num_experts must be in 1..%d, got %d", UID_MAX_EXPERTS, num_experts);
        return DMOE_EINVAL;
    }
    static const char default_pattern[] = "expert.[0:100000000000000000]";
    pat_block blocks[PAT_MAX_BLOCKS];
    size_t nb = 0;
    uint64_t grid = 0;
    int sequential = pattern == NULL;            /* hivemind's default: expert.0, expert.1, ... */
    if (sequential) pattern = default_pattern;
    int rc = parse_pattern(pattern, blocks, sizeof blocks / sizeof blocks[0], &nb,
                           &grid, err, errlen);
    if (rc < 0) return rc;
    if (grid < (uint64_t)num_experts) {
        dmoe_set_err(err, errlen, "expert pattern %s spans %llu uids, fewer than num_experts=%d", pattern,
                (unsigned long long)grid, num_experts);
        return DMOE_EINVAL;
    }

    uint64_t budget = (uint64_t)UID_PATTERN_ATTEMPTS * (uint64_t)num_experts;
    if (budget > grid) budget = grid;
    char **uids = calloc((size_t)num_experts + 1, sizeof *uids);
    if (!uids) return DMOE_ENOMEM;
    sparse_map map = {0};
    if (!sequential && (rc = sparse_init(&map, (size_t)budget)) < 0) {
        free(uids);
        return rc;
    }
    uint64_t state = seed, remaining = grid;
    int found = 0;
    char buf[UID_MAX_LEN + 1];
    for (uint64_t attempt = 0; attempt < budget && found < num_experts; attempt++) {
        uint64_t cell;
        if (sequential) {
            cell = attempt;
        } else {
            uint64_t j = uid_rng_below(&state, remaining);
            cell = sparse_get(&map, j);
            sparse_set(&map, j, sparse_get(&map, remaining - 1));
            remaining--;
        }
        if ((rc = render(blocks, nb, cell, buf, sizeof buf)) < 0) {
            dmoe_set_err(err, errlen, "expert pattern %s gives uids longer than %d bytes", pattern, UID_MAX_LEN);
            break;
        }
        if (taken && taken(buf, arg)) continue;
        if (!(uids[found] = strdup(buf))) {
            rc = DMOE_ENOMEM;
            break;
        }
        found++;
    }
    if (!sequential) sparse_free(&map);
    if (rc < 0) {
        uid_list_free(uids);
        return rc;
    }
    *uids_out = uids;
    return found;
}
