/* moe_types.h -- the types of the Mixture-of-Experts layer's interface (moe.h): its configuration, the
 * expert-caller port and a forward's statistics. Kept below moe.h so that the layer's internals
 * (moe_impl.h) can hold them without including the public header. Only types; no functions.
 */
#ifndef DMOE_MOE_TYPES_H
#define DMOE_MOE_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include "actors/moe/route/moe_beam.h"
#include "actors/net/remote.h"
#include "runtime/rt_pool.h"


typedef struct {
    int in_features;
    int out_features;           /* the experts' output width; 0: in_features (only used when no expert answered) */
    int ndim;
    int grid_size[MOE_MAX_DIMS];
    char uid_prefix[UID_MAX_LEN + 1];
    int k_best;
    int k_min;                  /* 1 */
    double forward_timeout;     /* seconds for the whole forward, beam search included; <= 0: 30 */
    double timeout_after_k_min; /* seconds to wait for stragglers once k_min answered; < 0: until forward_timeout */
    int backward_k_min;         /* 1 */
    double backward_timeout;    /* seconds; <= 0: 30 */
    int detect_anomalies;       /* 1 (hivemind: False): answers with NaN/Inf count as failed experts */
    int allow_zero_outputs;
    double neg_cache_s;         /* negative caching of empty prefixes in the beam search (DHT_NEG_CACHE_S) */
    uint64_t seed;              /* gating initialisation, jitter and grid dropout */
    int is_switch;              /* RemoteSwitchMixtureOfExperts */
    double jitter_eps;          /* switch: 1e-2 */
    double grid_dropout;        /* switch: probability of KEEPING a coordinate, 1.0 */
    double utilization_alpha;   /* switch: 0.9 */
    int retry_rounds;           /* MOE_RETRY_ROUNDS: spare experts per sample slot kept from the search, for
                                   rows whose expert fails or stalls; 0: failed experts are only masked out */
    rt_pool *pool;              /* workers for the gating GEMMs, on the layer's loop (must outlive the
                                   layer); NULL: the layer starts one worker of its own */
} moe_cfg;

/* ---- how experts are called ---- */

/* Completion of one expert call: err 0 with out the expert's first output (forward) or first input
 * gradient (backward), which the callback takes over (rx_tensor_free it); else a DMOE_* code and msg. */
typedef void (*moe_call_cb)(void *arg, int err, const char *msg, rx_tensor *out);

/* Completion of an expert's info: err 0 with s its schema (valid during the callback only), else a
 * DMOE_* code and msg. */
typedef void (*moe_info_cb)(void *arg, int err, const char *msg, const rx_schema *s);

/* A way to call experts. call sends in[0..n_in) (1 <= n_in <= KERN_MAX_IO; in[0] is x, the rest the
 * expert's extra inputs, row-aligned with x) and gout (a backward; NULL for a forward) to uid at addr;
 * the tensors are referenced, not consumed. cb runs later, exactly once, never inside call. Returns 0
 * or a negative code (cb will not run). info (may be NULL: then the layer checks no schema) asks uid
 * at addr for its schema, with the same promises. */
typedef struct {
    void *impl;
    int (*call)(void *impl, const char *uid, const wire_maddr *addr, const rx_tensor *in, int n_in,
                const rx_tensor *gout, uint64_t timeout_ms, moe_call_cb cb, void *arg);
    int (*info)(void *impl, const char *uid, const wire_maddr *addr, uint64_t timeout_ms, moe_info_cb cb, void *arg);
} moe_caller;

/* moe_caller_client (moe_adapt.h) is the caller over the expert-call client. */

typedef struct moe_layer moe_layer;
typedef struct moe_fwd moe_fwd;

/* What a forward did. */
typedef struct {
    int experts_chosen;     /* distinct experts the beam search found for the batch */
    int experts_answered;   /* of those, how many answered with a usable output */
    int64_t zero_rows;      /* samples nobody answered (zeros with allow_zero_outputs) */
    int experts_retried;    /* requests sent to spare experts for the rows of failed or stalled ones */
    int64_t rows_retried;   /* rows those requests carried */
    int peers_down;         /* peers found gone during the forward (refused, or stalled past the hedge time) */
    /* where the time went, on the loop's monotonic clock: gating and the beam search, grouping the rows
     * and sending the requests, then waiting for the answers (retries included) and combining them */
    double search_ms, dispatch_ms, wait_ms, total_ms;
    int beam_rounds;
    int waves;              /* groups of requests sent as the search finished samples (1: all at its end) */
} moe_fwd_stats;

#endif
