/* dht_boot.c -- the DHT bootstrap (see dht_boot.h).
 *
 * Design notes. A boot is an actor (for its retry timer, and so that cb never runs inside
 * dht_node_bootstrap: even round 0 starts from the timer) with a part on its node (so that
 * dht_node_stop ends it). It finishes once -- cb runs, the part is detached -- but its memory stays
 * while pings or its own-id lookup are still out, since each completion points into it; the actor is
 * stopped (and freed after the round) when the last one is back. Completions of pings and of the
 * lookup come from the node's RPC machinery, not from this actor's handler.
 */
#include "actors/dht/dht_boot.h"

#include <stdio.h>
#include <stdlib.h>

#include "actors/dht/dht_lookup.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

enum { MSG_ROUND = 1 };

typedef struct boot boot;

typedef struct {
    boot *b;
    char text[WIRE_MADDR_TEXT];
    dht_addr addr;
    dht_id id;
    int has_id, ok;
    char why[160];
} boot_peer;

struct boot {
    rt_actor actor;
    dht_part part;
    dht_timer timer;
    dht *d;
    boot_peer peers[DHT_MAX_INITIAL_PEERS];
    size_t n, pings;             /* pings: in flight */
    int round, looking, finished;
    dht_bootstrap_cb cb;
    void *arg;
};

/* The kind of a boot's part. */
static const char boot_kind = 0;

static void maybe_reap(boot *b)
{
    if (b->finished && b->pings == 0 && !b->looking) rt_actor_stop(&b->actor);
}

static void finish(boot *b, int err, const char *msg)
{
    if (b->finished) return;
    b->finished = 1;
    dht_node_detach(b->d, &b->part);
    dht_timer_cancel(&b->timer);
    b->cb(b->arg, err, msg);
    maybe_reap(b);
}

static void check(boot *b);

static void on_found(void *arg, int err, const char *msg, const dht_node *nearest, size_t n, int hops)
{
    boot *b = arg;
    b->looking = 0;
    LOG_DEBUG("bootstrap lookup found %zu nodes in %d hops", n, hops);
    if (err != DMOE_ESHUTDOWN && !b->finished && dht_routing_size(dht_node_routing(b->d)) == 0) {
        /* The peers that answered our pings failed the lookup (lost, or gone since) and were evicted:
         * the table is empty, so we have not joined. Ping them again (check retries or gives up). */
        for (size_t i = 0; i < b->n; i++) {
            b->peers[i].ok = 0;
            snprintf(b->peers[i].why, sizeof b->peers[i].why, "answered a ping, then failed the lookup of our id");
        }
        check(b);
        maybe_reap(b);
        return;
    }
    finish(b, err == DMOE_ESHUTDOWN ? err : 0, err == DMOE_ESHUTDOWN ? msg : "");
    maybe_reap(b);
}

/* check runs when a round's last ping is back: look our id up, retry, or give up. */
static void check(boot *b)
{
    if (b->finished || b->pings > 0) return;
    size_t ok = 0;
    for (size_t i = 0; i < b->n; i++) ok += b->peers[i].ok;
    if (dht_node_is_stopped(b->d)) {
        finish(b, DMOE_ESHUTDOWN, "the DHT node is stopping");
    } else if (ok > 0) {
        b->looking = 1;
        if (dht_find_nodes(b->d, dht_node_id(b->d), 0, on_found, b) != 0) {
            b->looking = 0;
            finish(b, 0, "");
        }
    } else if (b->round < dht_node_cfg(b->d)->bootstrap_retries) {
        b->round++;
        if (dht_timer_start(&b->timer, dht_node_cfg(b->d)->bootstrap_retry_ms, 0) != 0)
            finish(b, DMOE_ENOMEM, "out of memory arming the bootstrap retry");
    } else {
        char m[1024];
        size_t off = (size_t)snprintf(m, sizeof m,
                                      "DHT bootstrap failed after %d attempts: none of the initial peers answered:",
                                      b->round + 1);
        for (size_t i = 0; i < b->n && off < sizeof m; i++)
            off += (size_t)snprintf(m + off, sizeof m - off, "%s %s (%s)", i ? ";" : "", b->peers[i].text,
                                    b->peers[i].why);
        LOG_WARN("%s", m);
        finish(b, DMOE_ECONN, m);
    }
}

static void on_pinged(void *arg, int err, const char *msg, const dht_peer_info *who)
{
    boot_peer *p = arg;
    boot *b = p->b;
    b->pings--;
    if (err == 0) p->ok = 1;
    else snprintf(p->why, sizeof p->why, "%s", msg && msg[0] ? msg : dmoe_strerror(err));
    check(b);
    maybe_reap(b);
}

static void run_round(boot *b)
{
    b->pings++;   /* held while sending, so that a synchronous failure cannot end the round early */
    for (size_t i = 0; i < b->n; i++) {
        boot_peer *p = &b->peers[i];
        if (p->ok) continue;
        b->pings++;
        dht_node peer = { .id = p->id, .addr = p->addr };
        /* A new round is a deliberate retry: lift the ban the previous failure put on the address. */
        dht_blacklist_ok(dht_node_blacklist(b->d), &p->addr);
        int rc = dht_node_ping(b->d, &peer, p->has_id, on_pinged, p);
        if (rc) on_pinged(p, rc, dmoe_strerror(rc), NULL);
    }
    b->pings--;
    check(b);
}

static void handle(rt_actor *self, rt_msg *m)
{
    boot *b = (boot *)self;
    if (!b->finished) {
        if (b->n == 0) finish(b, 0, "");   /* a first node: nobody to ping */
        else run_round(b);
    }
    rt_msg_drop(m);
}

static void destroy(rt_actor *self)
{
    boot *b = (boot *)self;
    dht_timer_deinit(&b->timer);
    free(b);
}

static void part_stop(dht_part *p)
{
    boot *b = (boot *)((char *)p - offsetof(boot, part));
    finish(b, DMOE_ESHUTDOWN, "the DHT node is stopping");
}

int dht_node_bootstrap(dht *d, const char *const *peers, size_t n, dht_bootstrap_cb cb, void *arg, char *err,
                       size_t errlen)
{
    if (dht_node_is_stopped(d)) return DMOE_ESHUTDOWN;
    if (dht_node_part(d, &boot_kind)) {
        snprintf(err, errlen, "a bootstrap is already running");
        return DMOE_EINVAL;
    }
    if (n > DHT_MAX_INITIAL_PEERS) {
        snprintf(err, errlen, "%zu initial peers, at most %d", n, DHT_MAX_INITIAL_PEERS);
        return DMOE_ETOOBIG;
    }
    boot *b = calloc(1, sizeof *b);
    if (!b) return DMOE_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        boot_peer *p = &b->peers[i];
        p->b = b;
        int rc = dht_proto_parse_peer(peers[i], &p->addr, &p->id, &p->has_id, err, errlen);
        if (rc) {
            free(b);
            return rc;
        }
        snprintf(p->text, sizeof p->text, "%s", peers[i]);
    }
    rt_actor_init(&b->actor, dht_node_loop(d), "dht_boot", handle, destroy);
    if (dht_lookup_attach(d) != 0 || dht_timer_init(&b->timer, dht_node_clock(d), &b->actor, MSG_ROUND) != 0 ||
        dht_timer_start(&b->timer, 0, 0) != 0) {
        dht_timer_deinit(&b->timer);
        free(b);
        return DMOE_ENOMEM;
    }
    b->d = d;
    b->n = n;
    b->cb = cb;
    b->arg = arg;
    b->part = (dht_part){ NULL, &boot_kind, part_stop, NULL, NULL };
    dht_node_attach(d, &b->part);
    return 0;
}
