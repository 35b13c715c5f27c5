/* test_dht_storage.c -- expirations, newest-wins, dictionaries, bounds (actors/dht_storage.c). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "actors/dht/dht_storage.h"
#include "runtime/rt_err.h"

static dht_id key_n(int n)
{
    dht_id k;
    dht_id_from_int(&k, n);
    return k;
}

static int put(dht_storage *s, int key, const char *val, double exp, double now)
{
    dht_id k = key_n(key);
    return dht_storage_store(s, &k, NULL, 0, val, strlen(val), exp, now);
}

static int put_sub(dht_storage *s, int key, const char *sub, const char *val, double exp, double now)
{
    dht_id k = key_n(key);
    return dht_storage_store(s, &k, sub, strlen(sub), val, strlen(val), exp, now);
}

/* get_plain returns the plain value at key as a static string, or NULL. */
static const char *get_plain(dht_storage *s, int key, double now, double *exp)
{
    static char buf[256];
    dht_id k = key_n(key);
    dht_stored st;
    if (dht_storage_get(s, &k, now, &st) < 0 || st.is_dict) return NULL;
    snprintf(buf, sizeof buf, "%.*s", (int)st.vlen, (const char *)st.value);
    if (exp) *exp = st.expiration;
    return buf;
}

/* get_sub returns the value of subkey in key's dictionary, or NULL. */
static const char *get_sub(dht_storage *s, int key, const char *sub, double now, size_t *nsubs, double *exp)
{
    static char buf[256];
    dht_id k = key_n(key);
    dht_stored st;
    if (dht_storage_get(s, &k, now, &st) < 0 || !st.is_dict) return NULL;
    if (nsubs) *nsubs = st.nsubs;
    if (exp) *exp = st.expiration;
    for (size_t i = 0; i < st.nsubs; i++) {
        if (st.subs[i].sklen == strlen(sub) && memcmp(st.subs[i].subkey, sub, strlen(sub)) == 0) {
            snprintf(buf, sizeof buf, "%.*s", (int)st.subs[i].vlen, (const char *)st.subs[i].value);
            return buf;
        }
    }
    return NULL;
}

Test(dht_storage, expiry, .timeout = 30)
{
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, NULL), 0);
    cr_expect_eq(put(s, 1, "past", 9.0, 10.0), 0, "an expiration in the past is refused");
    cr_expect_eq(put(s, 2, "now", 10.0, 10.0), 1, "expiration == now is accepted, as hivemind");
    cr_expect_eq(put(s, 3, "v", 20.0, 10.0), 1);
    double exp = 0;
    cr_expect_str_eq(get_plain(s, 3, 19.99, &exp), "v");
    cr_expect_eq(exp, 20.0);
    cr_expect_str_eq(get_plain(s, 3, 20.0, NULL), "v");
    cr_expect_null(get_plain(s, 3, 20.01, NULL), "gone once expired");
    cr_expect_eq(dht_storage_count(s), 1, "the access removed key 3; key 2 waits for a sweep");
    cr_expect_eq(dht_storage_expire(s, 11.0), 1);
    cr_expect_eq(dht_storage_count(s), 0);
    cr_expect_eq(dht_storage_bytes(s), 0);
    cr_expect(isinf(dht_storage_next_expiration(s)));
    dht_id k = key_n(3);
    dht_stored st;
    cr_expect_eq(dht_storage_get(s, &k, 0, &st), DMOE_ENOTFOUND);
    cr_expect_eq(dht_storage_remove(s, &k), DMOE_ENOTFOUND);
    dht_storage_free(s);
    dht_storage_free(NULL);
}

Test(dht_storage, later_expiration_wins, .timeout = 30)
{
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, NULL), 0);
    cr_expect_eq(put(s, 1, "v1", 100.0, 0.0), 1);
    cr_expect_eq(put(s, 1, "v2", 50.0, 0.0), 0);
    cr_expect_eq(put(s, 1, "v3", 100.0, 0.0), 0, "an equal expiration does not replace");
    cr_expect_str_eq(get_plain(s, 1, 1.0, NULL), "v1");
    cr_expect_eq(put(s, 1, "v4-longer", 150.0, 1.0), 1);
    double exp;
    cr_expect_str_eq(get_plain(s, 1, 1.0, &exp), "v4-longer");
    cr_expect_eq(exp, 150.0);
    cr_expect_eq(dht_storage_bytes(s), 9);
    /* Once the stored value expired, anything current is accepted again. */
    cr_expect_eq(put(s, 1, "v5", 160.0, 155.0), 1);
    cr_expect_eq(put(s, 2, "x", 30.0, 0.0), 1);
    cr_expect_eq(dht_storage_next_expiration(s), 30.0);
    dht_id k = key_n(2);
    cr_expect_eq(dht_storage_remove(s, &k), 0);
    cr_expect_eq(dht_storage_next_expiration(s), 160.0);
    dht_storage_free(s);
}

Test(dht_storage, subkeys_merge, .timeout = 30)
{
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, NULL), 0);
    cr_expect_eq(put_sub(s, 7, "a", "A1", 10.0, 0.0), 1);
    cr_expect_eq(put_sub(s, 7, "b", "B1", 20.0, 0.0), 1);
    size_t n = 0;
    double exp = 0;
    cr_expect_str_eq(get_sub(s, 7, "a", 0.0, &n, &exp), "A1");
    cr_expect_eq(n, 2);
    cr_expect_eq(exp, 20.0, "a dictionary expires with its latest subkey");
    cr_expect_eq(put_sub(s, 7, "a", "A2", 5.0, 0.0), 0, "an older subkey value is refused");
    cr_expect_eq(put_sub(s, 7, "a", "A3", 10.0, 0.0), 0);
    cr_expect_eq(put_sub(s, 7, "a", "A4", 15.0, 0.0), 1);
    cr_expect_str_eq(get_sub(s, 7, "a", 0.0, NULL, NULL), "A4");
    cr_expect_eq(put_sub(s, 7, "c", "C1", 30.0, 0.0), 1);
    cr_expect_str_eq(get_sub(s, 7, "c", 0.0, &n, &exp), "C1");
    cr_expect_eq(exp, 30.0);
    cr_expect_eq(dht_storage_next_expiration(s), 30.0);
    /* Subkeys expire one by one. */
    cr_expect_null(get_sub(s, 7, "a", 16.0, &n, NULL));
    cr_expect_eq(n, 2);
    cr_expect_str_eq(get_sub(s, 7, "b", 16.0, NULL, NULL), "B1");
    cr_expect_eq(dht_storage_bytes(s), 6, "b and c remain, 1 + 2 bytes each");
    cr_expect_null(get_sub(s, 7, "c", 31.0, NULL, NULL));
    cr_expect_eq(dht_storage_count(s), 0);
    cr_expect_eq(dht_storage_bytes(s), 0);

    /* Subkeys are opaque bytes: msgpack int 1 and str "1" differ. */
    dht_id k = key_n(8);
    cr_expect_eq(dht_storage_store(s, &k, "\x01", 1, "int", 3, 10.0, 0.0), 1);
    cr_expect_eq(dht_storage_store(s, &k, "\xa1" "1", 2, "str", 3, 10.0, 0.0), 1);
    cr_expect_eq(dht_storage_store(s, &k, "", 0, "empty", 5, 10.0, 0.0), 1);
    cr_expect_str_eq(get_sub(s, 8, "\x01", 0.0, &n, NULL), "int");
    cr_expect_eq(n, 3);
    dht_storage_free(s);
}

Test(dht_storage, plain_and_dict_interplay, .timeout = 30)
{
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, NULL), 0);
    cr_expect_eq(put(s, 1, "plain", 10.0, 0.0), 1);
    cr_expect_eq(put_sub(s, 1, "a", "A", 5.0, 0.0), 0, "a subkey does not override a newer plain value");
    cr_expect_eq(put_sub(s, 1, "a", "A", 10.0, 0.0), 0);
    cr_expect_str_eq(get_plain(s, 1, 0.0, NULL), "plain");
    cr_expect_eq(put_sub(s, 1, "a", "A", 11.0, 0.0), 1, "a newer subkey turns the key into a dictionary");
    cr_expect_null(get_plain(s, 1, 0.0, NULL));
    size_t n;
    cr_expect_str_eq(get_sub(s, 1, "a", 0.0, &n, NULL), "A");
    cr_expect_eq(n, 1);
    cr_expect_eq(dht_storage_bytes(s), 2);
    cr_expect_eq(put(s, 1, "p2", 11.0, 0.0), 0, "a plain value must outlive the whole dictionary");
    cr_expect_eq(put_sub(s, 1, "b", "B", 8.0, 0.0), 1, "older subkeys still join the dictionary");
    cr_expect_eq(put(s, 1, "p3", 12.0, 0.0), 1);
    cr_expect_str_eq(get_plain(s, 1, 0.0, NULL), "p3");
    cr_expect_eq(dht_storage_bytes(s), 2);
    dht_storage_free(s);
}

Test(dht_storage, bounds_sizes_and_horizon, .timeout = 30)
{
    dht_storage_limits lim = {.max_value_bytes = 8, .max_subkey_bytes = 4, .max_horizon = 100.0};
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, &lim), 0);
    cr_expect_eq(put(s, 1, "12345678", 10.0, 0.0), 1);
    cr_expect_eq(put(s, 2, "123456789", 10.0, 0.0), DMOE_ETOOBIG);
    cr_expect_eq(put_sub(s, 3, "1234", "v", 10.0, 0.0), 1);
    cr_expect_eq(put_sub(s, 3, "12345", "v", 10.0, 0.0), DMOE_ETOOBIG);
    cr_expect_eq(put(s, 4, "v", 100.0, 0.0), 1);
    cr_expect_eq(put(s, 5, "v", 100.5, 0.0), DMOE_EINVAL, "beyond the horizon");
    cr_expect_eq(put(s, 6, "v", NAN, 0.0), DMOE_EINVAL);
    cr_expect_eq(dht_storage_count(s), 3);
    dht_storage_free(s);
}

Test(dht_storage, bounds_subkeys_evict_nearest, .timeout = 30)
{
    dht_storage_limits lim = {.max_subkeys = 3};
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, &lim), 0);
    cr_expect_eq(put_sub(s, 1, "a", "1", 10.0, 0.0), 1);
    cr_expect_eq(put_sub(s, 1, "b", "2", 20.0, 0.0), 1);
    cr_expect_eq(put_sub(s, 1, "c", "3", 30.0, 0.0), 1);
    cr_expect_eq(put_sub(s, 1, "d", "4", 5.0, 0.0), 0, "the newcomer expires first: refused");
    cr_expect_eq(put_sub(s, 1, "d", "4", 25.0, 0.0), 1, "evicts a, the nearest to expire");
    size_t n;
    cr_expect_null(get_sub(s, 1, "a", 0.0, &n, NULL));
    cr_expect_eq(n, 3);
    cr_expect_str_eq(get_sub(s, 1, "d", 0.0, NULL, NULL), "4");
    cr_expect_eq(put_sub(s, 1, "b", "2b", 22.0, 0.0), 1, "updating an existing subkey needs no room");
    cr_expect_eq(dht_storage_bytes(s), 3 * 1 + 1 + 2 + 1);
    dht_storage_free(s);
}

Test(dht_storage, bounds_keys_and_bytes_evict_nearest, .timeout = 30)
{
    dht_storage_limits lim = {.max_keys = 3};
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, &lim), 0);
    cr_expect_eq(put(s, 1, "a", 10.0, 0.0), 1);
    cr_expect_eq(put(s, 2, "b", 20.0, 0.0), 1);
    cr_expect_eq(put(s, 3, "c", 30.0, 0.0), 1);
    cr_expect_eq(put(s, 4, "d", 5.0, 0.0), 0);
    cr_expect_eq(dht_storage_count(s), 3);
    cr_expect_eq(put(s, 4, "d", 25.0, 0.0), 1);
    cr_expect_null(get_plain(s, 1, 0.0, NULL));
    cr_expect_str_eq(get_plain(s, 4, 0.0, NULL), "d");
    cr_expect_eq(put(s, 2, "b2", 40.0, 0.0), 1, "replacing a key needs no new slot");
    cr_expect_eq(dht_storage_count(s), 3);
    cr_expect_eq(put_sub(s, 3, "x", "y", 35.0, 0.0), 1);
    dht_storage_free(s);

    dht_storage_limits lb = {.max_bytes = 100};
    cr_assert_eq(dht_storage_new(&s, &lb), 0);
    char v40[41], v60[61], v101[102];
    memset(v40, 'x', 40); v40[40] = 0;
    memset(v60, 'y', 60); v60[60] = 0;
    memset(v101, 'z', 101); v101[101] = 0;
    cr_expect_eq(put(s, 1, v40, 10.0, 0.0), 1);
    cr_expect_eq(put(s, 2, v40, 20.0, 0.0), 1);
    cr_expect_eq(put(s, 3, v40, 30.0, 0.0), 1, "evicts key 1");
    cr_expect_eq(dht_storage_bytes(s), 80);
    cr_expect_null(get_plain(s, 1, 0.0, NULL));
    cr_expect_eq(put(s, 4, v60, 15.0, 0.0), 0, "would need to outlive key 2 to evict it");
    cr_expect_eq(put(s, 4, v60, 50.0, 0.0), 1, "evicts key 2 only: 40 + 60 fits");
    cr_expect_eq(dht_storage_count(s), 2);
    cr_expect_eq(dht_storage_bytes(s), 100);
    cr_expect_null(get_plain(s, 2, 0.0, NULL));
    cr_expect_eq(put(s, 5, v101, 60.0, 0.0), 0, "bigger than the whole storage");
    cr_expect_eq(dht_storage_count(s), 0, "as hivemind's maxsize, the earlier entries went first");
    /* A dictionary growing past the budget evicts other keys, never itself. */
    cr_expect_eq(put(s, 6, v40, 10.0, 0.0), 1);
    cr_expect_eq(put_sub(s, 7, "k1", v40, 5.0, 0.0), 1);
    cr_expect_eq(put_sub(s, 7, "k2", v40, 20.0, 0.0), 1, "evicts key 6 although key 7 expires first");
    cr_expect_null(get_plain(s, 6, 0.0, NULL));
    cr_expect_eq(dht_storage_bytes(s), 2 * 42);
    dht_storage_free(s);
}

/* A naive model: 16 keys, each none, plain (value v) or a dict of 4 subkeys, checked after every op. */
typedef struct { int kind; double exp; int v; int has[4]; double sexp[4]; int sv[4]; } model_key;

Test(dht_storage, random_ops_match_model, .timeout = 30)
{
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, NULL), 0);
    model_key m[16];
    memset(m, 0, sizeof m);
    uint64_t rng = 12345;
    double now = 0;
    for (int step = 0; step < 20000; step++) {
        dht_id r;
        dht_id_random(&r, &rng);
        int key = r.b[0] & 15, sub = r.b[1] & 3, plain = r.b[2] & 1, val = r.b[3];
        double exp = now + (r.b[4] % 40) - 5;
        if ((r.b[5] & 7) == 0) now += 1;
        if ((r.b[6] & 63) == 0) dht_storage_expire(s, now);
        model_key *mk = &m[key];
        /* expire the model entry as the storage would see it */
        if (mk->kind && mk->exp < now) mk->kind = 0;
        if (mk->kind == 2)
            for (int j = 0; j < 4; j++) if (mk->has[j] && mk->sexp[j] < now) mk->has[j] = 0;
        int want;
        if (exp < now) want = 0;
        else if (plain) {
            want = !mk->kind || mk->exp < exp;
            if (want) { mk->kind = 1; mk->exp = exp; mk->v = val; }
        } else if (!mk->kind || (mk->kind == 1 && mk->exp < exp)) {
            want = 1;
            memset(mk, 0, sizeof *mk);
            mk->kind = 2; mk->exp = exp; mk->has[sub] = 1; mk->sexp[sub] = exp; mk->sv[sub] = val;
        } else if (mk->kind == 2) {
            want = !mk->has[sub] || mk->sexp[sub] < exp;
            if (want) {
                mk->has[sub] = 1; mk->sexp[sub] = exp; mk->sv[sub] = val;
                if (exp > mk->exp) mk->exp = exp;
            }
        } else want = 0;
        dht_id k = key_n(key);
        unsigned char vb = (unsigned char)val, sb = (unsigned char)sub;
        int got = dht_storage_store(s, &k, plain ? NULL : &sb, 1, &vb, 1, exp, now);
        cr_assert_eq(got, want, "step %d", step);
        for (int q = 0; q < 16; q++) {
            model_key *mq = &m[q];
            if (mq->kind && mq->exp < now) mq->kind = 0;
            dht_id kq = key_n(q);
            dht_stored st;
            int rc = dht_storage_get(s, &kq, now, &st);
            cr_assert_eq(rc == 0, mq->kind != 0, "step %d key %d", step, q);
            if (rc) continue;
            cr_assert_eq(st.is_dict, mq->kind == 2);
            cr_assert_eq(st.expiration, mq->exp);
            if (!st.is_dict) {
                cr_assert_eq(st.vlen, 1);
                cr_assert_eq(st.value[0], (unsigned char)mq->v);
                continue;
            }
            size_t live = 0;
            for (int j = 0; j < 4; j++) live += mq->has[j] && !(mq->sexp[j] < now);
            cr_assert_eq(st.nsubs, live, "step %d key %d", step, q);
            for (size_t j = 0; j < st.nsubs; j++) {
                int sj = st.subs[j].subkey[0];
                cr_assert(mq->has[sj]);
                cr_assert_eq(st.subs[j].value[0], (unsigned char)mq->sv[sj]);
                cr_assert_eq(st.subs[j].expiration, mq->sexp[sj]);
            }
        }
    }
    dht_storage_free(s);
}

Test(dht_storage, one_owner_fills_only_its_share_and_evicts_nobody)
{
    dht_storage_limits lim;
    memset(&lim, 0, sizeof lim);
    lim.max_keys = 64;
    lim.max_bytes = 4096;
    lim.owner_share = 4;                          /* 16 entries, 1024 bytes per owner */
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, &lim), 0);
    uint8_t v[100];
    memset(v, 7, sizeof v);
    for (int i = 0; i < 8; i++) {                 /* others first: short-lived, the first to evict */
        dht_id k = key_n(i);
        cr_assert_eq(dht_storage_store_from(s, i % 2 ? "10.0.0.1" : "10.0.0.2", &k, NULL, 0, v, 10, 50.0, 0.0), 1);
    }
    int stored = 0;
    for (int i = 100; i < 200; i++) {             /* the flood lives longer: today it would evict them */
        dht_id k = key_n(i);
        stored += dht_storage_store_from(s, "10.6.6.6", &k, NULL, 0, v, 10, 900.0, 0.0) == 1;
    }
    cr_expect_eq(stored, 16);
    size_t items, bytes;
    dht_storage_owner_usage(s, "10.6.6.6", &items, &bytes);
    cr_expect_eq(items, 16);
    cr_expect_eq(bytes, 160);
    for (int i = 0; i < 8; i++) {
        dht_id k = key_n(i);
        dht_stored st;
        cr_expect_eq(dht_storage_get(s, &k, 1.0, &st), 0, "key %d was evicted", i);
    }
    /* Replacing its own value is no new entry; a dictionary entry is one; bytes count too. */
    dht_id k100 = key_n(100), kd = key_n(300);
    cr_expect_eq(dht_storage_store_from(s, "10.6.6.6", &k100, NULL, 0, v, 12, 901.0, 0.0), 1);
    cr_expect_eq(dht_storage_store_from(s, "10.6.6.6", &kd, "a", 1, v, 1, 901.0, 0.0), 0);
    cr_expect_eq(dht_storage_store_from(s, "10.0.0.9", &kd, "a", 1, v, 100, 901.0, 0.0), 1);
    for (int i = 0; i < 10; i++) {
        char sk[2] = { (char)('b' + i), 0 };
        cr_expect_eq(dht_storage_store_from(s, "10.0.0.9", &kd, sk, 1, v, 100, 901.0, 0.0), i < 9 ? 1 : 0,
                     "subkey %d", i);             /* 10 x 101 bytes > 1024 */
    }
    dht_storage_owner_usage(s, "10.0.0.9", &items, &bytes);
    cr_expect_eq(items, 10);
    cr_expect_eq(bytes, 1010);
    /* A newer value by another owner replaces the flood's entry: the flood's account shrinks. */
    cr_expect_eq(dht_storage_store_from(s, "10.0.0.1", &k100, NULL, 0, v, 10, 902.0, 0.0), 1);
    dht_storage_owner_usage(s, "10.6.6.6", &items, &bytes);
    cr_expect_eq(items, 15);
    cr_expect_eq(bytes, 150);
    /* Everything expired: every account is empty. */
    dht_storage_expire(s, 1000.0);
    dht_storage_owner_usage(s, "10.6.6.6", &items, &bytes);
    cr_expect_eq(items + bytes, 0);
    dht_storage_owner_usage(s, "10.0.0.9", &items, &bytes);
    cr_expect_eq(items + bytes, 0);
    cr_expect_eq(dht_storage_store_from(s, "10.6.6.6", &k100, NULL, 0, v, 10, 2000.0, 1000.0), 1);
    dht_storage_free(s);
}

/* One expiry pass drops at most the budget, the earliest expired first, never a live key; repeated
 * passes drop every expired key. */
Test(dht_storage, expiry_is_bounded_per_call)
{
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, NULL), 0);
    const int n = 5 * DHT_EXPIRE_BUDGET + 7, live = 100;
    for (int i = 0; i < n; i++) cr_assert_eq(put(s, i, "v", 10.0 + i * 1e-3, 0.0), 1);
    for (int i = 0; i < live; i++) cr_assert_eq(put(s, n + i, "v", 100.0, 0.0), 1);
    size_t left = (size_t)n, passes = 0;
    while (left > 0) {
        cr_assert(passes < 6, "more passes than ceil(n / budget)");
        size_t dropped = dht_storage_expire(s, 50.0);
        cr_assert_leq(dropped, DHT_EXPIRE_BUDGET);
        cr_assert_eq(dropped, left < DHT_EXPIRE_BUDGET ? left : DHT_EXPIRE_BUDGET, "pass %zu", passes);
        left -= dropped;
        passes++;
        cr_assert_eq(dht_storage_count(s), left + live);
        if (left) cr_assert(dht_storage_next_expiration(s) < 50.0, "expired keys left: the next expiration says so");
    }
    cr_expect_eq(passes, 6);
    cr_expect_eq(dht_storage_expire(s, 50.0), 0);
    cr_expect_eq(dht_storage_next_expiration(s), 100.0);
    dht_storage_free(s);

    /* a budget in the limits */
    dht_storage_limits lim = {.expire_budget = 3};
    cr_assert_eq(dht_storage_new(&s, &lim), 0);
    for (int i = 0; i < 10; i++) cr_assert_eq(put(s, i, "v", 10.0 + i, 0.0), 1);
    cr_expect_eq(dht_storage_expire(s, 15.5), 3);
    cr_expect_eq(dht_storage_next_expiration(s), 13.0, "the earliest went first");
    cr_expect_eq(dht_storage_expire(s, 15.5), 3);
    cr_expect_eq(dht_storage_expire(s, 15.5), 0);
    cr_expect_eq(dht_storage_count(s), 4);
    dht_storage_free(s);
}
