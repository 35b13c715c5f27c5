/* dht_record.h -- signed DHT records: values that name a peer, sealed by the declaring node's Ed25519 key.
 *
 * A record is one entry of a key's dictionary (wire/PROTOCOL_DHT.md, "Signed records"):
 *   subkey = msgpack [tag, pk]                      tag: nil or an int (a grid coordinate); pk: bin 32
 *   value  = msgpack ["dmoe/rec1", pk, sig, payload]  pk: bin 32, sig: bin 64, payload: bin (any bytes)
 *   signed bytes = msgpack ["dmoe/rec1", key, subkey, expiration, pk, payload]
 *                  key: bin 16 (the DHT id), subkey: bin (its exact bytes), expiration: float 64, payload: bin
 * The signature binds the key, the subkey, the expiration and the public key, so a record cannot be moved
 * to another key or subkey nor kept alive longer; and since the subkey names the signer, one key's
 * record can never replace another key's in a dictionary (dht_storage.h keeps one entry per subkey).
 * A value is a record when its first 11 bytes are 94 a9 "dmoe/rec1" (how msgpack-c and every encoder
 * in minimal form write that array head and string); whatever else is an unsigned value.
 *
 * Order: dht_record_subkey -> dht_record_seal (the declarer); dht_record_open (nodes on store, clients
 * on get). Pure functions; any thread.
 */
#ifndef DMOE_DHT_RECORD_H
#define DMOE_DHT_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_id.h"
#include "actors/dht/trust/dht_ident.h"

#define DHT_RECORD_MAGIC "dmoe/rec1"
/* A record's subkey: array head, nil or int (at most 9 bytes), bin 32 with its 2-byte head. */
#define DHT_RECORD_SUBKEY_MAX (1 + 9 + 2 + DHT_IDENT_PK_BYTES)

/* What dht_record_open found: the signer's key, the subkey's tag and the payload (borrowed from the
 * value bytes given). */
typedef struct {
    uint8_t pk[DHT_IDENT_PK_BYTES];
    int has_coord;         /* tag is an int (coord) rather than nil */
    int64_t coord;
    const uint8_t *payload;
    size_t plen;
} dht_record;

/* dht_record_is_record returns 1 when value[0..vlen) claims to be a record (the magic head), else 0. */
int dht_record_is_record(const uint8_t *value, size_t vlen);

/* dht_record_subkey writes the subkey [tag, pk] (tag: coord when has_coord, else nil) into
 * out[DHT_RECORD_SUBKEY_MAX]. Returns its length. */
size_t dht_record_subkey(const uint8_t pk[DHT_IDENT_PK_BYTES], int has_coord, int64_t coord,
                         uint8_t out[DHT_RECORD_SUBKEY_MAX]);

/* dht_record_seal signs payload[0..plen) for key, subkey[0..sklen) (made by dht_record_subkey with k's
 * public key) and expiration with k, and returns the value bytes in *out (malloc'd, the caller's) and
 * *outlen. Returns 0, DMOE_EINVAL (the subkey does not name k) or DMOE_ENOMEM. */
int dht_record_seal(const dht_ident *k, const dht_id *key, const uint8_t *subkey, size_t sklen, const void *payload,
                    size_t plen, double expiration, uint8_t **out, size_t *outlen);

/* dht_record_open checks that value[0..vlen), found or stored under key and subkey[0..sklen) with
 * expiration, is a well-formed record whose subkey names its signer and whose signature is good. Returns
 * 0 and *out (pointing into value), or DMOE_EINVAL with the reason in err. */
int dht_record_open(const dht_id *key, const uint8_t *subkey, size_t sklen, const uint8_t *value, size_t vlen,
                    double expiration, dht_record *out, char *err, size_t errlen);

/* dht_record_parse reads a record as dht_record_open does, without checking the signature: for entries
 * that were checked already (what dht_get_signed returns). Returns 0 and *out, or DMOE_EINVAL. */
int dht_record_parse(const uint8_t *subkey, size_t sklen, const uint8_t *value, size_t vlen, dht_record *out);

/* dht_record_verifications returns how many signatures dht_record_open has checked in this process (all
 * threads): what the bench divides a lookup's time by. */
unsigned long long dht_record_verifications(void);

#endif
