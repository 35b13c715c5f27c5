/* test_rt_map.c -- the one hash map against a plain array model: random puts, gets and deletes with
 * short (inline) and long (by pointer) keys, iteration with deletion, growth, clear. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_map.h"

#define NKEYS 600

typedef struct { char key[40]; size_t len; int present; int val; } model;

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static void make_keys(model *m)
{
    for (int i = 0; i < NKEYS; i++) {
        /* a third 8-byte ids, a third 16-byte ids, a third long strings (held by pointer) */
        if (i % 3 == 0) { uint64_t k = (uint64_t)i * 0x9E3779B97F4A7C15ull; memcpy(m[i].key, &k, 8); m[i].len = 8; }
        else if (i % 3 == 1) { for (int j = 0; j < 16; j++) m[i].key[j] = (char)(i * 7 + j); m[i].len = 16; }
        else m[i].len = (size_t)snprintf(m[i].key, sizeof m[i].key, "expert.grid.%d.%d.longer", i, i * 3);
    }
}

static void check(const rt_map *map, model *m)
{
    size_t n = 0;
    for (int i = 0; i < NKEYS; i++) {
        void *v = rt_map_get(map, m[i].key, m[i].len);
        if (m[i].present) { cr_assert_eq(v, &m[i].val, "key %d lost", i); n++; }
        else cr_assert_null(v, "key %d should be gone", i);
    }
    cr_assert_eq(rt_map_count(map), n);
}

Test(rt_map, random_ops_match_a_model)
{
    static model m[NKEYS];
    make_keys(m);
    rt_map map = RT_MAP_INIT;
    for (int round = 0; round < 20000; round++) {
        int i = (int)(next() % NKEYS);
        if (next() % 3) {
            cr_assert_eq(rt_map_put(&map, m[i].key, m[i].len, &m[i].val), 0);
            m[i].present = 1;
        } else {
            void *v = rt_map_del(&map, m[i].key, m[i].len);
            cr_assert_eq(v, m[i].present ? &m[i].val : NULL);
            m[i].present = 0;
        }
        if (round % 997 == 0) check(&map, m);
    }
    check(&map, m);
    rt_map_clear(&map);
    cr_assert_eq(rt_map_count(&map), 0);
    cr_assert_null(rt_map_get(&map, m[0].key, m[0].len));
}

Test(rt_map, put_replaces_and_u64_keys)
{
    rt_map map = RT_MAP_INIT;
    int a = 1, b = 2;
    cr_assert_eq(rt_map_put_u64(&map, 42, &a), 0);
    cr_assert_eq(rt_map_put_u64(&map, 42, &b), 0);
    cr_assert_eq(rt_map_count(&map), 1);
    cr_assert_eq(rt_map_get_u64(&map, 42), &b);
    cr_assert_null(rt_map_get_u64(&map, 43));
    cr_assert_eq(rt_map_del_u64(&map, 42), &b);
    cr_assert_null(rt_map_del_u64(&map, 42));
    cr_assert_eq(rt_map_put(&map, "", 0, &a), 0, "the empty key is a key");
    cr_assert_eq(rt_map_get(&map, "", 0), &a);
    rt_map_clear(&map);
}

/* Every entry is visited exactly once while every other visited entry is deleted; the survivors are
 * exactly the ones kept. Repeated over many fill levels so that probe runs wrap around the array. */
Test(rt_map, iteration_with_deletion_visits_each_entry_once)
{
    static model m[NKEYS];
    make_keys(m);
    for (int fill = 1; fill < NKEYS; fill += 37) {
        rt_map map = RT_MAP_INIT;
        for (int i = 0; i < fill; i++) {
            m[i].val = 0;
            cr_assert_eq(rt_map_put(&map, m[i].key, m[i].len, &m[i].val), 0);
        }
        rt_map_iter it = RT_MAP_ITER_INIT;
        const void *k;
        size_t len;
        int *v, seen = 0;
        while ((v = rt_map_next(&map, &it, &k, &len))) {
            (*v)++;
            model *e = (model *)((char *)v - offsetof(model, val));
            cr_assert_eq(len, e->len);
            cr_assert_eq(memcmp(k, e->key, len), 0);
            if (seen++ % 2 == 0) rt_map_del_at(&map, &it);
        }
        cr_assert_eq(seen, fill);
        for (int i = 0; i < fill; i++) cr_assert_eq(m[i].val, 1, "fill %d: entry %d visited %d times", fill, i, m[i].val);
        cr_assert_eq(rt_map_count(&map), (size_t)(fill / 2));
        rt_map_clear(&map);
    }
}
