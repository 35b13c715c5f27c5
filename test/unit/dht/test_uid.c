/* test_uid.c -- expert uid grammar, split, declaration keys and patterns (actors/uid.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/grid/uid.h"
#include "runtime/rt_err.h"

typedef struct {
    const char *s;
    int uid_ok, prefix_ok;
} uid_case;

/* Expected values worked out from hivemind's UID_PATTERN / PREFIX_PATTERN. */
static const uid_case uid_cases[] = {
    {"ffn.0", 1, 0},
    {"ffn.1.2.3", 1, 0},
    {"ffn_expert.98.76.54", 1, 0},
    {"expert.10", 1, 0},
    {"my-expert.0.0.0", 1, 0},
    {"my expert.7", 1, 0},          /* [^.] admits spaces in the name block */
    {"0.0", 1, 0},                  /* a numeric name is still a name */
    {"e.1234567890123456789012", 1, 0},
    {"ffn.", 0, 1},
    {"ffn.45.", 0, 1},
    {"ffn.0.0.", 0, 1},
    {"ffn", 0, 0},                  /* no coordinate, no trailing dot */
    {"", 0, 0},
    {".", 0, 0},
    {".1", 0, 0},                   /* empty name */
    {".1.", 0, 0},
    {"ffn..1", 0, 0},               /* empty block */
    {"ffn..", 0, 0},
    {"ffn.01", 0, 0},               /* leading zero */
    {"ffn.00", 0, 0},
    {"ffn.1.01.", 0, 0},
    {"ffn.-1", 0, 0},               /* negative coordinate */
    {"ffn.-1.", 0, 0},
    {"ffn.+1", 0, 0},
    {"ffn. 1", 0, 0},               /* space in a coordinate */
    {"ffn.1 ", 0, 0},
    {"ffn.1.a", 0, 0},
    {"ffn.a.", 0, 0},
    {"ffn.1.2..", 0, 0},
    {"ffn.1\n", 0, 0},
};

Test(uid, validity_table, .timeout = 30)
{
    for (size_t i = 0; i < sizeof uid_cases / sizeof uid_cases[0]; i++) {
        cr_expect_eq(uid_is_valid(uid_cases[i].s), uid_cases[i].uid_ok, "uid_is_valid(\"%s\")", uid_cases[i].s);
        cr_expect_eq(uid_is_valid_prefix(uid_cases[i].s), uid_cases[i].prefix_ok, "uid_is_valid_prefix(\"%s\")",
                     uid_cases[i].s);
    }
    cr_expect_eq(uid_is_valid(NULL), 0);
    cr_expect_eq(uid_is_valid_prefix(NULL), 0);
}

Test(uid, split, .timeout = 30)
{
    char prefix[64];
    int64_t c = 0;
    cr_assert_eq(uid_split("ffn.1.2.3", prefix, sizeof prefix, &c), 0);
    cr_expect_str_eq(prefix, "ffn.1.2.");
    cr_expect_eq(c, 3);
    cr_assert_eq(uid_split("ffn.1.2.", prefix, sizeof prefix, &c), 0);   /* a prefix splits too */
    cr_expect_str_eq(prefix, "ffn.1.");
    cr_expect_eq(c, 2);
    cr_assert_eq(uid_split("expert.5.-1", prefix, sizeof prefix, &c), 0);
    cr_expect_str_eq(prefix, "expert.5.");
    cr_expect_eq(c, -1);
    cr_assert_eq(uid_split("e.0", prefix, sizeof prefix, &c), 0);
    cr_expect_str_eq(prefix, "e.");
    cr_expect_eq(c, 0);

    cr_expect_eq(uid_split("ffn", prefix, sizeof prefix, &c), DMOE_EINVAL);
    cr_expect_eq(uid_split("ffn.", prefix, sizeof prefix, &c), DMOE_EINVAL);
    cr_expect_eq(uid_split("ffn.x", prefix, sizeof prefix, &c), DMOE_EINVAL);
    cr_expect_eq(uid_split("ffn.99999999999999999999", prefix, sizeof prefix, &c), DMOE_EINVAL);
    cr_expect_eq(uid_split(NULL, prefix, sizeof prefix, &c), DMOE_EINVAL);
    strcpy(prefix, "untouched");
    c = 42;
    cr_expect_eq(uid_split("ffn.1.2.3", prefix, 4, &c), DMOE_ETOOBIG);
    cr_expect_str_eq(prefix, "untouched");
    cr_expect_eq(c, 42);
    cr_expect_eq(uid_split("ffn.1.2.3", NULL, 0, &c), 0);
    cr_expect_eq(c, 3);
}

Test(uid, declaration_keys, .timeout = 30)
{
    uid_decl_key k[UID_MAX_DECL_KEYS];
    cr_assert_eq(uid_declaration_keys("ffn.1.2.3", k, UID_MAX_DECL_KEYS), 3);
    cr_expect_str_eq(k[0].key, "ffn.1.2.3");
    cr_expect_eq(k[0].has_subkey, 0);
    cr_expect_str_eq(k[1].key, "ffn.1.2.");
    cr_expect_eq(k[1].has_subkey, 1);
    cr_expect_eq(k[1].subkey, 3);
    cr_expect_str_eq(k[2].key, "ffn.1.");
    cr_expect_eq(k[2].has_subkey, 1);
    cr_expect_eq(k[2].subkey, 2);

    cr_assert_eq(uid_declaration_keys("ffn.1.2", k, UID_MAX_DECL_KEYS), 2);
    cr_expect_str_eq(k[0].key, "ffn.1.2");
    cr_expect_str_eq(k[1].key, "ffn.1.");
    cr_expect_eq(k[1].subkey, 2);

    cr_assert_eq(uid_declaration_keys("expert.5", k, UID_MAX_DECL_KEYS), 2);
    cr_expect_str_eq(k[0].key, "expert.5");
    cr_expect_eq(k[0].has_subkey, 0);
    cr_expect_str_eq(k[1].key, "expert.5.");
    cr_expect_eq(k[1].has_subkey, 1);
    cr_expect_eq(k[1].subkey, UID_FLAT_EXPERT);

    cr_expect_eq(uid_declaration_keys("ffn.", k, UID_MAX_DECL_KEYS), DMOE_EINVAL);
    cr_expect_eq(uid_declaration_keys("ffn.01", k, UID_MAX_DECL_KEYS), DMOE_EINVAL);
    cr_expect_eq(uid_declaration_keys("ffn.1.2.3", k, 2), DMOE_ETOOBIG);
    cr_expect_eq(uid_declaration_keys("e.1.99999999999999999999", k, UID_MAX_DECL_KEYS), DMOE_EINVAL);

    /* The longest uid fits in UID_MAX_DECL_KEYS records. */
    char big[UID_MAX_LEN + 2];
    big[0] = 'e';
    size_t n = 1;
    while (n + 2 <= UID_MAX_LEN) { big[n++] = '.'; big[n++] = '7'; }
    big[n] = '\0';
    int cnt = uid_declaration_keys(big, k, UID_MAX_DECL_KEYS);
    cr_assert_gt(cnt, 100);
    cr_expect_str_eq(k[cnt - 1].key, "e.7.");   /* the bare name is never a key */
    big[n++] = '7';
    big[n] = '\0';
    cr_expect_eq(uid_declaration_keys(big, k, UID_MAX_DECL_KEYS), DMOE_ETOOBIG);
}

static int count_uids(char **u)
{
    int n = 0;
    while (u[n]) n++;
    return n;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

Test(uid, pattern_exact_range, .timeout = 30)
{
    char **u = NULL;
    char err[256];
    cr_assert_eq(uid_pattern_generate("expert.[0:5]", 5, 7, NULL, NULL, &u, err, sizeof err), 5, "%s", err);
    cr_assert_eq(count_uids(u), 5);
    qsort(u, 5, sizeof *u, str_cmp);
    const char *want[] = {"expert.0", "expert.1", "expert.2", "expert.3", "expert.4"};
    for (int i = 0; i < 5; i++) cr_expect_str_eq(u[i], want[i]);
    uid_list_free(u);
    uid_list_free(NULL);
}

Test(uid, pattern_random_distinct, .timeout = 30)
{
    for (uint64_t seed = 0; seed < 50; seed++) {
        char **u = NULL;
        cr_assert_eq(uid_pattern_generate("expert.[5:250]", 10, seed, NULL, NULL, &u, NULL, 0), 10);
        qsort(u, 10, sizeof *u, str_cmp);
        for (int i = 0; i < 10; i++) {
            cr_expect(uid_is_valid(u[i]));
            cr_expect_eq(strncmp(u[i], "expert.", 7), 0);
            long v = strtol(u[i] + 7, NULL, 10);
            cr_expect(v >= 5 && v < 250, "%s out of range", u[i]);
            if (i) cr_expect_str_neq(u[i - 1], u[i]);
        }
        uid_list_free(u);
    }
    /* Same seed, same uids; another seed, (almost surely) others. */
    char **a = NULL, **b = NULL, **c = NULL;
    cr_assert_eq(uid_pattern_generate("ffn.[0:1000000]", 8, 99, NULL, NULL, &a, NULL, 0), 8);
    cr_assert_eq(uid_pattern_generate("ffn.[0:1000000]", 8, 99, NULL, NULL, &b, NULL, 0), 8);
    cr_assert_eq(uid_pattern_generate("ffn.[0:1000000]", 8, 100, NULL, NULL, &c, NULL, 0), 8);
    int same = 1, diff = 0;
    for (int i = 0; i < 8; i++) {
        same &= strcmp(a[i], b[i]) == 0;
        diff += strcmp(a[i], c[i]) != 0;
    }
    cr_expect(same);
    cr_expect_gt(diff, 0);
    uid_list_free(a);
    uid_list_free(b);
    uid_list_free(c);
}

Test(uid, pattern_multi_block_and_literal, .timeout = 30)
{
    char **u = NULL;
    char err[256] = "";
    cr_assert_eq(uid_pattern_generate("ffn.[0:4].[0:256]", 1024, 3, NULL, NULL, &u, err, sizeof err), 1024, "%s", err);
    static char seen[4][256];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 1024; i++) {
        int a = -1, b = -1;
        cr_assert(uid_is_valid(u[i]));
        cr_assert_eq(sscanf(u[i], "ffn.%d.%d", &a, &b), 2);
        cr_assert(a >= 0 && a < 4 && b >= 0 && b < 256);
        cr_expect_eq(seen[a][b], 0, "duplicate %s", u[i]);
        seen[a][b] = 1;
    }
    uid_list_free(u);

    cr_assert_eq(uid_pattern_generate("ffn.3.[0:10]", 10, 1, NULL, NULL, &u, err, sizeof err), 10, "%s", err);
    qsort(u, 10, sizeof *u, str_cmp);
    cr_expect_str_eq(u[0], "ffn.3.0");
    cr_expect_str_eq(u[9], "ffn.3.9");
    uid_list_free(u);

    cr_assert_eq(uid_pattern_generate("[7:8].0", 1, 1, NULL, NULL, &u, err, sizeof err), 1, "%s", err);
    cr_expect_str_eq(u[0], "7.0");
    uid_list_free(u);

    cr_assert_eq(uid_pattern_generate(NULL, 3, 1, NULL, NULL, &u, err, sizeof err), 3, "%s", err);
    cr_expect_str_eq(u[0], "expert.0");
    cr_expect_str_eq(u[2], "expert.2");
    uid_list_free(u);
}

static int taken_even(const char *uid, void *arg)
{
    (*(int *)arg)++;
    long v = strtol(strrchr(uid, '.') + 1, NULL, 10);
    return v % 2 == 0;
}

static int taken_all(const char *uid, void *arg)
{
    return 1;
}

Test(uid, pattern_taken, .timeout = 30)
{
    char **u = NULL;
    int calls = 0;
    cr_assert_eq(uid_pattern_generate("e.[0:100]", 20, 5, taken_even, &calls, &u, NULL, 0), 20);
    for (int i = 0; i < 20; i++) cr_expect_eq(strtol(u[i] + 2, NULL, 10) % 2, 1, "%s is taken", u[i]);
    cr_expect_geq(calls, 20);
    uid_list_free(u);

    calls = 0;
    cr_assert_eq(uid_pattern_generate(NULL, 4, 5, taken_even, &calls, &u, NULL, 0), 4);
    cr_expect_str_eq(u[0], "expert.1");
    cr_expect_str_eq(u[3], "expert.7");
    uid_list_free(u);

    /* Everything taken: hivemind gives up after attempts_per_expert * num_experts draws. */
    cr_assert_eq(uid_pattern_generate("e.[0:1000]", 3, 5, taken_all, NULL, &u, NULL, 0), 0);
    cr_expect_null(u[0]);
    uid_list_free(u);
}

Test(uid, pattern_errors, .timeout = 30)
{
    static const char *bad[] = {
        "expert", "expert.", ".[0:5]", "expert.[0:5", "expert.0:5]", "expert.[0-5]", "expert.[5:5]",
        "expert.[6:5]", "expert.[a:5]", "expert.[:5]", "expert.[0:]", "expert.[-1:5]", "expert.x[0:5]",
        "expert.[0:5]x", "expert.01", "expert..[0:5]", "expert.[0:5].", "expert.[0:5:7]", "e.[ 0:5]",
        "e.[0:4000000000].[0:4000000000].[0:4000000000]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char **u = (char **)0x1;
        char err[256] = "";
        cr_expect_eq(uid_pattern_generate(bad[i], 1, 0, NULL, NULL, &u, err, sizeof err), DMOE_EINVAL, "%s", bad[i]);
        cr_expect_neq(err[0], '\0', "no message for %s", bad[i]);
        cr_expect_eq(u, (char **)0x1);
    }
    char **u = NULL;
    char err[256] = "";
    cr_expect_eq(uid_pattern_generate("expert.[0:5]", 6, 0, NULL, NULL, &u, err, sizeof err), DMOE_EINVAL);
    cr_expect_neq(strstr(err, "fewer"), NULL, "%s", err);
    cr_expect_eq(uid_pattern_generate("expert.[0:5]", 0, 0, NULL, NULL, &u, err, sizeof err), DMOE_EINVAL);
    cr_expect_eq(uid_pattern_generate("expert.[0:5]", -3, 0, NULL, NULL, &u, NULL, 0), DMOE_EINVAL);
}

/* A declaration of several uids stores each (key, subkey) once, the entries of one prefix together:
 * e.1.2.3 and e.1.2.5 share "e.1."/2 (stored once, with e.1.2.3) and "e.1.2." (both subkeys, adjacent);
 * a uid given twice adds nothing. */
Test(uid, declaration_plan_merges_prefixes, .timeout = 30)
{
    static const char *const uids[] = {"e.1.2.3", "e.1.2.5", "e.1.7.0", "x.4", "e.1.2.3"};
    static const struct { const char *key; int has_subkey; int64_t subkey; size_t uid; } want[] = {
        {"e.1.2.3", 0, 0, 0}, {"e.1.2.", 1, 3, 0}, {"e.1.2.", 1, 5, 1}, {"e.1.", 1, 2, 0}, {"e.1.", 1, 7, 2},
        {"e.1.2.5", 0, 0, 1}, {"e.1.7.0", 0, 0, 2}, {"e.1.7.", 1, 0, 2}, {"x.4", 0, 0, 3}, {"x.4.", 1, -1, 3},
    };
    uid_decl_entry *plan = NULL;
    int n = uid_declaration_plan(uids, 5, &plan, NULL);
    cr_assert_eq(n, (int)(sizeof want / sizeof want[0]));
    for (int i = 0; i < n; i++) {
        cr_expect_str_eq(plan[i].k.key, want[i].key, "entry %d", i);
        cr_expect_eq(plan[i].k.has_subkey, want[i].has_subkey, "entry %d", i);
        if (want[i].has_subkey) cr_expect_eq(plan[i].k.subkey, want[i].subkey, "entry %d", i);
        cr_expect_eq(plan[i].uid, want[i].uid, "entry %d", i);
    }
    free(plan);

    static const char *const bad_uids[] = {"e.1", "e.01"};
    size_t bad = 99;
    plan = NULL;
    cr_expect_eq(uid_declaration_plan(bad_uids, 2, &plan, &bad), DMOE_EINVAL);
    cr_expect_eq(bad, 1);
    cr_expect_null(plan);
    cr_expect_eq(uid_declaration_plan(bad_uids, 0, &plan, NULL), 0);
    cr_expect_null(plan);
}
