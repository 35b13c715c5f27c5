/* dht_ident.h -- a node's identity: an Ed25519 key pair (libsodium), the DHT id derived from its public
 * key, signatures, and the key file behind --identity_path.
 *
 * A node id is BLAKE2b of the 32-byte Ed25519 public key with a 16-byte digest (libsodium's
 * crypto_generichash with outlen 16 and no key: the digest length is a BLAKE2b parameter, so this is not
 * the first 16 bytes of BLAKE2b-256). Whoever holds the secret key can prove the id by signing; nobody
 * else can (wire/PROTOCOL_DHT.md, "Identity"). The key file is one line of text,
 * "dmoe-ed25519 <64 hex digits>\n", the hex digits being the 32-byte Ed25519 seed; it must be a regular
 * file that neither group nor others may read or write (mode 0600 or stricter).
 *
 * Order: dht_ident_generate, dht_ident_from_seed or dht_ident_load_or_create -> dht_ident_sign /
 * dht_ident_id -> dht_ident_wipe. dht_ident_verify and dht_ident_id_of need no key pair. Pure functions
 * apart from the file, the system's random source and the optional verification memo (single-threaded
 * programs only: dht_ident_memo_enable); any thread.
 */
#ifndef DMOE_DHT_IDENT_H
#define DMOE_DHT_IDENT_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_id.h"

#define DHT_IDENT_PK_BYTES 32    /* an Ed25519 public key */
#define DHT_IDENT_SEED_BYTES 32  /* the seed a key pair is derived from (what the key file holds) */
#define DHT_IDENT_SIG_BYTES 64   /* an Ed25519 signature */

/* A key pair. sk is libsodium's 64-byte secret key (seed followed by the public key). */
typedef struct {
    uint8_t pk[DHT_IDENT_PK_BYTES];
    uint8_t sk[64];
} dht_ident;

/* dht_ident_init initialises libsodium (idempotent, thread-safe). Returns 0 or DMOE_EINTERNAL. */
int dht_ident_init(void);

/* dht_ident_generate fills *out with a fresh key pair from the system's random source. Returns 0 or
 * DMOE_EINTERNAL (libsodium could not start). */
int dht_ident_generate(dht_ident *out);

/* dht_ident_from_seed fills *out with the key pair derived from seed[0..32) (deterministic: for keys
 * kept in a file, and for tests). Returns 0 or DMOE_EINTERNAL. */
int dht_ident_from_seed(dht_ident *out, const uint8_t seed[DHT_IDENT_SEED_BYTES]);

/* dht_ident_for_test fills *out with the key pair derived from the 64-bit number n: predictable by anyone,
 * so for tests and simulations only (reproducible ids), never for a node on a network. Returns 0 or
 * DMOE_EINTERNAL. */
int dht_ident_for_test(dht_ident *out, uint64_t n);

/* dht_ident_id_of writes the node id of public key pk into *out. */
void dht_ident_id_of(const uint8_t pk[DHT_IDENT_PK_BYTES], dht_id *out);

/* dht_ident_id writes the node id of key pair k into *out. */
void dht_ident_id(const dht_ident *k, dht_id *out);

/* dht_ident_sign writes the Ed25519 signature of msg[0..len) by k into sig. */
void dht_ident_sign(const dht_ident *k, const void *msg, size_t len, uint8_t sig[DHT_IDENT_SIG_BYTES]);

/* dht_ident_verify returns 1 when sig is pk's valid signature of msg[0..len), else 0. */
int dht_ident_verify(const uint8_t pk[DHT_IDENT_PK_BYTES], const void *msg, size_t len,
                     const uint8_t sig[DHT_IDENT_SIG_BYTES]);

/* dht_ident_memo_enable makes dht_ident_verify remember the outcome of up to about `entries` distinct
 * (key, signature, message) triples -- identical bytes verify identically, so the answers are exact --
 * and answer repeats from memory; 0 turns it off. For a single-threaded process that verifies the same
 * records many times (the DHT simulator): the table has no lock, so never in a program whose threads
 * verify concurrently. Returns 0 or DMOE_ENOMEM (then it is off). */
int dht_ident_memo_enable(size_t entries);

/* dht_ident_counts writes how many signatures this process made, how many it verified with Ed25519,
 * and how many verifications the memo answered (dht_ident_memo_enable). */
void dht_ident_counts(unsigned long long *signs, unsigned long long *verifies, unsigned long long *memo_hits);

/* dht_ident_load_or_create reads the key file at path into *out or, when there is no file, creates it
 * (mode 0600, a fresh key) and sets *created to 1. Refuses, with a human message in err: a file group or
 * others may read or write, not a regular file, or malformed (DMOE_EINVAL); I/O failures (DMOE_EIO).
 * Returns 0 or the code; *out and *created are written only on success. */
int dht_ident_load_or_create(const char *path, dht_ident *out, int *created, char *err, size_t errlen);

/* dht_ident_random fills buf[0..n) with bytes from the system's random source (challenges), or from the
 * stream dht_ident_random_stream set. */
void dht_ident_random(void *buf, size_t n);

/* dht_ident_random_stream(key) makes dht_ident_random draw from the ChaCha20 key stream of key[32]
 * (each call a new nonce) instead of the system source -- as unpredictable to whoever lacks the key,
 * with no system call, and repeatable: for a single-threaded simulator (no lock). NULL returns to the
 * system source. */
void dht_ident_random_stream(const uint8_t *key);

/* dht_ident_wipe overwrites k with zeros (the secret key leaves memory). */
void dht_ident_wipe(dht_ident *k);

#endif
