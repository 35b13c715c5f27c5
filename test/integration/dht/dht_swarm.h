/* dht_swarm.h -- what the in-memory DHT tests share: a swarm of DHT nodes on one loop, a virtual clock
 * and a memnet (actors/dht/io/dht_memnet.h), driven in virtual time; and the record of one dht_store
 * or dht_get with its completion callbacks.
 *
 * Order: dht_swarm_init -> dht_swarm_add per node (dht_swarm_boot_from to join one through another) ->
 * dht_swarm_run_until / dht_swarm_run_cond -> ... -> dht_swarm_down, which also checks that no node's
 * handler stalled the loop longer than DHT_SWARM_MAX_STALL_US (issue 10: "the loop never stalls more
 * than 50 ms"; rt_lag.h: each node meters its own handlers). Calls count themselves in
 * s->pending (+1 when started, -1 in their callback), which is what dht_swarm_run_until waits for.
 * Failures are Criterion assertions. Loop thread only (the test's).
 */
#ifndef DMOE_TEST_DHT_SWARM_H
#define DMOE_TEST_DHT_SWARM_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_lookup.h"
#include "actors/dht/dht_node.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/dht/io/dht_memnet.h"

#define DHT_SWARM_MAX 96

/* The longest one handler of a node may keep the loop: 50 ms of thread CPU time. CPU time, not wall
 * time, because the tests share a loaded machine: the wall time of a handler adds whatever the OS ran
 * meanwhile (rt_lag.h), which says nothing about the node. Under ASan+UBSan (make test SAN=1) the same
 * work runs 2-3 times slower, so such a build allows 4 times as much: still far below the seconds an
 * unbounded scan of a large store takes. */
#if defined(__SANITIZE_ADDRESS__)
#define DHT_SWARM_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DHT_SWARM_SANITIZED 1
#endif
#endif
#ifdef DHT_SWARM_SANITIZED
#define DHT_SWARM_MAX_STALL_US 200000
#else
#define DHT_SWARM_MAX_STALL_US 50000
#endif

typedef struct dht_swarm dht_swarm;
typedef int (*dht_swarm_pred)(dht_swarm *s, void *arg);

struct dht_swarm {
    rt_loop *l;
    dht_clock *clock;            /* virtual */
    dht_memnet *net;
    dht *nodes[DHT_SWARM_MAX];
    int ep[DHT_SWARM_MAX];       /* each node's memnet endpoint */
    size_t n;
    size_t bucket_size;          /* for the nodes dht_swarm_add makes (0: the default) */
    uint64_t rpc_timeout_ms;
    const dht_trust *trusted;    /* trusted keys of the nodes dht_swarm_add makes (NULL: an open swarm) */
    int pending;                 /* calls in flight */
    dht_swarm_pred pred;
    void *pred_arg;
};

/* dht_swarm_init makes an empty swarm: a loop, a virtual clock, a memnet with 1 ms each way. */
void dht_swarm_init(dht_swarm *s, size_t bucket_size, uint64_t rpc_timeout_ms);
/* dht_swarm_add adds a node with the test key of number seed (so its id), bound to a new endpoint;
 * colocate_with >= 0 puts it on that endpoint's IP address; limits may be NULL (the defaults). */
dht *dht_swarm_add(dht_swarm *s, uint64_t seed, int colocate_with, const dht_storage_limits *limits);
/* dht_swarm_boot_from starts d's bootstrap from swarm node `from` (pending counts it). */
void dht_swarm_boot_from(dht_swarm *s, dht *d, size_t from);
/* dht_swarm_run_cond runs the swarm until pred holds (NULL: pending drops to 0) or ms of virtual time
 * pass; returns 1 if it did. dht_swarm_run_until is dht_swarm_run_cond with pred NULL. */
int dht_swarm_run_cond(dht_swarm *s, dht_swarm_pred pred, void *arg, int ms);
int dht_swarm_run_until(dht_swarm *s, int ms);
/* dht_swarm_stall returns the worst stall of the swarm's nodes so far: the largest max_cpu_us and
 * max_wall_us of their meters (dht_node_lag), in *cpu_us and *wall_us. */
void dht_swarm_stall(const dht_swarm *s, uint64_t *cpu_us, uint64_t *wall_us);
/* dht_swarm_expect_no_stall expects every node's worst handler within DHT_SWARM_MAX_STALL_US of CPU
 * time; with what != NULL it also prints the worst stall (CPU and wall) under that name. */
void dht_swarm_expect_no_stall(const dht_swarm *s, const char *what);
/* dht_swarm_down expects no stall (dht_swarm_expect_no_stall), then stops every node, frees the memnet,
 * the nodes, the loop and the clock. */
void dht_swarm_down(dht_swarm *s);

/* One dht_store or dht_get: what its callback recorded. */
typedef struct {
    int *pending;
    dht_clock *clock;
    int called, err, found, is_dict, hops;
    uint8_t value[16];             /* a plain value found, when it fits */
    size_t vlen, nsubs, rpcs, slow, n_stored;
    double expiration;
} dht_test_op;

/* DHT_TEST_OP(sw) is a fresh op of swarm sw. */
#define DHT_TEST_OP(sw) ((dht_test_op){ .pending = &(sw)->pending, .clock = (sw)->clock })

/* dht_test_on_store is a dht_store callback: records err and n_stored into the op arg. */
void dht_test_on_store(void *arg, int err, const char *msg, size_t n_stored);
/* dht_test_on_get is a dht_get callback: records err, what was found and the lookup's figures. */
void dht_test_on_get(void *arg, int err, const char *msg, const dht_get_result *r);

#endif
