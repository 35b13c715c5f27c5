/* dht_trust.h -- what a node stores and a client uses: the signed-record policy and the trusted keys of a
 * private swarm (--trusted_keys).
 *
 * Policy (wire/PROTOCOL_DHT.md, "Signed records"). On store, a node classifies every item:
 *  - a value that claims to be a record (dht_record.h) must open (good signature, subkey naming the
 *    signer), expire at most max_lifetime seconds after the store's now, and, when the node has trusted
 *    keys, be signed by one of them; else the request is refused with the reason;
 *  - any other value is unsigned: refused when the node has trusted keys, else stored by the ordinary
 *    rules -- except that it cannot touch a key holding records (dht_storage_store_signed).
 * On get, a client keeps a found entry only when the same holds, allowing DHT_RECORD_SKEW_S of clock
 * difference on the lifetime; unsigned entries are dropped too when it has trusted keys or asked for
 * records only (dht_get_signed). So in a private swarm nothing unsigned is stored, returned or used.
 *
 * The trusted-keys file: one Ed25519 public key per line as 64 hex digits (upper or lower case), blank
 * lines and anything from '#' to the end of a line ignored.
 *
 * Order: dht_trust_load (or dht_trust_new + dht_trust_add) -> give it to dht_cfg.trusted_keys (it must
 * outlive the node) -> dht_trust_free. The checks are pure; a set is read-only once in use, any thread.
 */
#ifndef DMOE_DHT_TRUST_H
#define DMOE_DHT_TRUST_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_id.h"
#include "actors/dht/trust/dht_ident.h"

/* A signed record's expiration is at most this far ahead of the store's now: a declaration is renewed
 * every update_period (30 s by default, living 60 s), so ten minutes is plenty, and a record of a server
 * that died goes away within ten minutes whatever it claimed (no 24 h squatting). */
#define DHT_RECORD_MAX_LIFETIME_S 600.0
/* Clients allow this much clock difference between them and the declarer when checking that cap. */
#define DHT_RECORD_SKEW_S 60.0
/* Keys in one trusted-keys file. */
#define DHT_TRUST_MAX_KEYS 65536

typedef struct dht_trust dht_trust;

/* dht_trust_new creates an empty set. Returns 0 and *out, or DMOE_ENOMEM. */
int dht_trust_new(dht_trust **out);
/* dht_trust_add adds pk to t. Returns 0, DMOE_ETOOBIG (DHT_TRUST_MAX_KEYS reached) or DMOE_ENOMEM. */
int dht_trust_add(dht_trust *t, const uint8_t pk[DHT_IDENT_PK_BYTES]);
/* dht_trust_has returns 1 when pk is in t. */
int dht_trust_has(const dht_trust *t, const uint8_t pk[DHT_IDENT_PK_BYTES]);
/* dht_trust_count returns the number of keys in t. */
size_t dht_trust_count(const dht_trust *t);
/* dht_trust_load reads the trusted-keys file at path (format above) into a new set. Returns 0 and *out,
 * or DMOE_EIO (cannot read), DMOE_EINVAL (a malformed line, or no key at all) with err naming the line,
 * DMOE_ETOOBIG, DMOE_ENOMEM. */
int dht_trust_load(const char *path, dht_trust **out, char *err, size_t errlen);
/* dht_trust_free frees t; NULL is a no-op. */
void dht_trust_free(dht_trust *t);

/* dht_trust_check_store classifies an item a node is asked to store (key, subkey[0..sklen) or NULL,
 * value[0..vlen), expiration) at now under trusted keys t (NULL: an open swarm) and the lifetime cap
 * max_lifetime (seconds). Returns 1 (a valid record: store it as signed), 0 (an unsigned value this node
 * accepts) or DMOE_EINVAL with the reason in err. */
int dht_trust_check_store(const dht_trust *t, double max_lifetime, const dht_id *key, const uint8_t *subkey,
                          size_t sklen, const uint8_t *value, size_t vlen, double expiration, double now, char *err,
                          size_t errlen);

/* dht_trust_accept returns 1 when a client may use an entry it found (as dht_trust_check_store, with
 * DHT_RECORD_SKEW_S more lifetime allowed), 0 when it must drop it; signed_only 1 drops unsigned values
 * as well. */
int dht_trust_accept(const dht_trust *t, double max_lifetime, int signed_only, const dht_id *key, const uint8_t *subkey,
                     size_t sklen, const uint8_t *value, size_t vlen, double expiration, double now);

/* dht_trust_hex writes pk as 64 lower-case hex digits and a NUL into out. */
void dht_trust_hex(const uint8_t pk[DHT_IDENT_PK_BYTES], char out[2 * DHT_IDENT_PK_BYTES + 1]);

#endif
