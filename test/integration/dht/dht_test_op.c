/* dht_test_op.c -- the DHT tests' shared store/get callbacks (see dht_test_op.h). */
#include "test/integration/dht/dht_test_op.h"

#include <string.h>

void dht_test_on_store(void *arg, int err, const char *msg, size_t n_stored)
{
    dht_test_op *o = arg;
    o->called++;
    o->err = err;
    o->n_stored = n_stored;
    (*o->pending)--;
}

void dht_test_on_get(void *arg, int err, const char *msg, const dht_get_result *r)
{
    dht_test_op *o = arg;
    o->called++;
    o->err = err;
    o->found = r->found;
    o->is_dict = r->is_dict;
    o->hops = r->hops;
    o->rpcs = r->rpcs;
    o->expiration = r->expiration;
    o->nsubs = r->nsubs;
    o->vlen = 0;
    if (r->found && !r->is_dict && r->vlen <= sizeof o->value) {
        memcpy(o->value, r->value, r->vlen);
        o->vlen = r->vlen;
    }
    (*o->pending)--;
}
