/* dht_record.c -- sealing and opening signed DHT records (see dht_record.h).
 *
 * Design notes. The signed bytes are rebuilt from the context the record is found in (the key, the
 * subkey and the expiration of the store or get) plus the key and payload the value carries, so nothing
 * the value says about where it belongs is trusted: a record replayed elsewhere or later is simply a
 * bad signature. Parsing is strict: exact array sizes, exact bin lengths, no trailing bytes.
 */
#include "actors/dht/trust/dht_record.h"

#include <msgpack.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"

#define MAGIC_LEN (sizeof DHT_RECORD_MAGIC - 1)
/* fixarray of 4, fixstr of 9, the magic */
static const uint8_t record_head[2 + MAGIC_LEN] = { 0x94, 0xa0 | MAGIC_LEN, 'd', 'm', 'o', 'e', '/', 'r', 'e', 'c', '1' };

static atomic_ullong verifications;   /* signatures checked in this process (dht_record_verifications) */

unsigned long long dht_record_verifications(void) { return atomic_load(&verifications); }

int dht_record_is_record(const uint8_t *value, size_t vlen)
{
    return value && vlen >= sizeof record_head && memcmp(value, record_head, sizeof record_head) == 0;
}

size_t dht_record_subkey(const uint8_t pk[DHT_IDENT_PK_BYTES], int has_coord, int64_t coord,
                         uint8_t out[DHT_RECORD_SUBKEY_MAX])
{
    msgpack_sbuffer sb;
    msgpack_packer p;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&p, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&p, 2);
    if (has_coord) msgpack_pack_int64(&p, coord);
    else msgpack_pack_nil(&p);
    msgpack_pack_bin(&p, DHT_IDENT_PK_BYTES);
    msgpack_pack_bin_body(&p, pk, DHT_IDENT_PK_BYTES);
    size_t n = sb.data && sb.size <= DHT_RECORD_SUBKEY_MAX ? sb.size : 0;
    if (n) memcpy(out, sb.data, n);
    msgpack_sbuffer_destroy(&sb);
    return n;
}

/* signed_bytes packs ["dmoe/rec1", key, subkey, expiration, pk, payload] into sb (initialised here).
 * Returns 0 or DMOE_ENOMEM. */
static int signed_bytes(msgpack_sbuffer *sb, const dht_id *key, const uint8_t *subkey, size_t sklen, double expiration,
                        const uint8_t pk[DHT_IDENT_PK_BYTES], const void *payload, size_t plen)
{
    msgpack_packer p;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&p, sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_array(&p, 6);
    rc |= msgpack_pack_str_with_body(&p, DHT_RECORD_MAGIC, MAGIC_LEN);
    rc |= msgpack_pack_bin_with_body(&p, key->b, DHT_ID_BYTES);
    rc |= msgpack_pack_bin_with_body(&p, subkey, sklen);
    rc |= msgpack_pack_double(&p, expiration);
    rc |= msgpack_pack_bin_with_body(&p, pk, DHT_IDENT_PK_BYTES);
    rc |= msgpack_pack_bin_with_body(&p, payload, plen);
    if (rc != 0 || !sb->data) {
        msgpack_sbuffer_destroy(sb);
        return DMOE_ENOMEM;
    }
    return 0;
}

/* parse_subkey reads [nil | int, bin 32] from subkey into *r (pk, tag). Returns 0 or DMOE_EINVAL. */
static int parse_subkey(const uint8_t *subkey, size_t sklen, dht_record *r)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int rc = DMOE_EINVAL;
    if (subkey && msgpack_unpack_next(&u, (const char *)subkey, sklen, &off) == MSGPACK_UNPACK_SUCCESS &&
        off == sklen && u.data.type == MSGPACK_OBJECT_ARRAY && u.data.via.array.size == 2) {
        const msgpack_object *tag = &u.data.via.array.ptr[0], *pk = &u.data.via.array.ptr[1];
        int tag_ok = 1;
        r->has_coord = 0;
        r->coord = 0;
        if (tag->type == MSGPACK_OBJECT_POSITIVE_INTEGER && tag->via.u64 <= INT64_MAX) {
            r->has_coord = 1;
            r->coord = (int64_t)tag->via.u64;
        } else if (tag->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            r->has_coord = 1;
            r->coord = tag->via.i64;
        } else if (tag->type != MSGPACK_OBJECT_NIL) {
            tag_ok = 0;
        }
        if (tag_ok && pk->type == MSGPACK_OBJECT_BIN && pk->via.bin.size == DHT_IDENT_PK_BYTES) {
            memcpy(r->pk, pk->via.bin.ptr, DHT_IDENT_PK_BYTES);
            rc = 0;
        }
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

int dht_record_seal(const dht_ident *k, const dht_id *key, const uint8_t *subkey, size_t sklen, const void *payload,
                    size_t plen, double expiration, uint8_t **out, size_t *outlen)
{
    dht_record r;
    if (parse_subkey(subkey, sklen, &r) != 0 || memcmp(r.pk, k->pk, DHT_IDENT_PK_BYTES) != 0) return DMOE_EINVAL;
    msgpack_sbuffer sb;
    if (signed_bytes(&sb, key, subkey, sklen, expiration, k->pk, payload, plen) != 0) return DMOE_ENOMEM;
    uint8_t sig[DHT_IDENT_SIG_BYTES];
    dht_ident_sign(k, sb.data, sb.size, sig);
    msgpack_sbuffer_destroy(&sb);

    msgpack_packer p;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&p, &sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_array(&p, 4);
    rc |= msgpack_pack_str_with_body(&p, DHT_RECORD_MAGIC, MAGIC_LEN);
    rc |= msgpack_pack_bin_with_body(&p, k->pk, DHT_IDENT_PK_BYTES);
    rc |= msgpack_pack_bin_with_body(&p, sig, DHT_IDENT_SIG_BYTES);
    rc |= msgpack_pack_bin_with_body(&p, payload, plen);
    if (rc != 0 || !sb.data) {
        msgpack_sbuffer_destroy(&sb);
        return DMOE_ENOMEM;
    }
    *outlen = sb.size;
    *out = (uint8_t *)msgpack_sbuffer_release(&sb);
    return 0;
}

static int refuse(char *err, size_t errlen, const char *why)
{
    if (err && errlen) snprintf(err, errlen, "%s", why);
    return DMOE_EINVAL;
}

/* parse reads record value[0..vlen) found under subkey into *r and its signature into sig. Returns 0 or
 * DMOE_EINVAL with the reason in err. */
static int parse(const uint8_t *subkey, size_t sklen, const uint8_t *value, size_t vlen, dht_record *out,
                 uint8_t sig[DHT_IDENT_SIG_BYTES], char *err, size_t errlen)
{
    if (!dht_record_is_record(value, vlen)) return refuse(err, errlen, "not a signed record");
    dht_record r;
    if (parse_subkey(subkey, sklen, &r) != 0)
        return refuse(err, errlen, "a signed record's subkey must be [nil or int, public key bin 32]");
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    const char *why = NULL;
    if (msgpack_unpack_next(&u, (const char *)value, vlen, &off) != MSGPACK_UNPACK_SUCCESS || off != vlen ||
        u.data.type != MSGPACK_OBJECT_ARRAY || u.data.via.array.size != 4) {
        why = "a signed record must be [\"dmoe/rec1\", public key, signature, payload] and nothing after";
    } else {
        const msgpack_object *a = u.data.via.array.ptr;
        if (a[1].type != MSGPACK_OBJECT_BIN || a[1].via.bin.size != DHT_IDENT_PK_BYTES ||
            a[2].type != MSGPACK_OBJECT_BIN || a[2].via.bin.size != DHT_IDENT_SIG_BYTES || a[3].type != MSGPACK_OBJECT_BIN)
            why = "a signed record's public key, signature and payload must be bin 32, bin 64 and bin";
        else if (memcmp(a[1].via.bin.ptr, r.pk, DHT_IDENT_PK_BYTES) != 0)
            why = "the record's public key is not the one its subkey names";
        else {
            memcpy(sig, a[2].via.bin.ptr, DHT_IDENT_SIG_BYTES);
            /* the payload lies inside value: point at it there */
            r.plen = a[3].via.bin.size;
            r.payload = r.plen ? (const uint8_t *)a[3].via.bin.ptr : value + vlen;
            if (r.plen && ((const uint8_t *)a[3].via.bin.ptr < value || r.payload + r.plen > value + vlen))
                why = "malformed record";
        }
    }
    msgpack_unpacked_destroy(&u);
    if (why) return refuse(err, errlen, why);
    *out = r;
    return 0;
}

int dht_record_parse(const uint8_t *subkey, size_t sklen, const uint8_t *value, size_t vlen, dht_record *out)
{
    uint8_t sig[DHT_IDENT_SIG_BYTES];
    return parse(subkey, sklen, value, vlen, out, sig, NULL, 0);
}

int dht_record_open(const dht_id *key, const uint8_t *subkey, size_t sklen, const uint8_t *value, size_t vlen,
                    double expiration, dht_record *out, char *err, size_t errlen)
{
    dht_record r;
    uint8_t sig[DHT_IDENT_SIG_BYTES];
    int rc = parse(subkey, sklen, value, vlen, &r, sig, err, errlen);
    if (rc != 0) return rc;
    msgpack_sbuffer sb;
    if (signed_bytes(&sb, key, subkey, sklen, expiration, r.pk, r.payload, r.plen) != 0)
        return refuse(err, errlen, "out of memory checking a signature");
    int good = dht_ident_verify(r.pk, sb.data, sb.size, sig);
    atomic_fetch_add(&verifications, 1);
    msgpack_sbuffer_destroy(&sb);
    if (!good)
        return refuse(err, errlen, "bad signature (the record was changed, or moved to another key, subkey or "
                                   "expiration)");
    *out = r;
    return 0;
}
