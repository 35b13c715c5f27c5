/* dht_storage.h -- a node's local DHT storage: values and dictionaries with expiration times.
 *
 * Semantics of hivemind's DHTLocalStorage / TimedStorage / DictionaryDHTValue, for opaque msgpack bytes:
 *  - a plain store of (key, value, expiration) succeeds if expiration is not in the past and the key
 *    holds nothing live or something that expires strictly earlier (a later plain value replaces a
 *    dictionary too);
 *  - a subkey store adds (subkey, value, expiration) to the dictionary at key: it makes one if the key
 *    holds nothing or a plain value expiring strictly earlier; in a dictionary each subkey keeps the
 *    entry with the latest expiration, and the dictionary's expiration is the latest of its subkeys'.
 *    Subkeys are opaque bytes too (a msgpack int or str, as the caller encoded it);
 *  - expired entries disappear when touched and in dht_storage_expire sweeps, which are bounded: one
 *    call drops at most expire_budget keys (the earliest expired first), the owner calls again while
 *    dht_storage_next_expiration is in the past, on a later turn of its loop;
 *  - signed records (dht_storage_store_signed; the caller has checked the signature, dht_trust.h) live in
 *    sealed dictionaries: a signed store replaces whatever unsigned content the key holds, whatever its
 *    expiration, and then adds entries by the dictionary rules above; an unsigned store (plain or subkey)
 *    to a key holding a sealed dictionary is refused. Since a record's subkey names its signer, one
 *    key's record never replaces another's; a full sealed dictionary refuses new subkeys rather than
 *    evicting one (its records are renewed under their own subkeys).
 * Bounds (dht_storage_limits): sizes of one value or subkey, subkeys per dictionary, keys and bytes in
 * total, and how far in the future an expiration may be. When a count or byte bound is reached the
 * entry that expires first is evicted, the newcomer included: if the newcomer would be that entry, the
 * store is refused. Owners (dht_storage_store_from): each value or dictionary entry may be charged to
 * an owner, a byte string naming who sent it (the node uses the sender's IP address); one owner holds
 * at most 1/owner_share of max_keys entries and of max_bytes, beyond which its stores are refused, so
 * one peer's flood fills its own share and evicts nobody. Entries with no owner (the node's own) are not
 * charged. Time is the caller's `now` (seconds, hivemind's get_dht_time()).
 *
 * No I/O, not thread-safe: one owner, the DHT actor. Pointers returned by dht_storage_get stay valid
 * until the next call that stores, expires or removes; a get of another key drops at most that key's
 * own entries, so it leaves them valid too.
 */
#ifndef DMOE_DHT_STORAGE_H
#define DMOE_DHT_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_id.h"

/* Defaults: generous for expert declarations ([uid, address] values of tens of bytes). */
#define DHT_MAX_VALUE_BYTES   (64 * 1024)       /* one value, as a peer may send it */
#define DHT_MAX_SUBKEY_BYTES  1024              /* one msgpack-encoded subkey */
#define DHT_MAX_SUBKEYS       4096              /* entries of one dictionary (a wide expert grid row) */
#define DHT_MAX_KEYS          (1 << 20)         /* keys held by one node */
#define DHT_MAX_BYTES         ((size_t)256 << 20) /* value + subkey bytes held by one node */
#define DHT_MAX_HORIZON       (24.0 * 3600)     /* expirations further ahead are refused */
/* One owner holds at most 1/16 of the entries and bytes: it takes 16 flooding addresses, not one, to
 * fill a node's store and start evicting others' records. */
#define DHT_OWNER_SHARE       16
#define DHT_OWNER_MAX_BYTES   64                /* an owner's name (an IP address as text) */
/* Keys one dht_storage_expire call drops: a node holding a million expired records frees them 1,024 at a
 * time (well under a millisecond each) over several loop turns instead of stalling its loop in one. */
#define DHT_EXPIRE_BUDGET     1024

typedef struct {
    size_t max_value_bytes, max_subkey_bytes, max_subkeys, max_keys, max_bytes;
    double max_horizon;
    size_t owner_share;    /* one owner: at most max_keys / owner_share entries, max_bytes / owner_share bytes */
    size_t expire_budget;  /* keys one dht_storage_expire call drops at most */
} dht_storage_limits;

/* One dictionary entry, as seen through dht_storage_get. */
typedef struct {
    const uint8_t *subkey;
    size_t sklen;
    const uint8_t *value;
    size_t vlen;
    double expiration;
} dht_subitem;

/* What a key holds: a plain value (is_dict 0: value, vlen) or a dictionary (is_dict 1: subs[nsubs],
 * unordered, all live). expiration is the value's, or the dictionary's latest. */
typedef struct {
    int is_dict;
    const uint8_t *value;
    size_t vlen;
    const dht_subitem *subs;
    size_t nsubs;
    double expiration;
    int sealed;            /* a dictionary of signed records */
} dht_stored;

typedef struct dht_storage dht_storage;

/* dht_storage_default_limits fills *lim with the DHT_MAX_* defaults. */
void dht_storage_default_limits(dht_storage_limits *lim);

/* dht_storage_new creates an empty storage with limits *lim (NULL: defaults; a 0 field: its default).
 * Returns 0 and *out, or DMOE_ENOMEM. */
int dht_storage_new(dht_storage **out, const dht_storage_limits *lim);

/* dht_storage_free frees s and everything in it; NULL is a no-op. */
void dht_storage_free(dht_storage *s);

/* dht_storage_store stores value[0..vlen) under key until expiration; with subkey != NULL, under
 * subkey[0..sklen) of key's dictionary. Copies the bytes. Returns 1 if stored, 0 if refused by the
 * rules above (past expiration, something newer there, or evicted at once when full); DMOE_ETOOBIG for
 * a value or subkey over its limit; DMOE_EINVAL for an expiration beyond now + max_horizon or not a
 * number; DMOE_ENOMEM (storage unchanged). */
int dht_storage_store(dht_storage *s, const dht_id *key, const void *subkey, size_t sklen, const void *value,
                      size_t vlen, double expiration, double now);

/* dht_storage_store_from stores as dht_storage_store does, charging the value (or dictionary entry) to
 * owner (a NUL-terminated name of at most DHT_OWNER_MAX_BYTES - 1 bytes; NULL: no owner). Returns what
 * dht_storage_store returns; 0 too when the owner's share is full (what it replaces of its own is
 * counted as freed). */
int dht_storage_store_from(dht_storage *s, const char *owner, const dht_id *key, const void *subkey, size_t sklen,
                           const void *value, size_t vlen, double expiration, double now);

/* dht_storage_store_signed stores a signed record (already checked by the caller) under subkey (not
 * NULL) of key's sealed dictionary, charged to owner as dht_storage_store_from; the sealed rules above.
 * Returns what dht_storage_store_from returns; DMOE_EINVAL too without a subkey. */
int dht_storage_store_signed(dht_storage *s, const char *owner, const dht_id *key, const void *subkey, size_t sklen,
                             const void *value, size_t vlen, double expiration, double now);

/* dht_storage_owner_usage writes the entries and bytes charged to owner into *items and *bytes (0 and 0
 * for an owner holding nothing). */
void dht_storage_owner_usage(const dht_storage *s, const char *owner, size_t *items, size_t *bytes);

/* dht_storage_get describes what key holds at now into *out, dropping expired entries first. Returns
 * 0, or DMOE_ENOTFOUND (*out untouched). The pointers in *out belong to s. */
int dht_storage_get(dht_storage *s, const dht_id *key, double now, dht_stored *out);

/* dht_storage_remove drops key and all it holds. Returns 0 or DMOE_ENOTFOUND. */
int dht_storage_remove(dht_storage *s, const dht_id *key);

/* dht_storage_expire drops the keys whose expiration is before now, earliest first, at most the limits'
 * expire_budget of them; when it returns the budget, more may be left (dht_storage_next_expiration is
 * then still before now): call again on a later turn. Expired subkeys of live dictionaries go when their
 * key is next read or written. Returns the number of keys dropped. */
size_t dht_storage_expire(dht_storage *s, double now);

/* dht_storage_count returns the number of keys held (some may have expired since the last sweep). */
size_t dht_storage_count(const dht_storage *s);

/* dht_storage_bytes returns the value and subkey bytes held. */
size_t dht_storage_bytes(const dht_storage *s);

/* dht_storage_next_expiration returns the earliest expiration held, or +inf when empty: the time at
 * which the owner should next call dht_storage_expire. */
double dht_storage_next_expiration(const dht_storage *s);

#endif
