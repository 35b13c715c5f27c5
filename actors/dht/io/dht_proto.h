/* dht_proto.h -- the DHT's RPCs as msgpack request and reply maps (wire/PROTOCOL_DHT.md is normative).
 *
 *   dht_ping  {id, method, node: PEER | nil, challenge?}                       -> {node: PEER | nil, proof?}
 *   dht_store {id, method, keys: [bin16...], subkeys: [nil | bin...], values: [bin...],
 *              expirations: [float...], in_cache: bool, sender: PEER | nil, challenge?}
 *                                                                        -> {stored: [bool...], node, proof?}
 *   dht_find  {id, method, keys: [bin16...], sender: PEER | nil, challenge?, token?}
 *                                                    -> {results: [RESULT...], node, proof?, truncated?}
 *   PEER   = {id: 32 hex digits, addr: "/ip4/A.B.C.D/tcp/PORT/p2p/ID"}  (nil: a client-mode node)
 *   challenge = bin32 (random); proof = {pubkey: bin32, sig: bin64}, Ed25519 over DHT_PROOF_TAG || challenge
 *              || the PEER's 16-byte id || the PEER's addr string as sent (present when a challenge was)
 *   token = bin16, truncated = {token: bin16}: a reply cut to the requester's unproven-address cap carries
 *              a token for the address it was sent to; the same request sent again with it gets it all
 *   RESULT = {type: 0 none | 1 value | 2 dictionary, expiration: float (types 1, 2), value: bin (type 1),
 *             dict: {subkey bin: [value bin, expiration float]} (type 2), nearest: [[bin16, addr]...]}
 *
 * Encoders build a whole wire_out (the caller owns it and sends or frees it). Decoders read a request's
 * root map or a reply's result and check every bound a peer could abuse -- ids exactly 16 bytes, keys
 * per bulk request, value and subkey sizes, dictionary entries, nearest peers, expirations finite and
 * at most DHT_MAX_HORIZON ahead of `now`, addresses well-formed /ip4 or /ip6 multiaddrs whose /p2p/
 * part (when present) is the peer's own id -- returning DMOE_EINVAL (missing or mistyped field, bad
 * value) or DMOE_ETOOBIG (over a bound) with a human message in err. Decoded byte strings point into
 * the message: they live as long as the wire_msg.
 *
 * Pure functions of their arguments: no I/O, no state, any thread.
 */
#ifndef DMOE_DHT_PROTO_H
#define DMOE_DHT_PROTO_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_id.h"
#include "actors/dht/trust/dht_ident.h"
#include "actors/dht/dht_routing.h"
#include "actors/dht/dht_storage.h"
#include "wire/wire_maddr.h"
#include "wire/wire_msg.h"

/* Keys in one bulk dht_store or dht_find: bounds the work one request can ask of a node. */
#define DHT_PROTO_MAX_KEYS 64
/* Peers listed per key in a find reply: k (20) is what nodes send; a little slack for other builds. */
#define DHT_PROTO_MAX_NEAREST 32

/* Identity proofs (wire/PROTOCOL_DHT.md, "Identity"): a request may carry a random challenge; the
 * answering node signs the tag, the challenge, its id and its PEER's addr string. */
#define DHT_CHALLENGE_BYTES 32
#define DHT_PROOF_TAG "dmoe-dht-proof-v1"
#define DHT_PROOF_MSG_MAX (sizeof DHT_PROOF_TAG - 1 + DHT_CHALLENGE_BYTES + DHT_ID_BYTES + WIRE_MADDR_TEXT)

/* Address tokens (wire/PROTOCOL_DHT.md, "Reply sizes"): what a cut find reply hands its requester. */
#define DHT_TOKEN_BYTES 16

/* A proof to send with a reply: present 0 means none. */
typedef struct {
    int present;
    uint8_t pk[DHT_IDENT_PK_BYTES];
    uint8_t sig[DHT_IDENT_SIG_BYTES];
} dht_proof;

/* Outcomes of one key in a find reply. */
enum { DHT_FOUND_NONE = 0, DHT_FOUND_VALUE = 1, DHT_FOUND_DICT = 2 };

/* Who sent a message: present 0 means nil (a client-mode node, never to be added to a routing table). */
typedef struct {
    int present;
    dht_id id;
    dht_addr addr;
} dht_peer_info;

/* One record of a bulk store: subkey NULL for a plain value. */
typedef struct {
    dht_id key;
    const uint8_t *subkey;
    size_t sklen;
    const uint8_t *value;
    size_t vlen;
    double expiration;
} dht_store_item;

/* A decoded dht_store request. */
typedef struct {
    dht_peer_info sender;
    int in_cache;
    size_t n;
    dht_store_item items[DHT_PROTO_MAX_KEYS];
} dht_store_req;

/* A decoded dht_find request. */
typedef struct {
    dht_peer_info sender;
    size_t n;
    dht_id keys[DHT_PROTO_MAX_KEYS];
} dht_find_req;

/* What a node answers for one key of a find: found (NULL: nothing) and the peers it knows nearest. */
typedef struct {
    const dht_stored *found;
    const dht_node *nearest;
    size_t n_nearest;
} dht_find_entry;

/* One key of a decoded find reply. subs is malloc'd (freed by dht_proto_find_rep_free); the byte
 * pointers inside point into the message. */
typedef struct {
    int type;
    const uint8_t *value;
    size_t vlen;
    dht_subitem *subs;
    size_t nsubs;
    double expiration;
    size_t n_nearest;
    dht_node nearest[DHT_PROTO_MAX_NEAREST];
} dht_find_result;

/* A decoded find reply. truncated 1: the reply was cut to the cap on replies to unproven addresses, and
 * token is what to send with the request again. */
typedef struct {
    dht_peer_info node;
    size_t n;
    dht_find_result *results;  /* malloc'd, n entries */
    int truncated;
    uint8_t token[DHT_TOKEN_BYTES];
} dht_find_rep;

/* A decoded store reply. */
typedef struct {
    dht_peer_info node;
    size_t n;
    uint8_t stored[DHT_PROTO_MAX_KEYS];
} dht_store_rep;

/* dht_proto_addr_to_maddr writes the multiaddr of a peer at a with id (NULL: no /p2p/ part) into *out.
 * Returns 0 or DMOE_EINVAL when a->host is not an IPv4 or IPv6 literal. */
int dht_proto_addr_to_maddr(const dht_addr *a, const dht_id *id, wire_maddr *out);

/* dht_proto_parse_peer reads a multiaddr text into *addr and, when it has a /p2p/ part of exactly 32
 * hex digits, the id into *id and *has_id = 1 (else *has_id = 0). Only /ip4 and /ip6 are accepted.
 * Returns 0 or DMOE_EINVAL with err filled; outputs are written only on success. */
int dht_proto_parse_peer(const char *text, dht_addr *addr, dht_id *id, int *has_id, char *err, size_t errlen);

/* dht_proto_challenge_decode reads the optional "challenge" of a request's root map: *has 1 and out[], or
 * *has 0 when absent or nil. Returns 0 or DMOE_EINVAL (not 32 bytes of bin). */
int dht_proto_challenge_decode(const msgpack_object *root, uint8_t out[DHT_CHALLENGE_BYTES], int *has, char *err,
                               size_t errlen);
/* dht_proto_proof_make signs challenge for the PEER self (present, with an /ip4 or /ip6 address) with key
 * k, whose id self->id must be. Returns 0 and *out, or DMOE_EINVAL (no address to sign). */
int dht_proto_proof_make(const dht_ident *k, const uint8_t challenge[DHT_CHALLENGE_BYTES], const dht_peer_info *self,
                         dht_proof *out);
/* dht_proto_proof_check checks the proof in a reply's result against the challenge we sent: who (the
 * decoded "node" of that result) must be present, its id the hash of the proof's pubkey, and sig that
 * key's signature over the tag, challenge, id and the addr string exactly as in the result. Returns 0
 * (proven) or DMOE_EINVAL with err filled. */
int dht_proto_proof_check(const msgpack_object *result, const uint8_t challenge[DHT_CHALLENGE_BYTES],
                          const dht_peer_info *who, char *err, size_t errlen);

/* dht_proto_ping_req returns a new dht_ping request (NULL when out of memory); self may be NULL or not
 * present (client mode); challenge NULL or DHT_CHALLENGE_BYTES to be signed. The caller owns the result. */
wire_out *dht_proto_ping_req(uint64_t id, const dht_peer_info *self, const uint8_t *challenge);
/* dht_proto_ping_reply returns the reply to a ping (NULL when out of memory), with proof when it is not
 * NULL and present. */
wire_out *dht_proto_ping_reply(uint64_t id, const dht_peer_info *self, const dht_proof *proof);
/* dht_proto_peer_decode reads the PEER or nil under key of map into *out. Returns 0, DMOE_EINVAL. */
int dht_proto_peer_decode(const msgpack_object *map, const char *key, dht_peer_info *out, char *err, size_t errlen);

/* dht_proto_store_req returns a dht_store request for items[0..n) (n 1..DHT_PROTO_MAX_KEYS), or NULL
 * when out of memory or n is out of range. The bytes are copied. challenge: as dht_proto_ping_req. */
wire_out *dht_proto_store_req(uint64_t id, const dht_peer_info *sender, const dht_store_item *items, size_t n,
                              int in_cache, const uint8_t *challenge);
/* dht_proto_store_decode reads a dht_store request's root map into *out (pointers into root). Returns 0,
 * DMOE_EINVAL or DMOE_ETOOBIG with err filled. */
int dht_proto_store_decode(const msgpack_object *root, double now, dht_store_req *out, char *err, size_t errlen);
/* dht_proto_store_reply returns the reply {stored, node, proof?} (NULL when out of memory). */
wire_out *dht_proto_store_reply(uint64_t id, const dht_peer_info *self, const uint8_t *stored, size_t n,
                                const dht_proof *proof);
/* dht_proto_store_rep_decode reads a store reply's result, which must list exactly expect_n flags.
 * Returns 0, DMOE_EINVAL or DMOE_ETOOBIG. */
int dht_proto_store_rep_decode(const msgpack_object *result, size_t expect_n, dht_store_rep *out, char *err,
                               size_t errlen);

/* dht_proto_find_req returns a dht_find request for keys[0..n), or NULL (out of memory, n out of range);
 * challenge as dht_proto_ping_req. */
wire_out *dht_proto_find_req(uint64_t id, const dht_peer_info *sender, const dht_id *keys, size_t n,
                             const uint8_t *challenge);
/* dht_proto_find_req_token is dht_proto_find_req with an address token (NULL: none) a cut reply gave. */
wire_out *dht_proto_find_req_token(uint64_t id, const dht_peer_info *sender, const dht_id *keys, size_t n,
                                   const uint8_t *challenge, const uint8_t *token);
/* dht_proto_token_decode reads the optional "token" of a request's root map: *has 1 and out[], or *has 0
 * when absent or nil. Returns 0 or DMOE_EINVAL (not DHT_TOKEN_BYTES of bin). */
int dht_proto_token_decode(const msgpack_object *root, uint8_t out[DHT_TOKEN_BYTES], int *has, char *err,
                           size_t errlen);
/* dht_proto_find_decode reads a dht_find request. Returns 0, DMOE_EINVAL or DMOE_ETOOBIG. */
int dht_proto_find_decode(const msgpack_object *root, dht_find_req *out, char *err, size_t errlen);
/* dht_proto_find_reply returns the reply for entries[0..n), with proof when present (NULL when out of
 * memory). */
wire_out *dht_proto_find_reply(uint64_t id, const dht_peer_info *self, const dht_find_entry *entries, size_t n,
                               const dht_proof *proof);
/* dht_proto_find_reply_cut is dht_proto_find_reply for a reply cut to the cap, with "truncated" carrying
 * token (DHT_TOKEN_BYTES). */
wire_out *dht_proto_find_reply_cut(uint64_t id, const dht_peer_info *self, const dht_find_entry *entries, size_t n,
                                   const dht_proof *proof, const uint8_t *token);
/* dht_proto_find_rep_decode reads a find reply's result, which must hold exactly expect_n results.
 * Returns 0 (then free with dht_proto_find_rep_free), DMOE_EINVAL, DMOE_ETOOBIG or DMOE_ENOMEM; on
 * failure nothing needs freeing. */
int dht_proto_find_rep_decode(const msgpack_object *result, size_t expect_n, double now, dht_find_rep *out,
                              char *err, size_t errlen);
/* dht_proto_find_rep_free frees what dht_proto_find_rep_decode allocated; a zeroed rep is a no-op. */
void dht_proto_find_rep_free(dht_find_rep *rep);

#endif
