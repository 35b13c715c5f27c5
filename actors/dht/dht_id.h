/* dht_id.h -- 128-bit DHT identifiers: keys and node ids, XOR distance, hex, bucket index.
 *
 * A key's id is XXH3-128 of the key's msgpack encoding (hivemind hashes the serialized key, so "ffn.1."
 * and the integer 5 name different ids), written big-endian (XXH128 canonical form), so byte 0 holds
 * the most significant bits and comparisons are memcmp. Node ids are hashes of the nodes' public keys
 * (dht_ident.h); dht_id_random draws the ids of refresh lookups. Pure value functions, no I/O, no
 * global state; safe from any thread.
 */
#ifndef DMOE_DHT_ID_H
#define DMOE_DHT_ID_H

#include <stddef.h>
#include <stdint.h>

#define DHT_ID_BYTES 16
#define DHT_ID_BITS 128
#define DHT_ID_HEX_LEN 32

typedef struct { uint8_t b[DHT_ID_BYTES]; } dht_id;

/* dht_id_from_bytes sets *out to XXH3-128 of data[0..len), taken as an already serialized key. */
void dht_id_from_bytes(dht_id *out, const void *data, size_t len);

/* dht_id_from_str hashes the msgpack encoding (str type) of s[0..len). Returns 0 or DMOE_ENOMEM; *out is
 * written only on success. */
int dht_id_from_str(dht_id *out, const char *s, size_t len);

/* dht_id_from_int hashes the msgpack encoding (smallest int form) of v. Returns 0 or DMOE_ENOMEM. */
int dht_id_from_int(dht_id *out, int64_t v);

/* dht_id_random sets *out to 128 random bits from the splitmix64 state *rng (advanced). */
void dht_id_random(dht_id *out, uint64_t *rng);

/* dht_id_cmp compares a and b as unsigned big-endian numbers: <0, 0, >0. */
int dht_id_cmp(const dht_id *a, const dht_id *b);

/* dht_id_eq returns 1 if a and b are the same id, else 0. */
int dht_id_eq(const dht_id *a, const dht_id *b);

/* dht_id_xor sets *out to a XOR b, the Kademlia distance between them. out may alias a or b. */
void dht_id_xor(dht_id *out, const dht_id *a, const dht_id *b);

/* dht_id_distance_cmp compares the distances from target to a and to b: <0 if a is nearer, 0 if a == b,
 * >0 if b is nearer. */
int dht_id_distance_cmp(const dht_id *target, const dht_id *a, const dht_id *b);

/* dht_id_common_prefix returns the number of leading bits a and b share, 0..128 (128 when equal). This
 * is the index of the bucket, counted from the far half, in which a node with id a keeps b. */
int dht_id_common_prefix(const dht_id *a, const dht_id *b);

/* dht_id_bit returns bit i of id (0 = most significant), i in 0..127. */
int dht_id_bit(const dht_id *id, int i);

/* dht_id_to_hex writes 32 lowercase hex digits and a NUL into buf[DHT_ID_HEX_LEN + 1]; returns buf. */
char *dht_id_to_hex(const dht_id *id, char *buf);

/* dht_id_from_hex parses exactly 32 hex digits (either case). Returns 0 or DMOE_EINVAL; *out is written
 * only on success. */
int dht_id_from_hex(dht_id *out, const char *hex);

#endif
