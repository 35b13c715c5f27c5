/* test_dht_record.c -- signed DHT records (actors/dht/trust/dht_record.c), the record policy and the
 * trusted-keys file (dht_trust.c), and the storage's sealed dictionaries (dht_storage.c): a record round
 * trips, and changing any byte the signature covers -- key, subkey tag, subkey key, expiration, payload,
 * public key, signature, magic, a trailing byte -- makes it fail; the policy refuses records beyond the
 * lifetime cap, untrusted keys and (in a private swarm) unsigned values; unsigned stores cannot touch a
 * key holding records, records replace unsigned content, and two signers of one key both stay. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/dht/dht_storage.h"
#include "actors/dht/trust/dht_record.h"
#include "actors/dht/trust/dht_trust.h"
#include "runtime/rt_err.h"

#define NOW 1000000.0

typedef struct {
    dht_ident k;
    dht_id key;
    uint8_t sk[DHT_RECORD_SUBKEY_MAX];
    size_t sklen;
    uint8_t *v;
    size_t vlen;
    double exp;
} rec;

static void make(rec *r, uint64_t who, const char *key, int has_coord, int64_t coord, const char *payload, double exp)
{
    cr_assert_eq(dht_ident_for_test(&r->k, who), 0);
    cr_assert_eq(dht_id_from_str(&r->key, key, strlen(key)), 0);
    r->sklen = dht_record_subkey(r->k.pk, has_coord, coord, r->sk);
    cr_assert(r->sklen > 0);
    r->exp = exp;
    cr_assert_eq(dht_record_seal(&r->k, &r->key, r->sk, r->sklen, payload, strlen(payload), exp, &r->v, &r->vlen), 0);
}

static int opens(const rec *r)
{
    dht_record o;
    char err[200];
    return dht_record_open(&r->key, r->sk, r->sklen, r->v, r->vlen, r->exp, &o, err, sizeof err) == 0;
}

Test(dht_record, round_trip)
{
    rec r;
    make(&r, 7, "expert.0", 1, 42, "hello", NOW + 60);
    dht_record o;
    char err[200] = "";
    cr_assert(dht_record_is_record(r.v, r.vlen));
    cr_assert_eq(dht_record_open(&r.key, r.sk, r.sklen, r.v, r.vlen, r.exp, &o, err, sizeof err), 0, "%s", err);
    cr_expect_eq(memcmp(o.pk, r.k.pk, 32), 0);
    cr_expect(o.has_coord && o.coord == 42);
    cr_expect(o.plen == 5 && memcmp(o.payload, "hello", 5) == 0);
    cr_expect(o.payload >= r.v && o.payload + o.plen <= r.v + r.vlen, "the payload points into the value");
    rec n;
    make(&n, 7, "expert.0", 0, 0, "", NOW + 60);   /* nil tag, empty payload */
    cr_assert_eq(dht_record_open(&n.key, n.sk, n.sklen, n.v, n.vlen, n.exp, &o, err, sizeof err), 0, "%s", err);
    cr_expect(!o.has_coord && o.plen == 0);
    cr_expect(!dht_record_is_record((const uint8_t *)"\x92\xa1x\xa1y", 5), "a plain value is not a record");
    free(r.v);
    free(n.v);
}

Test(dht_record, every_signed_field_is_bound)
{
    rec r;
    make(&r, 7, "expert.0", 1, 3, "[id, /ip4/1.2.3.4/tcp/5]", NOW + 60);
    cr_assert(opens(&r));
    rec t = r;
    /* moved to another key */
    cr_assert_eq(dht_id_from_str(&t.key, "expert.1", 8), 0);
    cr_expect(!opens(&t), "another key");
    /* a later expiration */
    t = r;
    t.exp = r.exp + 1;
    cr_expect(!opens(&t), "a later expiration");
    /* another tag in the subkey */
    t = r;
    t.sklen = dht_record_subkey(r.k.pk, 1, 4, t.sk);
    cr_expect(!opens(&t), "another coordinate");
    t.sklen = dht_record_subkey(r.k.pk, 0, 0, t.sk);
    cr_expect(!opens(&t), "no coordinate");
    /* a subkey naming another key */
    dht_ident other;
    cr_assert_eq(dht_ident_for_test(&other, 8), 0);
    t = r;
    t.sklen = dht_record_subkey(other.pk, 1, 3, t.sk);
    cr_expect(!opens(&t), "a subkey naming another signer");
    /* every byte of the value: flipping any one breaks it */
    uint8_t *v = malloc(r.vlen);
    for (size_t i = 0; i < r.vlen; i++) {
        memcpy(v, r.v, r.vlen);
        v[i] ^= 0x01;
        t = r;
        t.v = v;
        cr_expect(!opens(&t), "byte %zu of the value flipped", i);
    }
    /* a trailing byte, a truncated value */
    uint8_t *longer = malloc(r.vlen + 1);
    memcpy(longer, r.v, r.vlen);
    longer[r.vlen] = 0xc0;
    t = r;
    t.v = longer;
    t.vlen = r.vlen + 1;
    cr_expect(!opens(&t), "a trailing byte");
    t.v = r.v;
    t.vlen = r.vlen - 1;
    cr_expect(!opens(&t), "truncated");
    /* the same payload re-signed by another key under the honest subkey cannot be made */
    uint8_t *forged;
    size_t flen;
    cr_expect_eq(dht_record_seal(&other, &r.key, r.sk, r.sklen, "x", 1, r.exp, &forged, &flen), DMOE_EINVAL);
    /* the other key's record under its own subkey is fine, and does not open under the honest subkey */
    uint8_t osk[DHT_RECORD_SUBKEY_MAX];
    size_t osklen = dht_record_subkey(other.pk, 1, 3, osk);
    cr_assert_eq(dht_record_seal(&other, &r.key, osk, osklen, "x", 1, r.exp, &forged, &flen), 0);
    t = r;
    t.v = forged;
    t.vlen = flen;
    cr_expect(!opens(&t), "another signer's value under the honest subkey");
    free(forged);
    free(longer);
    free(v);
    free(r.v);
}

/* ---- the policy and the trusted keys ---- */

Test(dht_trust, lifetime_cap_trusted_keys_and_unsigned_values)
{
    rec r;
    make(&r, 7, "expert.0", 0, 0, "p", NOW + 60);
    char err[256] = "";
    cr_expect_eq(dht_trust_check_store(NULL, 600, &r.key, r.sk, r.sklen, r.v, r.vlen, r.exp, NOW, err, sizeof err), 1,
                 "%s", err);
    cr_expect_eq(dht_trust_check_store(NULL, 600, &r.key, NULL, 0, (const uint8_t *)"\xa1x", 2, NOW + 60, NOW, err,
                                       sizeof err), 0, "an unsigned value in an open swarm");
    rec far;
    make(&far, 7, "expert.0", 0, 0, "p", NOW + 24 * 3600);
    cr_expect_eq(dht_trust_check_store(NULL, 600, &far.key, far.sk, far.sklen, far.v, far.vlen, far.exp, NOW, err,
                                       sizeof err), DMOE_EINVAL, "a 24 h record");
    cr_expect(strstr(err, "lifetime cap"), "%s", err);
    cr_expect(!dht_trust_accept(NULL, 600, 0, &far.key, far.sk, far.sklen, far.v, far.vlen, far.exp, NOW),
              "clients drop it too");
    cr_expect(dht_trust_accept(NULL, 600, 0, &r.key, r.sk, r.sklen, r.v, r.vlen, r.exp, NOW));
    cr_expect(!dht_trust_accept(NULL, 600, 0, &r.key, r.sk, r.sklen, r.v, r.vlen, r.exp + 1, NOW), "forged");
    cr_expect(!dht_trust_accept(NULL, 600, 1, &r.key, NULL, 0, (const uint8_t *)"\xa1x", 2, NOW + 60, NOW),
              "records only");

    dht_trust *t;
    cr_assert_eq(dht_trust_new(&t), 0);
    dht_ident other;
    cr_assert_eq(dht_ident_for_test(&other, 8), 0);
    cr_assert_eq(dht_trust_add(t, other.pk), 0);
    cr_expect_eq(dht_trust_check_store(t, 600, &r.key, r.sk, r.sklen, r.v, r.vlen, r.exp, NOW, err, sizeof err),
                 DMOE_EINVAL, "an untrusted signer");
    cr_expect(strstr(err, "trusted"), "%s", err);
    cr_expect(!dht_trust_accept(t, 600, 0, &r.key, r.sk, r.sklen, r.v, r.vlen, r.exp, NOW));
    cr_expect_eq(dht_trust_check_store(t, 600, &r.key, NULL, 0, (const uint8_t *)"\xa1x", 2, NOW + 60, NOW, err,
                                       sizeof err), DMOE_EINVAL, "unsigned in a private swarm");
    cr_assert_eq(dht_trust_add(t, r.k.pk), 0);
    cr_expect_eq(dht_trust_check_store(t, 600, &r.key, r.sk, r.sklen, r.v, r.vlen, r.exp, NOW, err, sizeof err), 1);
    cr_expect(dht_trust_accept(t, 600, 0, &r.key, r.sk, r.sklen, r.v, r.vlen, r.exp, NOW));
    dht_trust_free(t);
    free(r.v);
    free(far.v);
}

Test(dht_trust, keys_file)
{
    char path[] = "/tmp/dmoe-trust-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    dht_ident a, b;
    cr_assert_eq(dht_ident_for_test(&a, 1), 0);
    cr_assert_eq(dht_ident_for_test(&b, 2), 0);
    char ha[65], hb[65];
    dht_trust_hex(a.pk, ha);
    dht_trust_hex(b.pk, hb);
    for (int i = 0; hb[i]; i++) hb[i] = (char)(hb[i] >= 'a' ? hb[i] - 32 : hb[i]);   /* upper case works too */
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# the lab's nodes\n\n%s  # node a\n   %s\n", ha, hb);
    fclose(f);
    dht_trust *t = NULL;
    char err[256] = "";
    cr_assert_eq(dht_trust_load(path, &t, err, sizeof err), 0, "%s", err);
    cr_expect_eq(dht_trust_count(t), 2);
    cr_expect(dht_trust_has(t, a.pk) && dht_trust_has(t, b.pk));
    dht_trust_free(t);

    f = fopen(path, "w");
    fprintf(f, "%s\nnot-a-key\n", ha);
    fclose(f);
    cr_expect_eq(dht_trust_load(path, &t, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, ":2:"), "names the line: %s", err);
    f = fopen(path, "w");
    fprintf(f, "# nobody\n");
    fclose(f);
    cr_expect_eq(dht_trust_load(path, &t, err, sizeof err), DMOE_EINVAL, "a file with no key");
    unlink(path);
    cr_expect_eq(dht_trust_load(path, &t, err, sizeof err), DMOE_EIO);
}

/* ---- sealed dictionaries in the storage ---- */

Test(dht_sealed, unsigned_values_cannot_touch_records_and_owners_coexist)
{
    dht_storage *s;
    cr_assert_eq(dht_storage_new(&s, NULL), 0);
    rec a, b;
    make(&a, 1, "expert.0", 0, 0, "a", NOW + 60);
    make(&b, 2, "expert.0", 0, 0, "b", NOW + 30);
    /* an attacker's unsigned value first, living 24 h: the record replaces it anyway */
    cr_assert_eq(dht_storage_store(s, &a.key, NULL, 0, "evil", 4, NOW + 24 * 3600 - 1, NOW), 1);
    cr_assert_eq(dht_storage_store_signed(s, "1.1.1.1", &a.key, a.sk, a.sklen, a.v, a.vlen, a.exp, NOW), 1);
    cr_assert_eq(dht_storage_store_signed(s, "2.2.2.2", &b.key, b.sk, b.sklen, b.v, b.vlen, b.exp, NOW), 1);
    dht_stored st;
    cr_assert_eq(dht_storage_get(s, &a.key, NOW, &st), 0);
    cr_expect(st.is_dict && st.sealed && st.nsubs == 2, "both signers kept, the unsigned value gone");
    size_t bytes = dht_storage_bytes(s);
    /* unsigned stores cannot replace or add to it, whatever their expiration */
    cr_expect_eq(dht_storage_store(s, &a.key, NULL, 0, "evil", 4, NOW + 24 * 3600 - 1, NOW), 0);
    cr_expect_eq(dht_storage_store(s, &a.key, a.sk, a.sklen, "evil", 4, NOW + 24 * 3600 - 1, NOW), 0);
    cr_expect_eq(dht_storage_store_from(s, "6.6.6.6", &a.key, "\x01", 1, "evil", 4, NOW + 100, NOW), 0);
    cr_assert_eq(dht_storage_get(s, &a.key, NOW, &st), 0);
    cr_expect(st.sealed && st.nsubs == 2 && dht_storage_bytes(s) == bytes, "the refusals left the storage as it was");
    /* a signed store needs a subkey */
    cr_expect_eq(dht_storage_store_signed(s, NULL, &a.key, NULL, 0, a.v, a.vlen, a.exp, NOW), DMOE_EINVAL);
    /* a full sealed dictionary refuses a third signer rather than evicting one */
    dht_storage *small;
    dht_storage_limits lim = { .max_subkeys = 2 };
    cr_assert_eq(dht_storage_new(&small, &lim), 0);
    rec c;
    make(&c, 3, "expert.0", 0, 0, "c", NOW + 90);
    cr_assert_eq(dht_storage_store_signed(small, NULL, &a.key, a.sk, a.sklen, a.v, a.vlen, a.exp, NOW), 1);
    cr_assert_eq(dht_storage_store_signed(small, NULL, &b.key, b.sk, b.sklen, b.v, b.vlen, b.exp, NOW), 1);
    cr_expect_eq(dht_storage_store_signed(small, NULL, &c.key, c.sk, c.sklen, c.v, c.vlen, c.exp, NOW), 0);
    cr_assert_eq(dht_storage_get(small, &a.key, NOW, &st), 0);
    cr_expect_eq(st.nsubs, 2);
    cr_expect_eq(dht_storage_store_signed(small, NULL, &a.key, a.sk, a.sklen, a.v, a.vlen, a.exp, NOW), 0,
                 "the same record again: nothing newer");
    dht_storage_free(small);
    free(c.v);
    /* when every record expired, the key is free again */
    cr_expect_eq(dht_storage_store(s, &a.key, NULL, 0, "late", 4, NOW + 100, NOW + 61), 1);
    dht_storage_free(s);
    free(a.v);
    free(b.v);
}
