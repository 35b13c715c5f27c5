/* dht_sim_impl.h -- the simulator's state, shared by its two rooms (not for callers: dht_sim.h).
 *
 *  - dht_sim.c: the population (peers, trainers, churn), the network model (latency, loss), the
 *    workloads (declarations, lookups) and the figures;
 *  - dht_sim_hostile.c: what hostile peers answer in place of their node (a memnet intercept), the
 *    colluders' id index they answer from, and the grinding of sybil ids next to hot uids.
 * The helpers both use are inline here, so that dht_sim.c calls dht_sim_hostile.c and not the other way.
 * Include dht_sim.h first (this header completes its types without including it, as dht_node_impl.h).
 * Single-threaded: everything runs on the simulation's loop.
 */
#ifndef DMOE_DHT_SIM_IMPL_H
#define DMOE_DHT_SIM_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "actors/dht/dht_node.h"
#include "actors/dht/io/dht_clock.h"
#include "actors/dht/io/dht_memnet.h"
#include "runtime/rt_map.h"

#ifndef DMOE_DHT_SIM_H
#error "include actors/dht/sim/dht_sim.h before actors/dht/sim/dht_sim_impl.h"
#endif

/* One peer, from its join to its leave (and after, as a record: indices stay valid). */
typedef struct {
    dht *d;                    /* NULL once it left (freed) */
    dht_id id;
    int ep;                    /* memnet endpoint */
    int role;                  /* server role it holds (-1: none) */
    uint8_t alive, booted, hostile, sybil, trainer;
    double leave_at;           /* virtual seconds */
    uint8_t *forged;           /* hostile: a record-shaped value with a signature that verifies for nothing */
    size_t forged_len;
} sim_peer;

/* A server role: a block of uids held by one live peer at a time. */
typedef struct {
    size_t peer;               /* the peer holding it */
    double next_decl;          /* virtual seconds */
    int declared;              /* the holder's first declaration reached a replica */
} sim_role;

typedef struct sim sim;
struct sim {
    rt_actor actor;
    dht_sim_cfg cfg;
    rt_loop *l;
    dht_clock *clock;
    dht_memnet *net;
    dht_timer tick;
    uint64_t rng;
    sim_peer *peers;
    size_t np, capp;
    rt_map by_id;              /* node id -> peer index + 1 */
    size_t *up;                /* indices of live non-trainer peers (any order) */
    size_t nup;
    size_t *trainers;
    size_t ntrainers;
    sim_role *roles;
    size_t nroles, nuids;
    char (*uid_names)[32];
    dht_id *uid_ids, *prefix_ids;
    char (*prefix_names)[32];
    /* leaves, a min-heap on leave_at */
    size_t *leave_heap;
    size_t nleave, capleave;
    dht **graveyard;           /* nodes that left, freed on the next tick (their mail drained) */
    size_t ngrave, capgrave;
    /* hostile peers' index (dht_sim_hostile.c) */
    size_t *hostile_sorted;    /* live hostile peers, by id */
    size_t nhostile;
    int hostile_dirty;
    /* run state */
    double now_s, step_credit;
    int measuring, finished;
    int building;              /* the first peers: their uptimes are residual ones (dht_sim.c) */
    size_t in_flight;
    dht_memnet_traffic t0;     /* trainers' traffic when measuring began */
    /* figures */
    dht_sim_result *res;
    int *hops;
    double *lat;
    size_t nh, caph;
    uint64_t rpcs_sum, slow_sum;
    size_t ops_measured;       /* lookups of either kind started while measuring */
};

/* sim_rand returns the next number of the simulation's generator (splitmix64). */
static inline uint64_t sim_rand(sim *s)
{
    uint64_t z = (s->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* sim_uniform returns a number in [0, 1). */
static inline double sim_uniform(sim *s) { return (double)(sim_rand(s) >> 11) * (1.0 / 9007199254740992.0); }

/* sim_peer_addr writes peer p's address into *a: endpoint i is 10.x.y.z with x.y.z = i + 1, port 7000
 * (dht_memnet_add's numbering). */
static inline void sim_peer_addr(const sim *s, const sim_peer *p, dht_addr *a)
{
    (void)s;
    uint32_t ip = (10u << 24) | (uint32_t)(p->ep + 1);
    memset(a, 0, sizeof *a);
    snprintf(a->host, sizeof a->host, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
    a->port = 7000;
}

/* sim_hostile_install routes the requests of hostile endpoints through their hostile answers. */
void sim_hostile_install(sim *s);
/* sim_hostile_prepare gives hostile peer i what it answers with (its forged value). Returns 0 or
 * DMOE_ENOMEM. */
int sim_hostile_prepare(sim *s, size_t i);
/* sim_hostile_reindex rebuilds the colluders' index of live hostile peers when it changed. */
void sim_hostile_reindex(sim *s);
/* sim_grind_seed returns a key seed, searched from start, whose id shares `bits` leading bits with
 * target (what an attacker spends: about 2^bits key pairs). */
uint64_t sim_grind_seed(const dht_id *target, int bits, uint64_t start);

#endif
