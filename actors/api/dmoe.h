/* dmoe.h -- the public C interface of libdmoe: join a dmoe DHT, call remote experts, run
 * Mixture-of-Experts layers. The one header an outside C or C++ program (and the Python package)
 * needs; installed as <dmoe.h>, found with `pkg-config --cflags --libs dmoe`.
 *
 * Handles are opaque; data is plain C (floats, bytes, strings). Nothing from libevent or msgpack
 * appears here. Every call that can fail returns 0 or a negative DMOE_E* code and, when the caller
 * gives an err buffer, a human message there (for a remote failure: the node's own message).
 *
 * Order of use:
 *   dmoe_ctx_new                      one per process is plenty: it owns the library's loop thread
 *   dmoe_dht_join                     a DHT node: client mode (needs initial peers) or full (serves
 *                                     the DHT on a TCP port of its own); dmoe_dht_join_trusted: the
 *                                     same in a private swarm (only records signed by trusted keys);
 *                                     dmoe_dht_join_identity: also with a stable identity key file
 *     dmoe_dht_store / dmoe_dht_get   values on the DHT (keys and values are msgpack bytes)
 *     dmoe_dht_declare_experts        announce uids as served at an address
 *     dmoe_get_experts / dmoe_expert_new -> dmoe_expert_forward / dmoe_expert_backward
 *     dmoe_beam_search                the best live experts of a grid for given gating scores
 *     dmoe_moe_new -> dmoe_moe_forward -> dmoe_moe_backward -> dmoe_moe_fwd_free -> dmoe_moe_free
 *   dmoe_dht_free                     shut the node down (handles made from it then fail with
 *                                     DMOE_ESHUTDOWN; free them too)
 *   dmoe_ctx_free                     after every other handle is freed
 *
 * Threads: the library runs its own event-loop thread, the only one that touches sockets. Every call
 * may be made from any thread, by many threads at once: it posts the work to the loop thread and
 * waits for it. The blocking calls are bounded by the timeouts of the work they do (DHT lookups, the
 * expert calls' timeout, the layer's forward_timeout / backward_timeout). Calls ending in _async post
 * the work and return at once; their callback runs later, exactly once, on the loop thread, after
 * the results were written -- it must not call a blocking dmoe function (that would wait for itself:
 * such calls return DMOE_EINVAL).
 *
 * Signals: the library changes no signal disposition. Its loop thread, the only one that writes to
 * sockets, runs with SIGPIPE blocked, so a peer closing a connection fails that connection's calls
 * (DMOE_ECONN) and never raises SIGPIPE in the program, whatever the program's disposition.
 *
 * Ownership: inputs are copied before a call returns (blocking calls) or before it is posted
 * (_async); results handed out (dmoe_tensors, dmoe_value, dmoe_beam, dmoe_moe_fwd, handles) belong to
 * the caller until freed with their _free function. Every _free accepts NULL.
 */
#ifndef DMOE_H
#define DMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DMOE_API_VERSION 1

/* Error codes (the numbers the wire protocol carries, negated). The library's own sources include
 * runtime/rt_err.h, which defines the same enumerators, before this header. */
#ifndef DMOE_RT_ERR_H
enum {
    DMOE_OK         = 0,
    DMOE_ENOMEM     = -1,   /* allocation failed, or a size would overflow */
    DMOE_EPROTO     = -2,   /* malformed reply: the peer speaks something else */
    DMOE_ETOOBIG    = -3,   /* a tensor or batch over a limit */
    DMOE_EINVAL     = -4,   /* a bad argument (or a request the node found bad) */
    DMOE_ENOEXPERT  = -5,   /* no expert with that uid on that node */
    DMOE_ENOMETHOD  = -6,   /* unknown method */
    DMOE_ESHAPE     = -7,   /* tensor shape or dtype does not match the expert's schema */
    DMOE_ENONFINITE = -8,   /* NaN or Inf where finite values are required */
    DMOE_ETIMEDOUT  = -9,   /* no reply within the deadline */
    DMOE_ECONN      = -10,  /* connection refused, reset or closed before the reply */
    DMOE_EOVERLOAD  = -11,  /* the node's queues are full: retry later */
    DMOE_ESHUTDOWN  = -12,  /* the node, the DHT handle or the library is stopping */
    DMOE_EIO        = -13,  /* file or socket I/O failed */
    DMOE_EINTERNAL  = -14,  /* a bug: an invariant did not hold */
    DMOE_ENOTFOUND  = -15,  /* a key, expert or peer that does not exist */
    DMOE_ERR_MIN    = -15
};
/* dmoe_strerror returns a static name for an error code (negative or positive). */
const char *dmoe_strerror(int code);
#endif

/* dmoe_api_version returns DMOE_API_VERSION of the library actually loaded. */
int dmoe_api_version(void);

/* A completion: err 0 or a DMOE_E* code, msg a human description ("" on success; valid during the
 * call only). Runs on the library's loop thread. */
typedef void (*dmoe_callback)(void *arg, int err, const char *msg);

/* ---- tensors ---- */

typedef enum { DMOE_FLOAT32 = 0, DMOE_UINT8 = 1 } dmoe_dtype;
#define DMOE_MAX_NDIM 8

/* A view of a dense, row-major tensor; data is not owned by the struct. */
typedef struct {
    int dtype;                       /* dmoe_dtype */
    int ndim;                        /* 1..DMOE_MAX_NDIM; shape[0] is the batch */
    int64_t shape[DMOE_MAX_NDIM];
    void *data;
} dmoe_tensor;

/* A list of tensors the library returns (an expert's outputs or input gradients). */
typedef struct dmoe_tensors dmoe_tensors;
/* dmoe_tensors_count returns how many tensors ts holds. */
int dmoe_tensors_count(const dmoe_tensors *ts);
/* dmoe_tensors_get fills *out with a view of tensor i (data owned by ts). Returns 0 or DMOE_EINVAL. */
int dmoe_tensors_get(const dmoe_tensors *ts, int i, dmoe_tensor *out);
/* dmoe_tensors_free frees ts. */
void dmoe_tensors_free(dmoe_tensors *ts);

/* ---- the library context ---- */

typedef struct dmoe_ctx dmoe_ctx;
/* dmoe_ctx_new starts the loop thread. Returns 0 and *out, or DMOE_ENOMEM / DMOE_EINTERNAL. */
int dmoe_ctx_new(dmoe_ctx **out, char *err, size_t errlen);
/* dmoe_ctx_free stops and joins the loop thread. Every handle made in ctx must be freed before. */
void dmoe_ctx_free(dmoe_ctx *ctx);

/* ---- the DHT ---- */

typedef struct dmoe_dht dmoe_dht;
/* dmoe_dht_join creates a DHT node in ctx and joins the network through peers[0..n) (multiaddrs like
 * "/ip4/127.0.0.1/tcp/40123/p2p/<id>"). client_mode 1: the node only asks (n must be >= 1). client_mode
 * 0: it also serves the DHT, listening on listen_maddr (NULL: "/ip4/127.0.0.1/tcp/0"); n may be 0 (the
 * first node of a network). Returns 0 and *out once joined, or DMOE_EINVAL (bad address), DMOE_ECONN /
 * DMOE_ETIMEDOUT (no initial peer answered), DMOE_EIO (cannot listen) with err. */
int dmoe_dht_join(dmoe_ctx *ctx, const char *const *peers, size_t n, int client_mode, const char *listen_maddr,
                  dmoe_dht **out, char *err, size_t errlen);
/* dmoe_dht_join_trusted is dmoe_dht_join for a private swarm (dmoe-node --trusted_keys): trusted_keys_path
 * names a file of Ed25519 public keys (64 hex digits a line, '#' starts a comment; NULL: an open swarm,
 * as dmoe_dht_join). The node then stores (full mode), returns and uses only DHT records signed by one of
 * those keys -- unsigned values are refused -- and so do dmoe_get_experts, dmoe_beam_search and the
 * layers made from the handle: an expert declared under another key is never found or called. The keys
 * are read before joining and kept by the handle until the node is gone. Returns as dmoe_dht_join, and
 * DMOE_EIO (cannot read the file) or DMOE_EINVAL (a malformed line, or no key) with err naming the file
 * and line. */
int dmoe_dht_join_trusted(dmoe_ctx *ctx, const char *const *peers, size_t n, int client_mode,
                          const char *listen_maddr, const char *trusted_keys_path, dmoe_dht **out, char *err,
                          size_t errlen);
/* dmoe_dht_join_identity is dmoe_dht_join_trusted with a stable identity (dmoe-node --identity_path):
 * identity_path names the file of the node's Ed25519 key pair, created (mode 0600, a fresh key) when
 * absent; the node's id -- the /p2p/ part of its multiaddr -- is derived from that key, so a node started
 * again with the same file keeps its id and signs its records with the same key (the public key others
 * list in their trusted keys). NULL: a fresh key each join, as dmoe_dht_join. The file is read before
 * joining. Returns as dmoe_dht_join_trusted, and DMOE_EINVAL (a malformed file, or one group or others
 * may read or write) or DMOE_EIO (cannot read or create it) with err naming the file. */
int dmoe_dht_join_identity(dmoe_ctx *ctx, const char *const *peers, size_t n, int client_mode,
                           const char *listen_maddr, const char *trusted_keys_path, const char *identity_path,
                           dmoe_dht **out, char *err, size_t errlen);
/* dmoe_dht_maddr writes the node's own multiaddr into buf[cap] ("" in client mode). Returns 0. */
int dmoe_dht_maddr(dmoe_dht *d, char *buf, size_t cap);
/* dmoe_dht_time returns the DHT's clock (seconds, wall clock, as hivemind's get_dht_time). */
double dmoe_dht_time(void);
/* dmoe_dht_store stores value[vlen] under key[klen] (both msgpack-serialized, as hivemind serializes
 * keys and values), into key's dictionary under subkey[sklen] when subkey is not NULL, until expiration
 * (absolute DHT time). Returns 0 when at least one replica took it, DMOE_ENOTFOUND when none did, or
 * DMOE_ETOOBIG / DMOE_EINVAL / DMOE_ESHUTDOWN. */
int dmoe_dht_store(dmoe_dht *d, const void *key, size_t klen, const void *subkey, size_t sklen, const void *value,
                   size_t vlen, double expiration, char *err, size_t errlen);

/* What a get found. */
typedef struct dmoe_value dmoe_value;
/* dmoe_dht_get looks key[klen] (msgpack bytes) up; latest 1 asks every nearest replica for the newest.
 * Returns 0 and *out (dmoe_value_kind says whether anything was found), or a negative code. */
int dmoe_dht_get(dmoe_dht *d, const void *key, size_t klen, int latest, dmoe_value **out, char *err, size_t errlen);
/* dmoe_value_kind returns 0 (nothing found), 1 (a plain value) or 2 (a dictionary). */
int dmoe_value_kind(const dmoe_value *v);
/* dmoe_value_expiration returns the value's expiration (the dictionary's latest). */
double dmoe_value_expiration(const dmoe_value *v);
/* dmoe_value_bytes returns a plain value's msgpack bytes and their length in *len (owned by v). */
const void *dmoe_value_bytes(const dmoe_value *v, size_t *len);
/* dmoe_value_nsubs returns the number of entries of a dictionary (0 for a plain value). */
size_t dmoe_value_nsubs(const dmoe_value *v);
/* dmoe_value_sub points at entry i of a dictionary: its subkey and value (msgpack bytes, owned by v)
 * and expiration. Returns 0 or DMOE_EINVAL. */
int dmoe_value_sub(const dmoe_value *v, size_t i, const void **subkey, size_t *sklen, const void **value,
                   size_t *vlen, double *expiration);
/* dmoe_value_free frees v. */
void dmoe_value_free(dmoe_value *v);

/* dmoe_dht_declare_experts declares uids[0..n) as served at maddr (a multiaddr naming the server's
 * node id in /p2p/) until expiration, with hivemind's records (uid -> host, prefix -> coordinate).
 * Returns 0 when every uid was declared, DMOE_ENOTFOUND when some were not, DMOE_EINVAL (bad uid). */
int dmoe_dht_declare_experts(dmoe_dht *d, const char *const *uids, size_t n, const char *maddr, double expiration,
                             char *err, size_t errlen);
/* dmoe_dht_free shuts the node down (pending calls through it fail with DMOE_ESHUTDOWN) and releases
 * the caller's handle; the memory goes once no expert or layer made from it is left. */
void dmoe_dht_free(dmoe_dht *d);

/* ---- remote experts ---- */

typedef struct dmoe_expert dmoe_expert;
/* dmoe_get_experts finds the hosts of uids[0..n) on the DHT and fills out[0..n): a handle per expert
 * found, NULL for one that is not declared. Returns 0 or a negative code (then out is untouched). */
int dmoe_get_experts(dmoe_dht *d, const char *const *uids, size_t n, dmoe_expert **out, char *err, size_t errlen);
/* dmoe_expert_new makes a handle for uid served at maddr, without asking the DHT (calls go through d's
 * connections). Returns 0 and *out, or DMOE_EINVAL (bad address) / DMOE_ENOMEM. */
int dmoe_expert_new(dmoe_dht *d, const char *uid, const char *maddr, dmoe_expert **out, char *err, size_t errlen);
/* dmoe_expert_uid returns the uid (owned by e); dmoe_expert_maddr writes the host's multiaddr. */
const char *dmoe_expert_uid(const dmoe_expert *e);
void dmoe_expert_maddr(const dmoe_expert *e, char *buf, size_t cap);
/* dmoe_expert_info asks the node for the expert's schema: numbers of inputs and outputs, and for each
 * input i its dtype and per-row shape (dims[0..ndim), the batch dimension excluded). Any pointer may be
 * NULL; in_dtype / in_ndim have room for 4 inputs, in_dims for 4 x 4. Returns 0 or a negative code. */
int dmoe_expert_info(dmoe_expert *e, int *n_in, int *n_out, int *in_dtype, int *in_ndim, int64_t *in_dims,
                     double timeout_s, char *err, size_t errlen);
/* dmoe_expert_forward sends in[0..n_in) (row-aligned, shape[0] the batch) to the expert and returns its
 * outputs in *out. timeout_s <= 0: 30 s. Returns 0, the node's error code with its message in err, or
 * DMOE_ETIMEDOUT / DMOE_ECONN / DMOE_ESHUTDOWN, or DMOE_ESHAPE / DMOE_EPROTO for an answer that does not
 * fit the request (other rows, a dtype other than float32 or uint8, a backward's gradient of another
 * shape than its input; the values are not judged). */
int dmoe_expert_forward(dmoe_expert *e, const dmoe_tensor *in, int n_in, double timeout_s, dmoe_tensors **out,
                        char *err, size_t errlen);
/* dmoe_expert_backward sends the inputs and the gradients of the outputs gout[0..n_gout) and returns
 * the gradients of the inputs in *out (the node then steps the expert's optimizer). As forward. */
int dmoe_expert_backward(dmoe_expert *e, const dmoe_tensor *in, int n_in, const dmoe_tensor *gout, int n_gout,
                         double timeout_s, dmoe_tensors **out, char *err, size_t errlen);
/* dmoe_expert_forward_keep is dmoe_expert_forward for a caller that will send the backward of these
 * inputs: the node keeps the forward's activations and *handle gets their handle (0 when it kept none:
 * its cache is off, or the request is bigger than the cache). dmoe_expert_backward_with is
 * dmoe_expert_backward that hands that handle back (0: none), so that the node takes the kept
 * activations instead of recomputing the forward (a third of an ffn backward); the gradients are the
 * same either way. A plain dmoe_expert_forward asks the node to keep nothing. A handle is good for one
 * backward of the same inputs on the same expert. */
int dmoe_expert_forward_keep(dmoe_expert *e, const dmoe_tensor *in, int n_in, double timeout_s, dmoe_tensors **out,
                             uint64_t *handle, char *err, size_t errlen);
int dmoe_expert_backward_with(dmoe_expert *e, const dmoe_tensor *in, int n_in, const dmoe_tensor *gout, int n_gout,
                              uint64_t handle, double timeout_s, dmoe_tensors **out, char *err, size_t errlen);
/* dmoe_expert_forward_async / _backward_async are the same calls without waiting: *out is written
 * before cb(arg, err, msg) runs on the loop thread. Returns 0 (cb will run) or a negative code (it
 * will not). */
int dmoe_expert_forward_async(dmoe_expert *e, const dmoe_tensor *in, int n_in, double timeout_s, dmoe_tensors **out,
                              dmoe_callback cb, void *arg);
int dmoe_expert_backward_async(dmoe_expert *e, const dmoe_tensor *in, int n_in, const dmoe_tensor *gout, int n_gout,
                               double timeout_s, dmoe_tensors **out, dmoe_callback cb, void *arg);
/* dmoe_expert_free frees the handle (calls already made complete normally). */
void dmoe_expert_free(dmoe_expert *e);

/* ---- beam search ---- */

typedef struct dmoe_beam dmoe_beam;
/* dmoe_beam_search finds, for each of the batch samples, the beam_size live experts of the grid
 * "<uid_prefix><c0>.<c1>..." (grid[0..ndim) sizes) with the highest scores, where scores is the
 * row-major [batch, sum(grid)] matrix of per-coordinate scores and an expert's score is the sum of its
 * coordinates' scores (hivemind's MoEBeamSearcher; exact, ties by uid). Returns 0 and *out, or a
 * negative code. */
int dmoe_beam_search(dmoe_dht *d, const char *uid_prefix, const int *grid, int ndim, const float *scores,
                     int64_t batch, int beam_size, dmoe_beam **out, char *err, size_t errlen);
/* dmoe_beam_count returns how many experts sample s got (best first). */
int dmoe_beam_count(const dmoe_beam *b, int64_t s);
/* dmoe_beam_expert returns the uid of sample s's j-th expert (owned by b) and writes its host's
 * multiaddr into maddr[cap] (maddr may be NULL) and its score into *score (may be NULL); NULL when out
 * of range. */
const char *dmoe_beam_expert(const dmoe_beam *b, int64_t s, int j, char *maddr, size_t cap, float *score);
/* dmoe_beam_free frees b. */
void dmoe_beam_free(dmoe_beam *b);

/* ---- Mixture-of-Experts layers ---- */

/* hivemind's RemoteMixtureOfExperts / RemoteSwitchMixtureOfExperts arguments. Fields may only ever be
 * appended; dmoe_moe_config_init fills the defaults. */
typedef struct {
    int in_features;
    int out_features;            /* 0: in_features */
    int ndim;                    /* dimensions of the grid (1..8) */
    int grid_size[8];
    char uid_prefix[256];
    int k_best;                  /* 4 (switch: 1) */
    int k_min;                   /* 1 */
    double forward_timeout;      /* seconds; <= 0: 30 */
    double timeout_after_k_min;  /* seconds; < 0: until forward_timeout */
    int backward_k_min;          /* 1 */
    double backward_timeout;     /* seconds; <= 0: 30 */
    int detect_anomalies;        /* 1 (hivemind: False): answers with NaN/Inf count as failed experts */
    int allow_zero_outputs;
    uint64_t seed;               /* the gating's initialisation, jitter and grid dropout */
    int is_switch;               /* RemoteSwitchMixtureOfExperts */
    double jitter_eps;           /* switch: 1e-2 */
    double grid_dropout;         /* switch: probability of keeping a coordinate, 1.0 */
    double utilization_alpha;    /* switch: 0.9 */
} dmoe_moe_config;

/* dmoe_moe_config_init fills c with hivemind's defaults for a plain (is_switch 0) or switch layer,
 * except detect_anomalies, which is on. */
void dmoe_moe_config_init(dmoe_moe_config *c, int is_switch);

typedef struct dmoe_moe dmoe_moe;
typedef struct dmoe_moe_fwd dmoe_moe_fwd;
/* dmoe_moe_new creates a layer over d's experts. Its gating projection W[total, in_features],
 * b[total] (total = sum(grid)) starts with PyTorch's Linear initialisation from c->seed. Returns 0 and
 * *out, or DMOE_EINVAL with err naming the bad setting. */
int dmoe_moe_new(dmoe_dht *d, const dmoe_moe_config *c, dmoe_moe **out, char *err, size_t errlen);
/* dmoe_moe_nparams returns the number of gating parameters (total * in_features + total). */
size_t dmoe_moe_nparams(const dmoe_moe *m);
/* dmoe_moe_get_params / dmoe_moe_set_params copy the gating parameters (W row-major, then b) out of or
 * into the layer; n must be dmoe_moe_nparams. Returns 0 or DMOE_EINVAL. */
int dmoe_moe_get_params(dmoe_moe *m, float *p, size_t n);
int dmoe_moe_set_params(dmoe_moe *m, const float *p, size_t n);
/* dmoe_moe_utilization copies the switch layer's grid utilisation average (sum(grid) floats). */
int dmoe_moe_utilization(dmoe_moe *m, float *u, size_t n);
/* dmoe_moe_forward runs the layer on x[B, in_features] with the extra expert inputs extra[0..n_extra)
 * (row-aligned with x; none for ffn experts). params, when not NULL, are loaded first (as
 * dmoe_moe_set_params, nparams floats). Returns 0 and *out, or the error (no expert answered a sample
 * and not allow_zero_outputs, a non-finite input with detect_anomalies, a timeout). */
int dmoe_moe_forward(dmoe_moe *m, const float *params, const float *x, int64_t B, const dmoe_tensor *extra,
                     int n_extra, dmoe_moe_fwd **out, char *err, size_t errlen);
/* dmoe_moe_forward_async is dmoe_moe_forward without waiting (*out written before cb runs). */
int dmoe_moe_forward_async(dmoe_moe *m, const float *params, const float *x, int64_t B, const dmoe_tensor *extra,
                           int n_extra, dmoe_moe_fwd **out, dmoe_callback cb, void *arg);
/* dmoe_moe_fwd_output returns the output [B, D] (owned by f) and sets *B and *D. */
const float *dmoe_moe_fwd_output(const dmoe_moe_fwd *f, int64_t *B, int *D);
/* dmoe_moe_fwd_balancing_loss returns the switch layer's load-balancing loss (0 otherwise). */
float dmoe_moe_fwd_balancing_loss(const dmoe_moe_fwd *f);
/* dmoe_moe_fwd_stats writes how many distinct experts were chosen and how many answered. */
void dmoe_moe_fwd_stats(const dmoe_moe_fwd *f, int *chosen, int *answered);
/* dmoe_moe_fwd_expert_weight returns the weight the forward gave expert uid in sample b (0 if none). */
float dmoe_moe_fwd_expert_weight(const dmoe_moe_fwd *f, int64_t b, const char *uid);
/* dmoe_moe_backward sends gy[B, D] back through the experts that answered f and writes the input's
 * gradient into gx[B * in_features] and the gating parameters' gradient into gparams[nparams] (either
 * may be NULL). balance_coef is the gradient of the objective with respect to the switch layer's
 * balancing loss (0: none). Returns 0 or the error. */
int dmoe_moe_backward(dmoe_moe_fwd *f, const float *gy, float balance_coef, float *gx, float *gparams, char *err,
                      size_t errlen);
/* dmoe_moe_backward_async is dmoe_moe_backward without waiting. */
int dmoe_moe_backward_async(dmoe_moe_fwd *f, const float *gy, float balance_coef, float *gx, float *gparams,
                            dmoe_callback cb, void *arg);
/* dmoe_moe_fwd_free frees f (no backward of it may still run). */
void dmoe_moe_fwd_free(dmoe_moe_fwd *f);
/* dmoe_moe_free releases the layer (its memory goes with the last forward made from it). */
void dmoe_moe_free(dmoe_moe *m);

#ifdef __cplusplus
}
#endif

#endif
