/* dht_free.h -- choosing free expert uids from a pattern by reading the DHT's prefix dictionaries.
 *
 * A node asked for k experts from a pattern must get k while the grid has k free uids. Random draws
 * checked one by one against the DHT stop finding any long before the grid is full (a 4,096-uid grid with
 * 600 free uids: 40 draws find about 6, and nodes with the same --seed draw the same 40). The
 * declarations already list what is taken: an uid of d >= 2 coordinates is an entry of its prefix's
 * dictionary ("ffn.3." holds 17 -> ffn.3.17, dht_experts.h). So the grid is read a row at a time: a row
 * is the uids that share all but their last coordinate, listed by one get of their prefix. A
 * one-coordinate pattern ("expert.[0:80]") has no listing prefix ("expert." is never stored): its rows
 * are single uids, each read with its own get.
 *
 * Two layers. dht_free_scan is a pure state machine that does no I/O (a test feeds it from a table): it
 * hands out the rows to read, a batch at a time (rows enough for twice the uids still wanted), in a seeded random order (from a random offset with a
 * random stride prime to the row count, so every row comes once and memory stays O(1)); it is told what
 * each row holds and keeps the free uids it sees (each row read from a random offset) until it holds
 * DHT_FREE_SPARE times k of them or has read every row (or DHT_FREE_MAX_ROWS); then it draws k of them
 * at random, so nodes joining at once rarely pick the same uid. In ordered mode (a node with no
 * pattern: expert.0, expert.1, ...) rows come in order and the first k free uids are taken.
 * dht_free_choose drives a scan over the DHT (dht_get_active_successors_latest for prefix rows,
 * dht_get_experts_latest for single uids: every replica asked, so a stale copy hides nothing) and calls
 * back once with the uids chosen.
 *
 * Loop thread only (dht_free_choose); the scan functions are pure and safe anywhere.
 */
#ifndef DMOE_DHT_FREE_H
#define DMOE_DHT_FREE_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_node.h"

/* Rows read per round trip at most: one DHT get each, all in parallel (at most DHT_EXPERTS_MAX_BATCH). */
#define DHT_FREE_BATCH 256
/* Rows read per round trip at least; a round asks for rows enough to hold twice the uids still wanted. */
#define DHT_FREE_MIN_BATCH 16
/* Free uids collected per uid wanted before drawing: room for a random choice among them. */
#define DHT_FREE_SPARE 4
/* Rows read at most before taking what was found: bounds the gets one start may make on a huge grid. */
#define DHT_FREE_MAX_ROWS 65536

typedef struct dht_free_scan dht_free_scan;

/* dht_free_scan_new starts a scan for k free uids of pattern (uid.h's syntax; NULL: ordered over
 * expert.0, expert.1, ...), its order drawn from seed. Returns 0 and sets *out (free it with
 * dht_free_scan_del), DMOE_EINVAL for a bad pattern or k < 1 (message in err, which may be NULL),
 * DMOE_ENOMEM. */
int dht_free_scan_new(const char *pattern, int k, uint64_t seed, dht_free_scan **out, char *err, size_t errlen);

/* dht_free_scan_by_prefix returns 1 when rows are prefixes (a get lists the row's taken last
 * coordinates), 0 when each row is a single uid (a get says whether it is taken). */
int dht_free_scan_by_prefix(const dht_free_scan *s);

/* dht_free_scan_next returns the next batch of keys to read (prefixes or uids, see
 * dht_free_scan_by_prefix): *keys points to n <= DHT_FREE_BATCH strings owned by the scan, valid until
 * the next call. Returns n, 0 when the scan is done (enough free uids, or every row read), or
 * DMOE_ETOOBIG when a key does not fit UID_MAX_LEN. */
int dht_free_scan_next(dht_free_scan *s, const char *const **keys);

/* dht_free_scan_row tells the scan what row i of the last batch holds: for prefix rows, the last
 * coordinates taken[0..n) found in its dictionary (any order; coordinates outside the row are ignored);
 * for single-uid rows, n > 0 when the uid is taken. A row not reported counts as taken (nothing is known
 * of it). Returns 0, DMOE_EINVAL for i outside the batch, DMOE_ENOMEM. */
int dht_free_scan_row(dht_free_scan *s, size_t i, const int64_t *taken, size_t n);

/* dht_free_scan_take draws min(k, free uids found) of the free uids found (ordered mode: the first
 * ones), sets *uids to a NULL-terminated list the caller frees with uid_list_free, and returns their
 * number, or DMOE_ENOMEM. */
int dht_free_scan_take(dht_free_scan *s, char ***uids);

/* dht_free_scan_rows_read returns the rows reported so far; dht_free_scan_found the free uids collected
 * (at most DHT_FREE_SPARE * k). */
uint64_t dht_free_scan_rows_read(const dht_free_scan *s);
size_t dht_free_scan_found(const dht_free_scan *s);

/* dht_free_scan_del frees the scan; NULL is a no-op. */
void dht_free_scan_del(dht_free_scan *s);

/* Completion of dht_free_choose: err 0 and uids[0..n) (a NULL-terminated list the callback owns and
 * frees with uid_list_free; n may be below k when the grid has fewer free uids), or err DMOE_ESHUTDOWN /
 * DMOE_ENOMEM / DMOE_ETOOBIG with uids NULL. rows is the number of rows read. */
typedef void (*dht_free_cb)(void *arg, int err, const char *msg, char **uids, int n, uint64_t rows);

/* dht_free_choose reads d's DHT for k free uids of pattern (as dht_free_scan_new) and calls cb once,
 * later, never inside this call. Returns 0, or DMOE_EINVAL (bad pattern or k, message in err),
 * DMOE_ESHUTDOWN, DMOE_ENOMEM; cb is then never called. */
int dht_free_choose(dht *d, const char *pattern, int k, uint64_t seed, dht_free_cb cb, void *arg, char *err,
                    size_t errlen);

#endif
