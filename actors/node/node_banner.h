/* node_banner.h -- the lines a dmoe node logs when it starts, as the one place that both writes and
 * reads them: node.c prints them with the prefixes below, and node_banner_parse reads them back out of
 * a node's log for whoever started it (dmoe-bench, the integration tests; scripts/lib.sh is the shell's
 * copy of the same parse).
 *
 * The lines, in the order a node prints them:
 *   Listening on /ip4/127.0.0.1/tcp/PORT              (one per bound address; the first is read)
 *   Announcing /ip4/127.0.0.1/tcp/PORT                (one per address told to others: never a wildcard)
 *   Running DHT node on ['MADDR'], initial peers = [...]   (MADDR is "client mode" in client mode)
 *   Server started with N experts                     (the node serves: it is ready)
 *
 * node_banner_wait polls a log file until the node is ready, has exited, or the time is up. It blocks
 * (sleeps between reads): for programs and tests that start nodes, never for a loop thread.
 */
#ifndef DMOE_NODE_BANNER_H
#define DMOE_NODE_BANNER_H

#include <stddef.h>
#include <sys/types.h>

#include "wire/wire_maddr.h"

#define NODE_BANNER_LISTENING "Listening on "           /* + the address */
#define NODE_BANNER_ANNOUNCING "Announcing "         /* + the address */
#define NODE_BANNER_DHT "Running DHT node on ['"        /* + the DHT multiaddr + "']" */
#define NODE_BANNER_STARTED "Server started"            /* + " with N experts" */

#define NODE_BANNER_DHT_MAX 256   /* a DHT multiaddr with its /p2p/ id fits */

/* What a node's start-up lines said. */
typedef struct {
    int listening;                        /* a "Listening on" line with an address that parses */
    wire_maddr addr;                      /* its address, or the first announced one when it is a wildcard */
    char addr_text[WIRE_MADDR_TEXT];      /* addr as printed */
    char dht_maddr[NODE_BANNER_DHT_MAX];  /* from "Running DHT node on ['...']", "" when not printed */
    int started;                          /* "Server started" was printed */
} node_banner;

/* node_banner_parse reads the start-up lines out of log (a NUL-terminated text, the caller's) into *b
 * (zeroed first). Returns 1 when the node is ready (listening and started), 0 when not yet. */
int node_banner_parse(const char *log, node_banner *b);

/* node_banner_wait reads the log file at log_path every 20 ms until node_banner_parse says the node
 * is ready (returns 0 with *b filled), the process pid has exited (DMOE_EIO), or timeout_s has passed
 * (DMOE_ETIMEDOUT). *b holds what the log said at the last read in every case. */
int node_banner_wait(const char *log_path, pid_t pid, double timeout_s, node_banner *b);

#endif
