/* test_dht_id.c -- 128-bit ids: key hashing, hex, XOR distance, prefixes (actors/dht_id.c). */
#include <criterion/criterion.h>
#include <string.h>
#include <xxhash.h>

#include "actors/dht/dht_id.h"
#include "runtime/rt_err.h"

static void expect_hash_of(const dht_id *id, const void *bytes, size_t n)
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(bytes, n));
    cr_expect_eq(memcmp(id->b, c.digest, 16), 0);
}

Test(dht_id, key_hash_is_xxh3_of_msgpack, .timeout = 30)
{
    dht_id id;
    cr_assert_eq(dht_id_from_str(&id, "ffn", 3), 0);
    expect_hash_of(&id, "\xa3" "ffn", 4);                        /* fixstr */

    char s40[41];
    memset(s40, 'x', 40);
    s40[40] = 0;
    unsigned char enc[42] = {0xd9, 40};                         /* str8 */
    memcpy(enc + 2, s40, 40);
    cr_assert_eq(dht_id_from_str(&id, s40, 40), 0);
    expect_hash_of(&id, enc, sizeof enc);

    cr_assert_eq(dht_id_from_int(&id, 5), 0);
    expect_hash_of(&id, "\x05", 1);                             /* positive fixint */
    cr_assert_eq(dht_id_from_int(&id, -1), 0);
    expect_hash_of(&id, "\xff", 1);                             /* negative fixint */
    cr_assert_eq(dht_id_from_int(&id, 300), 0);
    expect_hash_of(&id, "\xcd\x01\x2c", 3);                     /* uint16 */

    dht_id a, b;
    dht_id_from_bytes(&a, "\xa3" "ffn", 4);
    cr_assert_eq(dht_id_from_str(&b, "ffn", 3), 0);
    cr_expect(dht_id_eq(&a, &b));
    cr_assert_eq(dht_id_from_str(&b, "ffm", 3), 0);
    cr_expect_not(dht_id_eq(&a, &b));
}

Test(dht_id, hex_round_trip, .timeout = 30)
{
    uint64_t rng = 1;
    char hex[DHT_ID_HEX_LEN + 1];
    for (int i = 0; i < 100; i++) {
        dht_id a, b;
        dht_id_random(&a, &rng);
        dht_id_to_hex(&a, hex);
        cr_assert_eq(strlen(hex), 32);
        cr_assert_eq(dht_id_from_hex(&b, hex), 0);
        cr_assert(dht_id_eq(&a, &b));
    }
    dht_id z;
    memset(&z, 0, sizeof z);
    z.b[0] = 0xAB;
    z.b[15] = 0x01;
    cr_expect_str_eq(dht_id_to_hex(&z, hex), "ab000000000000000000000000000001");
    cr_expect_eq(dht_id_from_hex(&z, "AB000000000000000000000000000001"), 0);
    cr_expect_eq(z.b[0], 0xAB);

    dht_id keep = z;
    cr_expect_eq(dht_id_from_hex(&z, "ab00"), DMOE_EINVAL);
    cr_expect_eq(dht_id_from_hex(&z, "ab0000000000000000000000000000010"), DMOE_EINVAL);
    cr_expect_eq(dht_id_from_hex(&z, "ag000000000000000000000000000001"), DMOE_EINVAL);
    cr_expect_eq(dht_id_from_hex(&z, ""), DMOE_EINVAL);
    cr_expect_eq(dht_id_from_hex(&z, NULL), DMOE_EINVAL);
    cr_expect(dht_id_eq(&z, &keep));
}

Test(dht_id, xor_distance_and_prefix, .timeout = 30)
{
    dht_id t, a, b, d;
    memset(&t, 0, sizeof t);
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.b[0] = 0x01;          /* distance 2^120 */
    b.b[1] = 0xff;          /* distance < 2^120 */
    cr_expect_gt(dht_id_distance_cmp(&t, &a, &b), 0);
    cr_expect_lt(dht_id_distance_cmp(&t, &b, &a), 0);
    cr_expect_eq(dht_id_distance_cmp(&t, &a, &a), 0);
    dht_id_xor(&d, &a, &b);
    cr_expect_eq(d.b[0], 0x01);
    cr_expect_eq(d.b[1], 0xff);
    cr_expect_eq(dht_id_common_prefix(&t, &a), 7);
    cr_expect_eq(dht_id_common_prefix(&t, &b), 8);
    cr_expect_eq(dht_id_common_prefix(&a, &a), 128);
    cr_expect_eq(dht_id_bit(&a, 7), 1);
    cr_expect_eq(dht_id_bit(&a, 6), 0);
    cr_expect_eq(dht_id_bit(&b, 8), 1);
    cr_expect_lt(dht_id_cmp(&t, &a), 0);
    cr_expect_gt(dht_id_cmp(&a, &b), 0);

    /* The distance order agrees with comparing XORs as numbers, and xor is symmetric. */
    uint64_t rng = 77;
    for (int i = 0; i < 1000; i++) {
        dht_id x, y, z, dx, dy;
        dht_id_random(&x, &rng);
        dht_id_random(&y, &rng);
        dht_id_random(&z, &rng);
        dht_id_xor(&dx, &z, &x);
        dht_id_xor(&dy, &y, &z);
        int c1 = dht_id_distance_cmp(&z, &x, &y), c2 = dht_id_cmp(&dx, &dy);
        cr_assert_eq(c1 < 0, c2 < 0);
        cr_assert_eq(c1 == 0, c2 == 0);
        /* common prefix = number of leading zero bits of the XOR */
        dht_id_xor(&dx, &x, &y);
        int lz = 0;
        while (lz < 128 && !dht_id_bit(&dx, lz)) lz++;
        cr_assert_eq(dht_id_common_prefix(&x, &y), lz);
    }
}

Test(dht_id, random_is_seeded, .timeout = 30)
{
    uint64_t r1 = 5, r2 = 5, r3 = 6;
    dht_id a, b, c;
    dht_id_random(&a, &r1);
    dht_id_random(&b, &r2);
    dht_id_random(&c, &r3);
    cr_expect(dht_id_eq(&a, &b));
    cr_expect_not(dht_id_eq(&a, &c));
    dht_id_random(&b, &r2);
    cr_expect_not(dht_id_eq(&a, &b));
}
