/* dht_cmds.h -- dmoe-call's DHT commands, run on a joined client-mode node (actors/dht/io/dht_join.h):
 *
 *   find UID...                              where each expert is hosted, or "not found"
 *   dht store KEY VALUE --expiration S [--subkey S]
 *   dht get KEY [--latest]
 *
 * Keys and string values are msgpack strings (as hivemind's DHT stores Python str); a subkey that is a
 * decimal integer is stored as an integer, like hivemind's expert coordinates. Each command prints a
 * human summary or JSON on stdout (a failed lookup: a line on stderr) and calls done(arg, status) once,
 * later. Only dmoe-call links this file. Loop thread only.
 */
#ifndef DMOE_CMD_CALL_DHT_CMDS_H
#define DMOE_CMD_CALL_DHT_CMDS_H

#include <stddef.h>

#include "actors/dht/dht_node.h"

typedef void (*dht_cmd_done)(void *arg, int status);

/* dht_cmd_find runs `find` for uids[0..n) (borrowed until done runs) on d; prints one line per uid (or
 * JSON); done gets 0 when all were found, 1 otherwise. Returns 0 or a negative code with err (then done
 * is not called). */
int dht_cmd_find(dht *d, const char *const *uids, size_t n, int json, dht_cmd_done done, void *arg, char *err,
                 size_t errlen);
/* dht_cmd_store runs `dht store`. subkey may be NULL. done gets 0 when a replica took the value. */
int dht_cmd_store(dht *d, const char *key, const char *value, const char *subkey, double expiration_s, int json,
                  dht_cmd_done done, void *arg, char *err, size_t errlen);
/* dht_cmd_get runs `dht get`. done gets 0 when a value was found, 1 when not. */
int dht_cmd_get(dht *d, const char *key, int latest, int json, dht_cmd_done done, void *arg, char *err,
                size_t errlen);

#endif
