/* loadgen_cfg.c -- a load run's settings and report: the defaults, the checks a cfg must pass before a
 * run, and the report's release (see loadgen_cfg.h). Plain functions on the structs: no loop, no I/O.
 */
#include "actors/load/loadgen_cfg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"

void loadgen_default_cfg(loadgen_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->clients = 1;
    c->duration_s = 10;
    c->batch_min = c->batch_max = 1;
    c->timeout_ms = 30000;
    c->uid_prefix = "expert.";
    c->k_best = 2;
    c->in_features = 1024;
}

void loadgen_report_free(loadgen_report *r)
{
    if (!r) return;
    free(r->samples);
    r->samples = NULL;
    r->n_samples = 0;
}

int loadgen_check_cfg(const loadgen_cfg *c, char *err, size_t errlen)
{
    if (c->clients < 1 || c->clients > LOADGEN_MAX_CLIENTS)
        snprintf(err, errlen, "clients must be in 1..%d", LOADGEN_MAX_CLIENTS);
    else if (c->max_requests == 0 && !(c->duration_s > 0))
        snprintf(err, errlen, "a run needs a bound: a request count or a duration");
    else if (!(c->duration_s >= 0 && c->duration_s < 1e6) || !(c->warmup_s >= 0 && c->warmup_s < 1e6))
        snprintf(err, errlen, "duration and warm-up must be non-negative seconds");
    else if (c->mode != LOADGEN_DHT && !(c->mix >= 0 && c->mix <= 0.5))
        snprintf(err, errlen, "--mix %g cannot be honoured: it is the fraction of backwards, and each backward needs its "
                 "own forward, so 0 <= mix <= 0.5 (0.5: forward, backward, ... as training)", c->mix);
    else if (c->mode == LOADGEN_DHT && !(c->mix >= 0 && c->mix < 1))
        snprintf(err, errlen, "--mix %g cannot be honoured: --dht gets need keys stored by the run, so 0 <= mix < 1", c->mix);
    else if (c->batch_min < 1 || c->batch_max < c->batch_min || c->batch_max > (1 << 24))
        snprintf(err, errlen, "batch sizes must satisfy 1 <= min <= max <= %d", 1 << 24);
    else if (c->mode == LOADGEN_NODE && !c->all && (!c->uids || !c->uids[0]))
        snprintf(err, errlen, "no experts to target: give uids or all");
    else if (c->mode != LOADGEN_NODE && (!c->initial_peers || !c->initial_peers[0]))
        snprintf(err, errlen, "--moe and --dht need initial peers (the address of any node of the DHT)");
    else if (c->mode == LOADGEN_MOE && (c->ndim < 1 || c->ndim > LOADGEN_MAX_DIMS || c->k_best < 1 || c->in_features < 1 ||
                                        !c->uid_prefix || !c->uid_prefix[0]))
        snprintf(err, errlen, "--moe needs a grid (1..%d sizes), a uid prefix, k_best >= 1 and in_features >= 1", LOADGEN_MAX_DIMS);
    else if (c->mode == LOADGEN_DHT && c->batch_max > LOADGEN_DHT_MAX_VALUE)
        snprintf(err, errlen, "--dht: values (--batch) are at most %d bytes", LOADGEN_DHT_MAX_VALUE);
    else if (c->mode < LOADGEN_NODE || c->mode > LOADGEN_DHT)
        snprintf(err, errlen, "unknown mode %d", c->mode);
    else if (c->timeout_ms == 0)
        snprintf(err, errlen, "the call timeout must be positive");
    else
        return 0;
    return DMOE_EINVAL;
}
