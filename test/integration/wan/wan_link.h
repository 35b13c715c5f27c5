/* wan_link.h -- a link emulator for tests: a TCP relay on loopback that makes a loopback path look like
 * a wide-area link.
 *
 * A link listens on one address and relays every connection it accepts to one target address (a node),
 * both ways, through a queue per direction: each chunk read waits for the link's bandwidth (a per-
 * direction byte rate shared by all the link's connections, like one access link), then for the one-way
 * delay plus a random jitter, in order (a chunk never overtakes the one before it, as in TCP). While a
 * direction holds more than WAN_LINK_MAX_QUEUE bytes its sender is not read, so TCP's flow control pushes
 * back on the sender as a slow link would. A partition either holds everything (WAN_HOLD: a blackhole
 * that loses nothing -- bytes and new connections wait, as TCP would retransmit them once the partition
 * heals) or drops everything (WAN_DROP: every connection reset, new ones reset at once). A node put behind
 * a link announces the link's address (dmoe-node --announce_maddrs), so every peer reaches it through it.
 *
 * Order: wan_link_new -> run the event base -> wan_link_partition / wan_link_reset / wan_link_set at any
 * time -> wan_link_free. The test-only program build/test/wan-link (test/tools/wan-link.c) runs one link
 * and maps signals onto these calls for scripts and tests. Single-threaded: everything runs on the base.
 */
#ifndef DMOE_TEST_WAN_LINK_H
#define DMOE_TEST_WAN_LINK_H

#include <event2/event.h>
#include <stddef.h>
#include <sys/socket.h>

/* Bytes queued in one direction of one connection before its sender is no longer read. */
#define WAN_LINK_MAX_QUEUE (1 << 20)
/* Largest chunk a read is cut into, so that a rate cap spaces a large message out. */
#define WAN_LINK_CHUNK 16384

typedef struct {
    double delay_ms;    /* one-way delay, each direction (RTT = 2 x delay) */
    double jitter_ms;   /* plus a uniform random [0, jitter] per chunk (order kept) */
    double rate_kib_s;  /* per direction, all connections together; 0: unlimited */
} wan_link_cfg;

enum { WAN_OPEN = 0, WAN_HOLD = 1, WAN_DROP = 2 };

typedef struct wan_link wan_link;

/* wan_link_new listens on listen_addr (port 0: any; wan_link_port says which) and relays to target.
 * Returns the link, or NULL with err filled. */
wan_link *wan_link_new(struct event_base *base, const struct sockaddr *listen_addr, socklen_t listen_len,
                       const struct sockaddr *target, socklen_t target_len, const wan_link_cfg *cfg, char *err,
                       size_t errlen);
/* wan_link_port returns the port the link listens on. */
int wan_link_port(const wan_link *w);
/* wan_link_set changes delay, jitter and rate (for what is read from now on). */
void wan_link_set(wan_link *w, const wan_link_cfg *cfg);
/* wan_link_partition sets the partition: WAN_OPEN (heal: what was held flows on), WAN_HOLD or WAN_DROP. */
void wan_link_partition(wan_link *w, int mode);
/* wan_link_reset resets every connection now (TCP RST both ways); new ones are accepted as before. */
void wan_link_reset(wan_link *w);
/* wan_link_connections returns the connections relayed now. */
int wan_link_connections(const wan_link *w);
/* wan_link_free closes every connection and the listener. NULL is a no-op. */
void wan_link_free(wan_link *w);

#endif
