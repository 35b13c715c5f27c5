/* uid.h -- expert uids, prefixes, DHT declaration keys and uid patterns (hivemind's expert_uid.py).
 *
 * An expert uid is a name block followed by one or more numeric coordinates, joined by '.':
 * "ffn.0.17". The name block is any non-empty run of bytes other than '.'; a coordinate is 0 or a
 * decimal number without leading zeros (hivemind's UID_PATTERN). A prefix is a name block, zero or
 * more coordinates, and a trailing '.': "ffn." or "ffn.0." (PREFIX_PATTERN).
 *
 * Pure functions, no state, no I/O; safe from any thread.
 */
#ifndef DMOE_UID_H
#define DMOE_UID_H

#include <stddef.h>
#include <stdint.h>

#define UID_DELIMITER '.'
/* UID_FLAT_EXPERT is the subkey under which a one-coordinate uid "expert.5" is declared at "expert.5."
 * (hivemind's FLAT_EXPERT), so that 1-d grids are searchable like deeper ones. */
#define UID_FLAT_EXPERT (-1)
/* UID_MAX_LEN bounds the uids this module builds (declaration keys, patterns); longer input is
 * refused with DMOE_ETOOBIG by those functions (validation itself has no limit). */
#define UID_MAX_LEN 255
/* UID_PATTERN_ATTEMPTS is hivemind's attempts_per_expert: draws allowed per requested expert. */
#define UID_PATTERN_ATTEMPTS 10

/* uid_is_valid returns 1 if uid matches hivemind's UID_PATTERN, else 0 (NULL gives 0). */
int uid_is_valid(const char *uid);

/* uid_is_valid_prefix returns 1 if prefix matches hivemind's PREFIX_PATTERN, else 0 (NULL gives 0). */
int uid_is_valid_prefix(const char *prefix);

/* uid_split separates a uid or prefix into the prefix before its last coordinate and that coordinate,
 * as hivemind's split_uid: "ffn.1.2.3" and "ffn.1.2.3." both give "ffn.1.2." and 3. Trailing dots are
 * ignored; the last block must be an integer (an optional '-' then digits, so "e.5.-1" gives "e.5."
 * and -1). Returns 0, DMOE_EINVAL if there is no delimiter or the last block is not an int64, or
 * DMOE_ETOOBIG if the prefix with its NUL does not fit in cap. prefix and last_coord are written only on
 * success; either may be NULL. */
int uid_split(const char *uid, char *prefix, size_t cap, int64_t *last_coord);

/* One record that hivemind's declare_experts stores for an uid. has_subkey 0: key holds the server's
 * address (the uid itself). has_subkey 1: key is a prefix, a dictionary whose entry subkey holds
 * [uid, address]. */
typedef struct {
    char key[UID_MAX_LEN + 2];
    int has_subkey;
    int64_t subkey;
} uid_decl_key;

/* UID_MAX_DECL_KEYS bounds the records uid_declaration_keys can return for an uid of UID_MAX_LEN. */
#define UID_MAX_DECL_KEYS (UID_MAX_LEN / 2 + 2)

/* uid_declaration_keys lists what declaring the valid uid stores in the DHT, exactly as hivemind's
 * declare_experts: first (uid, no subkey); then, for an uid with d >= 2 coordinates, the prefixes with
 * d-1, d-2, ..., 1 coordinates, each with the next coordinate as subkey ("ffn.1.2.3" gives "ffn.1.2."/3
 * and "ffn.1."/2; the bare name "ffn." is never stored); for an uid with one coordinate, its own
 * prefix with subkey UID_FLAT_EXPERT ("expert.5" gives "expert.5."/-1). Returns the number of records
 * written to out[0..], DMOE_EINVAL for an invalid uid or a coordinate over int64, DMOE_ETOOBIG if the
 * uid is longer than UID_MAX_LEN or cap is too small (cap >= UID_MAX_DECL_KEYS always suffices). */
int uid_declaration_keys(const char *uid, uid_decl_key *out, size_t cap);

/* One record of a merged declaration (uid_declaration_plan): k, and the index of the uid whose value it
 * stores. */
typedef struct {
    uid_decl_key k;
    size_t uid;
} uid_decl_entry;

/* uid_declaration_plan lists what declaring uids[0..n) together stores, merged as hivemind's
 * declare_experts merges it (one dict keyed by (key, subkey), then store_many grouping by key): every
 * (key, subkey) once, its value from the first uid that needs it ("e.1.2.3" and "e.1.2.5" both need
 * "e.1."/2: the entry holds e.1.2.3), and the entries of one key next to each other, keys in the order
 * they first appear, so a prefix is stored once with all its subkeys. Returns the number of entries and
 * sets *out (malloc'd, the caller frees it; NULL when there are none); DMOE_EINVAL for an invalid uid,
 * with *bad set to its index (bad may be NULL); DMOE_ETOOBIG for an uid over UID_MAX_LEN (*bad too);
 * DMOE_ENOMEM. */
int uid_declaration_plan(const char *const *uids, size_t n, uid_decl_entry **out, size_t *bad);

/* uid_taken_fn says whether an uid is already in use elsewhere (1) or free (0); arg is the caller's. */
typedef int (*uid_taken_fn)(const char *uid, void *arg);

/* uid_pattern_generate draws up to num_experts distinct uids from pattern, as hivemind's
 * generate_uids_from_pattern. The pattern is '.'-separated blocks: literal blocks are copied, a block
 * "[a:b]" (0 <= a < b, decimal) becomes a random coordinate in [a, b). "ffn.[0:4].[0:256]",
 * "ffn.3.[0:10]". Every uid drawn is new (sampling without replacement over the whole grid), so a
 * grid exactly num_experts wide gives all of it. A NULL pattern gives "expert.0", "expert.1", ...
 * taken (may be NULL) rejects uids used elsewhere; at most UID_PATTERN_ATTEMPTS * num_experts draws are
 * made, so fewer than num_experts uids may come back when many are taken (hivemind warns and returns
 * what it found). Returns the number of uids (0..num_experts) and sets *uids_out to a NULL-terminated
 * array the caller frees with uid_list_free; or DMOE_EINVAL for a bad pattern or num_experts, or a grid
 * smaller than num_experts, with a message in err (err may be NULL); DMOE_ETOOBIG for an uid over
 * UID_MAX_LEN; DMOE_ENOMEM. *uids_out is written only on success. The same seed gives the same uids. */
int uid_pattern_generate(const char *pattern, int num_experts, uint64_t seed, uid_taken_fn taken, void *arg,
                         char ***uids_out, char *err, size_t errlen);

/* uid_pattern_shape parses pattern (as uid_pattern_generate does) and gives *grid, the uids it spans,
 * *row, the width of its last block (1 when that block is a fixed coordinate), and *ncoords, its
 * coordinate blocks. Uid index i (0 <= i < grid) numbers the grid in mixed radix, the last block fastest,
 * so the uids [r * row, (r + 1) * row) share everything but their last coordinate. Returns 0 or
 * DMOE_EINVAL with a message in err (err may be NULL); outputs are written only on success. */
int uid_pattern_shape(const char *pattern, uint64_t *grid, uint64_t *row, int *ncoords, char *err, size_t errlen);

/* uid_pattern_at writes the uid of index idx of pattern (see uid_pattern_shape) into buf[cap]. Returns 0,
 * DMOE_EINVAL (a bad pattern, idx outside the grid) or DMOE_ETOOBIG (the uid does not fit). */
int uid_pattern_at(const char *pattern, uint64_t idx, char *buf, size_t cap);

/* uid_rng_below returns a uniform integer in [0, n), n > 0, from the splitmix64 generator *state (the one
 * pattern sampling uses): seeded, reproducible, not for secrets. */
uint64_t uid_rng_below(uint64_t *state, uint64_t n);

/* uid_list_free frees a NULL-terminated array from uid_pattern_generate and its strings; NULL is a
 * no-op. */
void uid_list_free(char **uids);

#endif
