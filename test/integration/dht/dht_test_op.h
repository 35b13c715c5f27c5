/* dht_test_op.h -- what the in-memory DHT tests record of one dht_store or dht_get: the completion
 * callbacks they share. Each test file has its own swarm; an op only needs the swarm's count of calls
 * in flight (decremented once when the call ends) and its clock (for tests that time an op). */
#ifndef DMOE_TEST_DHT_OP_H
#define DMOE_TEST_DHT_OP_H

#include <stddef.h>
#include <stdint.h>

#include "actors/dht/dht_lookup.h"
#include "actors/dht/io/dht_clock.h"

typedef struct {
    int *pending;
    dht_clock *clock;
    int called, err, found, is_dict, hops;
    uint8_t value[16];             /* a plain value found, when it fits */
    size_t vlen, nsubs, rpcs, n_stored;
    double expiration;
} dht_test_op;

/* DHT_TEST_OP(sw) is a fresh op of swarm sw (any struct with int pending and dht_clock *clock). */
#define DHT_TEST_OP(sw) ((dht_test_op){ .pending = &(sw)->pending, .clock = (sw)->clock })

/* dht_test_on_store is a dht_store callback: records err and n_stored into the op arg. */
void dht_test_on_store(void *arg, int err, const char *msg, size_t n_stored);
/* dht_test_on_get is a dht_get callback: records err, what was found and the lookup's figures. */
void dht_test_on_get(void *arg, int err, const char *msg, const dht_get_result *r);

#endif
