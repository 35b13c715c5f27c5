/* dht_id.c -- 128-bit DHT ids (see dht_id.h).
 *
 * Keys are serialized with msgpack-c exactly as hivemind's MSGPackSerializer would (str8/16/32 for text,
 * the smallest int form for integers), then hashed with XXH3-128; the canonical (big-endian) digest is
 * the id. Everything else is bytewise arithmetic on the 16-byte big-endian number.
 */
#include "actors/dht/dht_id.h"

#include <msgpack.h>
#include <string.h>
#include <xxhash.h>

#include "runtime/rt_err.h"

void dht_id_from_bytes(dht_id *out, const void *data, size_t len)
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
    memcpy(out->b, c.digest, DHT_ID_BYTES);
}

/* hash_packed hashes what pack() wrote into a fresh sbuffer. */
static int hash_packed(dht_id *out, msgpack_sbuffer *sb, int pack_rc)
{
    if (pack_rc != 0) {
        msgpack_sbuffer_destroy(sb);
        return DMOE_ENOMEM;
    }
    dht_id_from_bytes(out, sb->data, sb->size);
    msgpack_sbuffer_destroy(sb);
    return 0;
}

int dht_id_from_str(dht_id *out, const char *s, size_t len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_str(&pk, len);
    if (rc == 0) rc = msgpack_pack_str_body(&pk, s, len);
    return hash_packed(out, &sb, rc);
}

int dht_id_from_int(dht_id *out, int64_t v)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    return hash_packed(out, &sb, msgpack_pack_int64(&pk, v));
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

void dht_id_random(dht_id *out, uint64_t *rng)
{
    for (int half = 0; half < 2; half++) {
        uint64_t r = splitmix64(rng);
        for (int i = 0; i < 8; i++) out->b[half * 8 + i] = (uint8_t)(r >> (56 - 8 * i));
    }
}

int dht_id_cmp(const dht_id *a, const dht_id *b)
{
    return memcmp(a->b, b->b, DHT_ID_BYTES);
}

int dht_id_eq(const dht_id *a, const dht_id *b)
{
    return memcmp(a->b, b->b, DHT_ID_BYTES) == 0;
}

void dht_id_xor(dht_id *out, const dht_id *a, const dht_id *b)
{
    for (int i = 0; i < DHT_ID_BYTES; i++) out->b[i] = a->b[i] ^ b->b[i];
}

int dht_id_distance_cmp(const dht_id *target, const dht_id *a, const dht_id *b)
{
    for (int i = 0; i < DHT_ID_BYTES; i++) {
        int da = a->b[i] ^ target->b[i], db = b->b[i] ^ target->b[i];
        if (da != db) return da < db ? -1 : 1;
    }
    return 0;
}

int dht_id_common_prefix(const dht_id *a, const dht_id *b)
{
    for (int i = 0; i < DHT_ID_BYTES; i++) {
        unsigned x = (unsigned)(a->b[i] ^ b->b[i]);
        if (x) {
            int n = 0;
            while (!(x & 0x80u)) { x <<= 1; n++; }
            return i * 8 + n;
        }
    }
    return DHT_ID_BITS;
}

int dht_id_bit(const dht_id *id, int i)
{
    return (id->b[i >> 3] >> (7 - (i & 7))) & 1;
}

char *dht_id_to_hex(const dht_id *id, char *buf)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < DHT_ID_BYTES; i++) {
        buf[2 * i] = digits[id->b[i] >> 4];
        buf[2 * i + 1] = digits[id->b[i] & 15];
    }
    buf[DHT_ID_HEX_LEN] = '\0';
    return buf;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int dht_id_from_hex(dht_id *out, const char *hex)
{
    dht_id tmp;
    if (!hex) return DMOE_EINVAL;
    for (int i = 0; i < DHT_ID_BYTES; i++) {
        int hi = hexval(hex[2 * i]);
        if (hi < 0) return DMOE_EINVAL;
        int lo = hexval(hex[2 * i + 1]);
        if (lo < 0) return DMOE_EINVAL;
        tmp.b[i] = (uint8_t)(hi << 4 | lo);
    }
    if (hex[DHT_ID_HEX_LEN] != '\0') return DMOE_EINVAL;
    *out = tmp;
    return 0;
}
