/* test_dht_free.c -- choosing free uids from a pattern (actors/grid/dht_free.h), the scan fed from a table
 * of taken uids as the DHT's prefix dictionaries would list them; and uid.h's pattern shape. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/grid/dht_free.h"
#include "actors/grid/uid.h"
#include "runtime/rt_err.h"

/* The swarm's taken uids: a NULL-terminated list. */
typedef struct {
    const char *const *taken;
} table;

static int is_taken(const table *t, const char *uid)
{
    for (size_t i = 0; t->taken[i]; i++)
        if (strcmp(t->taken[i], uid) == 0) return 1;
    return 0;
}

/* run drives scan s over table t as dht_free_choose drives it over the DHT, then takes the uids. A
 * prefix row reports the last coordinates of the taken uids directly under it. Returns the count. */
static int run(dht_free_scan *s, const table *t, char ***uids)
{
    const char *const *keys;
    int n, rounds = 0;
    while ((n = dht_free_scan_next(s, &keys)) > 0) {
        cr_assert_leq(n, DHT_FREE_BATCH);
        cr_assert_lt(rounds++, 1000, "the scan does not end");
        for (int i = 0; i < n; i++) {
            if (!dht_free_scan_by_prefix(s)) {
                cr_assert_eq(dht_free_scan_row(s, (size_t)i, NULL, is_taken(t, keys[i]) ? 1 : 0), 0);
                continue;
            }
            int64_t coords[4096];
            size_t nc = 0, pl = strlen(keys[i]);
            for (size_t j = 0; t->taken[j]; j++) {
                const char *u = t->taken[j];
                if (strncmp(u, keys[i], pl) != 0 || strchr(u + pl, '.')) continue;
                coords[nc++] = strtoll(u + pl, NULL, 10);
            }
            cr_assert_eq(dht_free_scan_row(s, (size_t)i, coords, nc), 0);
        }
    }
    cr_assert_eq(n, 0);
    return dht_free_scan_take(s, uids);
}

/* grid_taken lists every uid of pattern except the ones in free_uids (NULL-terminated); caller frees. */
static char **grid_taken(const char *pattern, const char *const *free_uids)
{
    uint64_t grid, row;
    int nc;
    cr_assert_eq(uid_pattern_shape(pattern, &grid, &row, &nc, NULL, 0), 0);
    char **out = calloc(grid + 1, sizeof *out);
    size_t n = 0;
    for (uint64_t i = 0; i < grid; i++) {
        char uid[UID_MAX_LEN + 1];
        cr_assert_eq(uid_pattern_at(pattern, i, uid, sizeof uid), 0);
        int skip = 0;
        for (size_t j = 0; free_uids[j] && !skip; j++) skip = strcmp(free_uids[j], uid) == 0;
        if (!skip) out[n++] = strdup(uid);
    }
    return out;
}

static int in_list(const char *const *list, const char *s)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0) return 1;
    return 0;
}

static void expect_distinct_from(char **uids, int n, const char *const *allowed)
{
    for (int i = 0; i < n; i++) {
        cr_expect(in_list(allowed, uids[i]), "%s is not one of the free uids", uids[i]);
        for (int j = 0; j < i; j++) cr_expect_str_neq(uids[i], uids[j]);
    }
    cr_expect_null(uids[n]);
}

Test(dht_free, pattern_shape, .timeout = 30)
{
    uint64_t grid, row;
    int nc;
    char uid[64];
    cr_assert_eq(uid_pattern_shape("ffn.[0:4].[0:8]", &grid, &row, &nc, NULL, 0), 0);
    cr_expect_eq(grid, 32);
    cr_expect_eq(row, 8);
    cr_expect_eq(nc, 2);
    cr_assert_eq(uid_pattern_at("ffn.[0:4].[0:8]", 9, uid, sizeof uid), 0);
    cr_expect_str_eq(uid, "ffn.1.1");
    cr_assert_eq(uid_pattern_at("ffn.[2:4].7.[5:7]", 3, uid, sizeof uid), 0);
    cr_expect_str_eq(uid, "ffn.3.7.6");
    cr_expect_eq(uid_pattern_at("ffn.[0:4].[0:8]", 32, uid, sizeof uid), DMOE_EINVAL);
    cr_assert_eq(uid_pattern_shape("ffn.[0:4].7", &grid, &row, &nc, NULL, 0), 0);
    cr_expect_eq(grid, 4);
    cr_expect_eq(row, 1);
    cr_assert_eq(uid_pattern_shape("expert.[0:80]", &grid, &row, &nc, NULL, 0), 0);
    cr_expect_eq(nc, 1);
    cr_expect_eq(uid_pattern_shape("ffn.[4:4]", &grid, &row, &nc, NULL, 0), DMOE_EINVAL);
    dht_free_scan *s = NULL;
    char err[200] = "";
    cr_expect_eq(dht_free_scan_new("ffn", 1, 0, &s, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, "no coordinate block"), "%s", err);
    cr_expect_eq(dht_free_scan_new("ffn.[0:4]", 0, 0, &s, NULL, 0), DMOE_EINVAL);
    cr_expect_null(s);
}

/* The case: a 64 x 64 grid nearly full (3,500 of 4,096 taken in the field; here all but ten). Every
 * request for up to ten experts is met from the ten, and only an eleventh is short. */
Test(dht_free, nearly_full_grid, .timeout = 60)
{
    static const char *const pattern = "ffn.[0:64].[0:64]";
    static const char *const free_uids[] = {"ffn.0.0",   "ffn.0.63", "ffn.5.17", "ffn.17.5",  "ffn.31.31",
                                            "ffn.32.0",  "ffn.40.9", "ffn.50.50", "ffn.63.0", "ffn.63.63", NULL};
    char **taken = grid_taken(pattern, free_uids);
    table t = {(const char *const *)taken};
    for (int k = 1; k <= 11; k++) {
        for (uint64_t seed = 0; seed < 3; seed++) {
            dht_free_scan *s = NULL;
            cr_assert_eq(dht_free_scan_new(pattern, k, seed, &s, NULL, 0), 0);
            cr_expect_eq(dht_free_scan_by_prefix(s), 1);
            char **uids = NULL;
            int n = run(s, &t, &uids);
            cr_expect_eq(n, k <= 10 ? k : 10, "k %d seed %llu: %d uids", k, (unsigned long long)seed, n);
            expect_distinct_from(uids, n, free_uids);
            if (k * DHT_FREE_SPARE > 10)   /* wanting more than there is, the whole grid is read */
                cr_expect_eq(dht_free_scan_rows_read(s), 64);
            uid_list_free(uids);
            dht_free_scan_del(s);
        }
    }
    uid_list_free(taken);
}

/* An empty grid: the scan stops at DHT_FREE_SPARE * k free uids, after a few rows, and the seed decides
 * which uids come back (nodes joining at once choose differently). */
Test(dht_free, empty_grid_stops_early, .timeout = 30)
{
    static const char *const none[] = {NULL};
    table t = {none};
    char *first[2] = {NULL, NULL};
    for (uint64_t seed = 0; seed < 2; seed++) {
        dht_free_scan *s = NULL;
        cr_assert_eq(dht_free_scan_new("ffn.[0:64].[0:64]", 4, seed, &s, NULL, 0), 0);
        char **uids = NULL;
        cr_assert_eq(run(s, &t, &uids), 4);
        cr_expect_eq(dht_free_scan_found(s), 4 * DHT_FREE_SPARE);
        cr_expect_leq(dht_free_scan_rows_read(s), DHT_FREE_BATCH);
        for (int i = 0; i < 4; i++) cr_expect(uid_is_valid(uids[i]));
        first[seed] = strdup(uids[0]);
        uid_list_free(uids);
        dht_free_scan_del(s);
    }
    dht_free_scan *s = NULL;   /* the same seed chooses the same uids */
    cr_assert_eq(dht_free_scan_new("ffn.[0:64].[0:64]", 4, 0, &s, NULL, 0), 0);
    char **again = NULL;
    cr_assert_eq(run(s, &t, &again), 4);
    cr_expect_str_eq(again[0], first[0]);
    uid_list_free(again);
    dht_free_scan_del(s);
    free(first[0]);
    free(first[1]);
}

/* A one-coordinate pattern has no listing prefix: each row is one uid. 64 of 80 taken (the swarm test's
 * grid): the other 16 are found, and a 17th is short. */
Test(dht_free, one_coordinate_grid, .timeout = 30)
{
    static const char *const pattern = "sw.[0:80]";
    const char *free_uids[17];
    char names[16][16];
    for (int i = 0; i < 16; i++) {
        snprintf(names[i], sizeof names[i], "sw.%d", i * 5);
        free_uids[i] = names[i];
    }
    free_uids[16] = NULL;
    char **taken = grid_taken(pattern, free_uids);
    table t = {(const char *const *)taken};
    for (int k = 1; k <= 17; k += 8) {
        dht_free_scan *s = NULL;
        cr_assert_eq(dht_free_scan_new(pattern, k, 7, &s, NULL, 0), 0);
        cr_expect_eq(dht_free_scan_by_prefix(s), 0);
        char **uids = NULL;
        int n = run(s, &t, &uids);
        cr_expect_eq(n, k <= 16 ? k : 16);
        expect_distinct_from(uids, n, free_uids);
        uid_list_free(uids);
        dht_free_scan_del(s);
    }
    uid_list_free(taken);
}

/* Three coordinates: rows are the two-coordinate prefixes; the one free uid is found. A fixed last
 * coordinate makes rows of one uid, still read through their prefix. */
Test(dht_free, deeper_grids, .timeout = 30)
{
    static const char *const free3[] = {"e.1.2.3", NULL};
    char **taken = grid_taken("e.[0:2].[0:3].[0:4]", free3);
    table t = {(const char *const *)taken};
    dht_free_scan *s = NULL;
    cr_assert_eq(dht_free_scan_new("e.[0:2].[0:3].[0:4]", 2, 1, &s, NULL, 0), 0);
    char **uids = NULL;
    cr_assert_eq(run(s, &t, &uids), 1);
    cr_expect_str_eq(uids[0], "e.1.2.3");
    cr_expect_eq(dht_free_scan_rows_read(s), 6);
    uid_list_free(uids);
    dht_free_scan_del(s);
    uid_list_free(taken);

    static const char *const free_fixed[] = {"f.2.7", NULL};
    taken = grid_taken("f.[0:4].7", free_fixed);
    t.taken = (const char *const *)taken;
    cr_assert_eq(dht_free_scan_new("f.[0:4].7", 1, 3, &s, NULL, 0), 0);
    cr_expect_eq(dht_free_scan_by_prefix(s), 1);
    cr_assert_eq(run(s, &t, &uids), 1);
    cr_expect_str_eq(uids[0], "f.2.7");
    uid_list_free(uids);
    dht_free_scan_del(s);
    uid_list_free(taken);
}

/* No pattern: hivemind's expert.0, expert.1, ... in order, the first free ones. */
Test(dht_free, ordered_without_pattern, .timeout = 30)
{
    static const char *const taken[] = {"expert.0", "expert.1", "expert.2", "expert.4", NULL};
    table t = {taken};
    dht_free_scan *s = NULL;
    cr_assert_eq(dht_free_scan_new(NULL, 3, 99, &s, NULL, 0), 0);
    char **uids = NULL;
    cr_assert_eq(run(s, &t, &uids), 3);
    cr_expect_str_eq(uids[0], "expert.3");
    cr_expect_str_eq(uids[1], "expert.5");
    cr_expect_str_eq(uids[2], "expert.6");
    uid_list_free(uids);
    dht_free_scan_del(s);
}

/* A row nobody reported (its get never answered in the table) counts as taken; a report for a row outside
 * the batch is refused; a repeated report changes nothing. */
Test(dht_free, unreported_rows, .timeout = 30)
{
    dht_free_scan *s = NULL;
    cr_assert_eq(dht_free_scan_new("g.[0:3]", 3, 0, &s, NULL, 0), 0);
    const char *const *keys;
    cr_assert_eq(dht_free_scan_next(s, &keys), 3);
    cr_expect_eq(dht_free_scan_row(s, 3, NULL, 0), DMOE_EINVAL);
    cr_expect_eq(dht_free_scan_row(s, 0, NULL, 0), 0);
    cr_expect_eq(dht_free_scan_row(s, 0, NULL, 0), 0);
    char first[16];
    snprintf(first, sizeof first, "%s", keys[0]);
    cr_expect_eq(dht_free_scan_next(s, &keys), 0);
    char **uids = NULL;
    cr_assert_eq(dht_free_scan_take(s, &uids), 1);
    cr_expect_str_eq(uids[0], first);
    cr_expect_eq(dht_free_scan_rows_read(s), 1);
    uid_list_free(uids);
    dht_free_scan_del(s);
    dht_free_scan_del(NULL);
}
