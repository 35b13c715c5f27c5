/* dht_cli.h -- a short-lived client-mode DHT node for command-line tools, and dmoe-call's DHT commands.
 *
 * dht_cli_join creates a client-mode DHT node on the caller's loop and client (it answers no requests
 * and never enters others' routing tables), bootstraps it from the initial peers, and calls back once:
 * joined, or failed with a message naming the peers that did not answer. The commands then run on it:
 *
 *   find UID...                              where each expert is hosted, or "not found"
 *   dht store KEY VALUE --expiration S [--subkey S]
 *   dht get KEY [--latest]
 *
 * Keys and string values are msgpack strings (as hivemind's DHT stores Python str); a subkey that is a
 * decimal integer is stored as an integer, like hivemind's expert coordinates. Each command prints a
 * human summary or JSON and calls done(arg, status) once. Loop thread only.
 */
#ifndef DMOE_DHT_CLI_H
#define DMOE_DHT_CLI_H

#include "actors/net/client.h"
#include "actors/dht/dht_node.h"

typedef struct dht_cli dht_cli;

typedef void (*dht_cli_joined)(void *arg, int err, const char *msg);
typedef void (*dht_cli_done)(void *arg, int status);

/* dht_cli_join starts joining through peers[0..n). Returns NULL with err filled when the node cannot be
 * created or an address is malformed; else the callback runs later, once. */
dht_cli *dht_cli_join(rt_loop *l, client *cl, const char *const *peers, size_t n, dht_cli_joined cb, void *arg,
                      char *err, size_t errlen);
/* dht_cli_node returns the DHT node, for lookups of one's own. */
dht *dht_cli_node(dht_cli *c);
/* dht_cli_find runs `find` for uids[0..n); prints one line per uid (or JSON); done gets 0 when all were
 * found, 1 otherwise. Returns 0 or a negative code with err (then done is not called). */
int dht_cli_find(dht_cli *c, const char *const *uids, size_t n, int json, dht_cli_done done, void *arg, char *err,
                 size_t errlen);
/* dht_cli_store runs `dht store`. subkey may be NULL. done gets 0 when a replica took the value. */
int dht_cli_store(dht_cli *c, const char *key, const char *value, const char *subkey, double expiration_s, int json,
                  dht_cli_done done, void *arg, char *err, size_t errlen);
/* dht_cli_get runs `dht get`. done gets 0 when a value was found, 1 when not. */
int dht_cli_get(dht_cli *c, const char *key, int latest, int json, dht_cli_done done, void *arg, char *err,
                size_t errlen);
/* dht_cli_free stops and frees the node (before the client is freed). NULL is a no-op. */
void dht_cli_free(dht_cli *c);

#endif
