/* dht_sim.c -- the DHT simulator: population, network model, churn, workloads, figures (see dht_sim.h).
 *
 * Design notes. The simulator is one actor with one periodic timer (SIM_TICK_MS of virtual time) on
 * the run's virtual clock; each tick it frees the nodes that left on the previous tick (their mail is
 * drained by then: the clock fires a timer only once no actor has mail), makes the peers whose time is
 * up leave (a min-heap on leave time) and joins their replacements, starts the declarations that are
 * due, and starts as many beam steps as the lookup rate has accrued. Everything else -- RPCs, lookups,
 * timeouts -- is the DHT's own work on the memnet. Lookups report to small contexts that hold indices,
 * never pointers to nodes, so a peer may leave while a lookup it serves is out.
 *
 * The routing tables at the start are what a network that has run a while would hold: for each bit
 * level b of a peer's id, up to k peers drawn from those whose id agrees with it on the first b bits
 * and differs at bit b (a range of the peers sorted by id), entered as proven; the table's own rules
 * (bucket splits, replacement caches, the per-host limit) decide what stays.
 */
#include "actors/dht/sim/dht_sim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "actors/dht/dht_boot.h"
#include "actors/dht/dht_lookup.h"
#include "actors/dht/sim/dht_sim_impl.h"
#include "actors/dht/trust/dht_record.h"
#include "actors/grid/dht_experts.h"
#include "runtime/rt_err.h"
#include "runtime/rt_lag.h"
#include "runtime/rt_log.h"

/* Virtual milliseconds between the simulator's ticks: churn and load are started at this grain. */
#define SIM_TICK_MS 100
/* Uids per prefix: a beam step's prefix lookup reads this many successors. */
#define SIM_UIDS_PER_PREFIX 16
/* Outcomes the verification memo keeps (24 bytes each): the records of a 100,000-peer run and more. */
#define SIM_MEMO_ENTRIES (1u << 21)
/* Bootstrap attempts of a joining peer (a random live peer each) before it counts as failed. */
#define SIM_BOOT_TRIES 3

enum { MSG_TICK = 1 };

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static double rss_mb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        fclose(f);
    }
    return (double)resident * 4096.0 / (1024.0 * 1024.0);
}

static double wall_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- the network model ---- */

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* link_ms: half the link's RTT, log-uniform in [rtt_min, rtt_max], the same both ways. */
static uint32_t link_ms(void *arg, int from, int to)
{
    const sim *s = arg;
    uint64_t a = (uint64_t)(from < to ? from : to), b = (uint64_t)(from < to ? to : from);
    double u = (double)(mix(s->cfg.seed ^ (a << 32 | b)) >> 11) * (1.0 / 9007199254740992.0);
    double rtt = s->cfg.rtt_min_ms * pow((double)s->cfg.rtt_max_ms / s->cfg.rtt_min_ms, u);
    return (uint32_t)(rtt / 2 + 0.5);
}

static int lossy(void *arg, int from, int to, int reply)
{
    sim *s = arg;
    return sim_uniform(s) < s->cfg.loss;
}

/* ---- peers ---- */

static double draw_uptime(sim *s)
{
    if (s->cfg.median_uptime_s <= 0) return INFINITY;
    /* Weibull(k, lambda): median = lambda * ln2^(1/k). */
    double k = s->cfg.uptime_shape, lambda = s->cfg.median_uptime_s / pow(log(2.0), 1.0 / k);
    double u = sim_uniform(s);
    return lambda * pow(-log(1.0 - u), 1.0 / k);
}

/* gamma_draw returns a Gamma(shape, 1) number (Marsaglia and Tsang; shape >= 1). */
static double gamma_draw(sim *s, double shape)
{
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {   /* accepts with probability > 0.95 per round */
        double u1 = sim_uniform(s), u2 = sim_uniform(s);
        double x = sqrt(-2.0 * log(1.0 - u1)) * cos(2 * M_PI * u2);
        double v = 1.0 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = sim_uniform(s);
        if (log(1.0 - u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
    }
}

/* draw_residual returns the time a peer up at the start still stays up, as in a network that has
 * churned for long: the peers up at a given moment are a length-biased sample of sessions (long ones
 * are more likely to be up), each at a uniform point of its session. For Weibull(k, lambda) the
 * length-biased session is lambda * G^(1/k), G ~ Gamma(1 + 1/k). Drawing fresh uptimes instead would
 * make far too many of the first peers leave at once. */
static double draw_residual(sim *s)
{
    if (s->cfg.median_uptime_s <= 0) return INFINITY;
    double k = s->cfg.uptime_shape, lambda = s->cfg.median_uptime_s / pow(log(2.0), 1.0 / k);
    double session = lambda * pow(gamma_draw(s, 1.0 + 1.0 / k), 1.0 / k);
    return session * (1.0 - sim_uniform(s));
}

static int leave_less(const sim *s, size_t a, size_t b) { return s->peers[a].leave_at < s->peers[b].leave_at; }

static int leave_push(sim *s, size_t i)
{
    if (s->nleave == s->capleave) {
        size_t cap = s->capleave ? s->capleave * 2 : 1024;
        size_t *h = realloc(s->leave_heap, cap * sizeof *h);
        if (!h) return DMOE_ENOMEM;
        s->leave_heap = h;
        s->capleave = cap;
    }
    size_t k = s->nleave++;
    while (k > 0 && leave_less(s, i, s->leave_heap[(k - 1) / 2])) {
        s->leave_heap[k] = s->leave_heap[(k - 1) / 2];
        k = (k - 1) / 2;
    }
    s->leave_heap[k] = i;
    return 0;
}

static size_t leave_pop(sim *s)
{
    size_t top = s->leave_heap[0], last = s->leave_heap[--s->nleave], k = 0;
    for (;;) {
        size_t l = 2 * k + 1, r = l + 1, m = k;
        size_t best = last;
        if (l < s->nleave && leave_less(s, s->leave_heap[l], best)) { m = l; best = s->leave_heap[l]; }
        if (r < s->nleave && leave_less(s, s->leave_heap[r], best)) m = r;
        if (m == k) break;
        s->leave_heap[k] = s->leave_heap[m];
        k = m;
    }
    if (s->nleave) s->leave_heap[k] = last;
    return top;
}

/* new_peer creates a peer (and its node) with key seed `seed`; trainer peers are client-mode. Returns
 * its index or a negative code. */
static long new_peer(sim *s, uint64_t seed, int hostile, int sybil, int trainer)
{
    if (s->np == s->capp) {
        size_t cap = s->capp ? s->capp * 2 : 1024;
        sim_peer *p = realloc(s->peers, cap * sizeof *p);
        if (!p) return DMOE_ENOMEM;
        s->peers = p;
        s->capp = cap;
    }
    size_t i = s->np;
    sim_peer *p = &s->peers[i];
    memset(p, 0, sizeof *p);
    p->role = -1;
    dht_cfg c;
    dht_transport t;
    dht_ident key;
    dht_cfg_default(&c);
    if (dht_ident_for_test(&key, seed) != 0) return DMOE_EINTERNAL;
    c.ident = &key;
    c.seed = seed;
    c.client_mode = trainer;
    c.clock = s->clock;
    c.alpha = s->cfg.alpha;
    c.num_replicas = s->cfg.replicas;
    c.bucket_size = s->cfg.bucket_size;
    c.rpc_timeout_ms = s->cfg.rpc_timeout_ms;
    c.soft_timeout_ms = s->cfg.soft_timeout_ms;
    c.refresh_period_s = s->cfg.refresh_s;
    c.no_cache = !s->cfg.cache;
    int ep = dht_memnet_add(s->net, &c.addr, &t);
    if (ep < 0) return ep;
    if ((size_t)ep != i) return DMOE_EINTERNAL;   /* peer i is endpoint i: the hostile intercept relies on it */
    int rc = dht_node_new(s->l, &c, &t, &p->d);
    dht_ident_wipe(&key);
    if (rc) return rc;
    if (!trainer) dht_memnet_bind(s->net, ep, p->d);
    p->ep = ep;
    p->id = *dht_node_id(p->d);
    p->alive = 1;
    p->hostile = (uint8_t)hostile;
    p->sybil = (uint8_t)sybil;
    p->trainer = (uint8_t)trainer;
    p->leave_at = trainer || sybil ? INFINITY : s->now_s + (s->building ? draw_residual(s) : draw_uptime(s));
    s->np++;
    if (rt_map_put(&s->by_id, p->id.b, DHT_ID_BYTES, (void *)(uintptr_t)(i + 1)) != 0) return DMOE_ENOMEM;
    if (hostile && (rc = sim_hostile_prepare(s, i)) != 0) return rc;
    if (!trainer) {
        s->up[s->nup++] = i;
        if (isfinite(p->leave_at) && (rc = leave_push(s, i)) != 0) return rc;
    }
    if (hostile) s->hostile_dirty = 1;
    return (long)i;
}

/* ---- warm start: routing tables as a running network's ---- */

static const sim *sort_ctx;

static int by_id(const void *a, const void *b)
{
    return dht_id_cmp(&sort_ctx->peers[*(const size_t *)a].id, &sort_ctx->peers[*(const size_t *)b].id);
}

/* lower returns the first position of sorted[0..n) whose id is >= x. */
static size_t lower(const sim *s, const size_t *sorted, size_t n, const dht_id *x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (dht_id_cmp(&s->peers[sorted[mid]].id, x) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static void fill_table(sim *s, sim_peer *p, const size_t *sorted, size_t n, size_t k)
{
    dht_routing *rt = dht_node_routing(p->d);
    double now = dht_clock_now(s->clock);
    for (int b = 0; b < DHT_ID_BYTES * 8; b++) {
        /* ids agreeing with p on bits [0, b) and differing at bit b: [lo, hi) of the sorted peers */
        dht_id from = p->id, to;
        int byte = b / 8, bit = 7 - b % 8;
        from.b[byte] ^= (uint8_t)(1u << bit);
        from.b[byte] &= (uint8_t)(0xFF << bit);
        memset(from.b + byte + 1, 0, DHT_ID_BYTES - byte - 1);
        to = from;
        to.b[byte] |= (uint8_t)((1u << bit) - 1);
        memset(to.b + byte + 1, 0xFF, DHT_ID_BYTES - byte - 1);
        size_t lo = lower(s, sorted, n, &from), hi = lower(s, sorted, n, &to);
        if (hi < n && dht_id_cmp(&s->peers[sorted[hi]].id, &to) == 0) hi++;
        size_t m = hi - lo;
        if (m == 0) {
            /* nobody on the other side at this level: deeper levels lie on our side */
            if (lo == hi && b > 24) break;
            continue;
        }
        size_t take = m < k ? m : k;
        size_t start = (size_t)(sim_rand(s) % m);
        for (size_t j = 0; j < take; j++) {
            const sim_peer *q = &s->peers[sorted[lo + (start + j * (m / take)) % m]];
            dht_addr a;
            dht_node ping;
            sim_peer_addr(s, q, &a);
            dht_routing_add_or_update(rt, &q->id, &a, now, &ping);
        }
        if (m <= k && b > 24) break;   /* fewer than k left this deep: the rest is below */
    }
}

static int warm_tables(sim *s)
{
    size_t n = s->nup;
    size_t *sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted) return DMOE_ENOMEM;
    memcpy(sorted, s->up, n * sizeof *sorted);
    sort_ctx = s;
    qsort(sorted, n, sizeof *sorted, by_id);
    size_t k = s->cfg.bucket_size ? s->cfg.bucket_size : DHT_BUCKET_SIZE;
    for (size_t i = 0; i < s->np; i++) {
        fill_table(s, &s->peers[i], sorted, n, k);
        s->peers[i].booted = 1;
    }
    free(sorted);
    return 0;
}

/* ---- churn ---- */

typedef struct {
    sim *s;
    size_t peer;
    int tries;
} boot_ctx;

static void start_boot(sim *s, boot_ctx *b);

static void on_booted(void *arg, int err, const char *msg)
{
    boot_ctx *b = arg;
    sim *s = b->s;
    sim_peer *p = &s->peers[b->peer];
    s->in_flight--;
    if (err == 0 && p->alive) {
        p->booted = 1;
        if (p->role >= 0) s->roles[p->role].next_decl = s->now_s;   /* declare at the next tick */
        free(b);
    } else if (p->alive && err != DMOE_ESHUTDOWN && ++b->tries < SIM_BOOT_TRIES) {
        start_boot(s, b);
    } else {
        if (p->alive) s->res->boot_failed++;
        free(b);
    }
}

static void start_boot(sim *s, boot_ctx *b)
{
    sim_peer *p = &s->peers[b->peer];
    size_t via = b->peer;
    for (int t = 0; t < 16 && (via == b->peer || !s->peers[via].booted); t++) via = s->up[sim_rand(s) % s->nup];
    char text[WIRE_MADDR_TEXT], err[256];
    dht_node_maddr(s->peers[via].d, text, sizeof text);
    const char *ps[1] = { text };
    s->in_flight++;
    if (via == b->peer || dht_node_bootstrap(p->d, ps, 1, on_booted, b, err, sizeof err) != 0) {
        s->in_flight--;
        s->res->boot_failed++;
        free(b);
    }
}

static void leave(sim *s, size_t i)
{
    sim_peer *p = &s->peers[i];
    p->alive = 0;
    for (size_t k = 0; k < s->nup; k++)
        if (s->up[k] == i) {
            s->up[k] = s->up[--s->nup];
            break;
        }
    dht_memnet_set_down(s->net, p->ep, 1);
    dht_node_stop(p->d);
    dht_memnet_close_endpoint(s->net, p->ep);
    if (s->ngrave == s->capgrave) {
        size_t cap = s->capgrave ? s->capgrave * 2 : 64;
        dht **g = realloc(s->graveyard, cap * sizeof *g);
        if (g) {
            s->graveyard = g;
            s->capgrave = cap;
        }
    }
    if (s->ngrave < s->capgrave) s->graveyard[s->ngrave++] = p->d;   /* else it stays stopped, unfreed */
    p->d = NULL;
    if (p->hostile) s->hostile_dirty = 1;
    free(p->forged);
    p->forged = NULL;
    s->res->leaves++;
}

/* replace joins a new peer in the place of peer i (who left): same kind, i's server role. */
static int replace(sim *s, size_t i)
{
    int hostile = s->peers[i].hostile, role = s->peers[i].role;
    long j = new_peer(s, mix(s->cfg.seed * 0x100000001b3ull + s->np + 1), hostile, 0, 0);
    if (j < 0) return (int)j;
    sim_peer *q = &s->peers[j];
    if (role >= 0) {
        q->role = role;
        s->roles[role].peer = (size_t)j;
        s->roles[role].declared = 0;
        s->roles[role].next_decl = INFINITY;   /* after its bootstrap */
    }
    s->res->joins++;
    boot_ctx *b = calloc(1, sizeof *b);
    if (!b) return DMOE_ENOMEM;
    *b = (boot_ctx){ s, (size_t)j, 0 };
    start_boot(s, b);
    return 0;
}

/* ---- declarations ---- */

typedef struct {
    sim *s;
    size_t peer;
    int role, measured;
} decl_ctx;

static void on_declared(void *arg, int err, const char *msg, const uint8_t *ok, size_t n)
{
    decl_ctx *c = arg;
    sim *s = c->s;
    s->in_flight--;
    if (c->measured) s->res->declarations_ok += err == 0;
    if (err == 0 && s->roles[c->role].peer == c->peer && s->peers[c->peer].alive) s->roles[c->role].declared = 1;
    free(c);
}

static void declare(sim *s, int r)
{
    sim_role *role = &s->roles[r];
    sim_peer *p = &s->peers[role->peer];
    role->next_decl = s->now_s + s->cfg.update_period_s;
    const char *uids[64];
    size_t n = s->cfg.uids_per_server;
    for (size_t u = 0; u < n; u++) uids[u] = s->uid_names[(size_t)r * n + u];
    wire_maddr ep;
    if (dht_proto_addr_to_maddr(&dht_node_self(p->d)->addr, &p->id, &ep) != 0) return;
    decl_ctx *c = malloc(sizeof *c);
    if (!c) return;
    *c = (decl_ctx){ s, role->peer, r, s->measuring == 1 };
    char err[256];
    s->in_flight++;
    if (s->measuring == 1) s->res->declarations++;
    if (dht_declare_experts(p->d, uids, n, &ep, dht_clock_now(s->clock) + s->cfg.expiration_s, on_declared, c, err,
                            sizeof err) != 0) {
        s->in_flight--;
        free(c);
    }
}

/* ---- lookups ---- */

typedef struct {
    sim *s;
    size_t uid;
    uint64_t t0_us;
    int prefix, measured, hot;
} look_ctx;

static int record_peer(sim *s, const dht_subitem *it, double *exp, uint8_t pk[DHT_IDENT_PK_BYTES])
{
    dht_record rec;
    if (dht_record_parse(it->subkey, it->sklen, it->value, it->vlen, &rec) != 0) return -1;
    *exp = it->expiration;
    memcpy(pk, rec.pk, DHT_IDENT_PK_BYTES);
    return 0;
}

static int push_figure(sim *s, int hops, double lat)
{
    if (s->nh == s->caph) {
        size_t cap = s->caph ? s->caph * 2 : 1024;
        int *h = realloc(s->hops, cap * sizeof *h);
        if (!h) return DMOE_ENOMEM;
        s->hops = h;
        double *l = realloc(s->lat, cap * sizeof *l);
        if (!l) return DMOE_ENOMEM;
        s->lat = l;
        s->caph = cap;
    }
    s->hops[s->nh] = hops;
    s->lat[s->nh++] = lat;
    return 0;
}

static void on_looked(void *arg, int err, const char *msg, const dht_get_result *r)
{
    look_ctx *c = arg;
    sim *s = c->s;
    dht_sim_result *res = s->res;
    s->in_flight--;
    if (!c->measured || err == DMOE_ESHUTDOWN) {
        free(c);
        return;
    }
    if (c->prefix) {
        res->prefix_lookups++;
        res->prefix_ok += r->found && r->is_dict && r->nsubs > 0;
        free(c);
        return;
    }
    /* the record dht_get_experts would choose: latest expiration, ties to the smallest key */
    long best = -1;
    double best_exp = 0;
    uint8_t best_pk[DHT_IDENT_PK_BYTES] = { 0 };
    for (size_t i = 0; r->found && r->is_dict && i < r->nsubs; i++) {
        double e;
        uint8_t pk[DHT_IDENT_PK_BYTES];
        if (record_peer(s, &r->subs[i], &e, pk) != 0) continue;
        if (best < 0 || e > best_exp || (e == best_exp && memcmp(pk, best_pk, sizeof pk) < 0)) {
            best = (long)i;
            best_exp = e;
            memcpy(best_pk, pk, sizeof pk);
        }
    }
    res->lookups++;
    res->hot_lookups += c->hot;
    s->rpcs_sum += r->rpcs;
    s->slow_sum += r->slow;
    if (best < 0) {
        res->missing++;
    } else {
        dht_id signer;
        dht_ident_id_of(best_pk, &signer);
        void *v = rt_map_get(&s->by_id, signer.b, DHT_ID_BYTES);
        const sim_peer *who = v ? &s->peers[(size_t)(uintptr_t)v - 1] : NULL;
        if (who && !who->alive) {
            res->stale++;
        } else if (who && who->role == (int)(c->uid / s->cfg.uids_per_server)) {
            res->ok++;
            res->hot_ok += c->hot;
            push_figure(s, r->hops, (double)(dht_clock_us(s->clock) - c->t0_us) / 1000.0);
        }
    }
    free(c);
}

static int start_lookup(sim *s, size_t trainer, size_t uid, int prefix, int hot)
{
    look_ctx *c = calloc(1, sizeof *c);
    if (!c) return DMOE_ENOMEM;
    *c = (look_ctx){ s, uid, dht_clock_us(s->clock), prefix, s->measuring == 1, hot };
    s->in_flight++;
    if (s->measuring == 1) s->ops_measured++;
    const dht_id *key = prefix ? &s->prefix_ids[uid / SIM_UIDS_PER_PREFIX] : &s->uid_ids[uid];
    if (dht_get_signed(s->peers[trainer].d, key, 0, on_looked, c) != 0) {
        s->in_flight--;
        free(c);
    }
    return 0;
}

/* beam_step: a trainer looks up a live, declared uid (half the time a hot one), after its prefix. */
static void beam_step(sim *s)
{
    size_t trainer = s->trainers[sim_rand(s) % s->ntrainers];
    for (int t = 0; t < 16; t++) {
        int hot = s->cfg.hot_keys > 0 && (sim_rand(s) & 1);
        size_t uid = hot ? (size_t)(sim_rand(s) % s->cfg.hot_keys) : (size_t)(sim_rand(s) % s->nuids);
        const sim_role *r = &s->roles[uid / s->cfg.uids_per_server];
        if (!r->declared || !s->peers[r->peer].alive) continue;
        if (sim_uniform(s) < s->cfg.prefix_share) start_lookup(s, trainer, uid, 1, hot);
        start_lookup(s, trainer, uid, 0, hot);
        return;
    }
}

/* ---- the tick ---- */

static dht_memnet_traffic trainers_traffic(const sim *s)
{
    dht_memnet_traffic sum = { 0, 0, 0, 0 };
    for (size_t i = 0; i < s->ntrainers; i++) {
        dht_memnet_traffic t = dht_memnet_traffic_of(s->net, s->peers[s->trainers[i]].ep);
        sum.sent_msgs += t.sent_msgs;
        sum.sent_bytes += t.sent_bytes;
        sum.recv_msgs += t.recv_msgs;
        sum.recv_bytes += t.recv_bytes;
    }
    return sum;
}

static void tick(sim *s)
{
    s->now_s = (double)dht_clock_us(s->clock) / 1e6;
    for (size_t g = 0; g < s->ngrave; g++) dht_node_free(s->graveyard[g]);
    s->ngrave = 0;
    if (!s->measuring && s->now_s >= s->cfg.warmup_s) {
        s->measuring = 1;
        s->t0 = trainers_traffic(s);
        if (s->cfg.verbose) fprintf(stderr, "dht_sim: measuring from %.0f s (virtual)\n", s->now_s);
    }
    if (s->now_s >= s->cfg.warmup_s + s->cfg.duration_s) {
        if (s->measuring == 1) {
            dht_memnet_traffic t = trainers_traffic(s);
            s->res->msgs_per_lookup = (double)(t.sent_msgs + t.recv_msgs - s->t0.sent_msgs - s->t0.recv_msgs);
            s->res->bytes_per_lookup = (double)(t.sent_bytes + t.recv_bytes - s->t0.sent_bytes - s->t0.recv_bytes);
            s->measuring = 2;   /* drain: lookups out finish, none start */
        }
        if (s->in_flight == 0 || s->now_s >= s->cfg.warmup_s + s->cfg.duration_s + 60) s->finished = 1;
        return;
    }
    while (s->nleave && s->peers[s->leave_heap[0]].leave_at <= s->now_s) {
        size_t i = leave_pop(s);
        leave(s, i);
        replace(s, i);
    }
    sim_hostile_reindex(s);
    for (size_t r = 0; r < s->nroles; r++)
        if (s->roles[r].next_decl <= s->now_s && s->peers[s->roles[r].peer].alive && s->peers[s->roles[r].peer].booted)
            declare(s, (int)r);
    s->step_credit += s->cfg.lookup_rate * SIM_TICK_MS / 1000.0;
    while (s->step_credit >= 1.0) {
        s->step_credit -= 1.0;
        beam_step(s);
    }
    if (s->cfg.verbose && (uint64_t)(s->now_s * 10) % 600 == 0)
        fprintf(stderr, "dht_sim: %.0f s virtual, %zu up, %zu in flight, %zu lookups, %zu ok, %zu joins\n", s->now_s,
                s->nup, s->in_flight, s->res->lookups, s->res->ok, s->res->joins);
}

static void handle(rt_actor *self, rt_msg *m)
{
    sim *s = (sim *)self;
    if (m->type == MSG_TICK && !s->finished) tick(s);
    rt_msg_drop(m);
}

static void destroy(rt_actor *self) { (void)self; }

static int is_finished(void *arg) { return ((sim *)arg)->finished; }

/* ---- figures ---- */

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void figures(sim *s, dht_sim_result *res)
{
    size_t n = s->nh;
    if (n) {
        qsort(s->hops, n, sizeof *s->hops, cmp_int);
        qsort(s->lat, n, sizeof *s->lat, cmp_dbl);
        size_t p99 = (n * 99) / 100 < n ? (n * 99) / 100 : n - 1;
        res->hops_p50 = s->hops[n / 2];
        res->hops_p99 = s->hops[p99];
        res->hops_max = s->hops[n - 1];
        res->lat_p50_ms = s->lat[n / 2];
        res->lat_p99_ms = s->lat[p99];
    }
    res->success = res->lookups ? (double)res->ok / (double)res->lookups : 0;
    res->stale_rate = res->lookups ? (double)res->stale / (double)res->lookups : 0;
    res->rpcs_per_lookup = res->lookups ? (double)s->rpcs_sum / (double)res->lookups : 0;
    res->slow_per_lookup = res->lookups ? (double)s->slow_sum / (double)res->lookups : 0;
    size_t ops = s->ops_measured ? s->ops_measured : 1;
    res->msgs_per_lookup /= (double)ops;
    res->bytes_per_lookup /= (double)ops;
}

/* ---- a run ---- */

void dht_sim_defaults(dht_sim_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->peers = 1000;
    c->duration_s = 60;
    c->warmup_s = 60;
    c->median_uptime_s = 3600;
    c->uptime_shape = 0.5;
    c->hot_keys = 8;
    c->sybils_per_hot = 4;
    c->rtt_min_ms = 20;
    c->rtt_max_ms = 300;
    c->server_share = 0.05;
    c->uids_per_server = 2;
    c->update_period_s = 30;
    c->expiration_s = 60;
    c->lookup_rate = 20;
    c->prefix_share = 0.5;
    c->seed = 1;
}

static int check_cfg(const dht_sim_cfg *c, char *err, size_t errlen)
{
    const char *bad = NULL;
    if (c->peers < 16 || c->peers > 1000000) bad = "peers must be 16 .. 1,000,000";
    else if (!(c->duration_s > 0) || !(c->warmup_s >= 0) || c->duration_s + c->warmup_s > 86400) bad = "durations";
    else if (!(c->median_uptime_s >= 0) || !(c->uptime_shape > 0.05 && c->uptime_shape <= 10)) bad = "uptime";
    else if (!(c->hostile_share >= 0 && c->hostile_share <= 0.9)) bad = "hostile share must be 0 .. 0.9";
    else if (!(c->loss >= 0 && c->loss < 1)) bad = "loss must be 0 .. 1";
    else if (c->rtt_min_ms < 1 || c->rtt_max_ms < c->rtt_min_ms || c->rtt_max_ms > 10000) bad = "RTT range";
    else if (!(c->server_share > 0 && c->server_share <= 0.5)) bad = "server share must be 0 .. 0.5";
    else if (c->servers > c->peers / 2) bad = "servers must be at most half the peers";
    else if (c->uids_per_server < 1 || c->uids_per_server > 64) bad = "uids per server must be 1 .. 64";
    else if (!(c->update_period_s >= 1) || !(c->expiration_s >= c->update_period_s)) bad = "update period / expiration";
    else if (!(c->lookup_rate > 0 && c->lookup_rate <= 100000)) bad = "lookup rate";
    else if (!(c->prefix_share >= 0 && c->prefix_share <= 1)) bad = "prefix share";
    else if (c->sybil_bits < 0 || c->sybil_bits > 24) bad = "sybil bits must be 0 .. 24";
    if (bad) snprintf(err, errlen, "%s", bad);
    return bad ? DMOE_EINVAL : 0;
}

static uint64_t next_seed(const sim *s) { return mix(s->cfg.seed * 0x100000001b3ull + s->np + 1); }

static int build(sim *s, char *err, size_t errlen)
{
    dht_sim_cfg *c = &s->cfg;
    s->building = 1;
    s->nroles = c->servers ? c->servers : (size_t)(c->peers * c->server_share);
    if (s->nroles < 1) s->nroles = 1;
    s->nuids = s->nroles * c->uids_per_server;
    if (c->hot_keys > s->nuids) c->hot_keys = s->nuids;
    size_t nprefix = (s->nuids + SIM_UIDS_PER_PREFIX - 1) / SIM_UIDS_PER_PREFIX;
    s->up = malloc(c->peers * sizeof *s->up);
    s->trainers = malloc(c->trainers * sizeof *s->trainers);
    s->roles = calloc(s->nroles, sizeof *s->roles);
    s->uid_names = malloc(s->nuids * sizeof *s->uid_names);
    s->uid_ids = malloc(s->nuids * sizeof *s->uid_ids);
    s->prefix_names = malloc(nprefix * sizeof *s->prefix_names);
    s->prefix_ids = malloc(nprefix * sizeof *s->prefix_ids);
    if (!s->up || !s->trainers || !s->roles || !s->uid_names || !s->uid_ids || !s->prefix_names || !s->prefix_ids)
        return DMOE_ENOMEM;
    for (size_t u = 0; u < s->nuids; u++) {
        int len = snprintf(s->uid_names[u], sizeof s->uid_names[u], "ffn.%zu.%zu", u / SIM_UIDS_PER_PREFIX,
                           u % SIM_UIDS_PER_PREFIX);
        if (dht_id_from_str(&s->uid_ids[u], s->uid_names[u], (size_t)len) != 0) return DMOE_ENOMEM;
    }
    for (size_t x = 0; x < nprefix; x++) {
        int len = snprintf(s->prefix_names[x], sizeof s->prefix_names[x], "ffn.%zu.", x);
        if (dht_id_from_str(&s->prefix_ids[x], s->prefix_names[x], (size_t)len) != 0) return DMOE_ENOMEM;
    }
    size_t hostile = (size_t)(c->peers * c->hostile_share + 0.5);
    if (hostile + s->nroles > c->peers) {
        snprintf(err, errlen, "hostile share and server share leave no room");
        return DMOE_EINVAL;
    }
    size_t sybils = hostile ? c->hot_keys * c->sybils_per_hot : 0;
    if (sybils > hostile) sybils = hostile;
    int bits = c->sybil_bits;
    if (!bits) bits = (int)floor(log2((double)c->peers / 20.0)) + 2;
    if (bits < 1) bits = 1;
    s->res->hostile = hostile;
    s->res->servers = s->nroles;
    s->res->sybils = sybils;
    if (hostile) sim_hostile_install(s);
    for (size_t i = 0; i < c->peers; i++) {
        int is_sybil = i < sybils;
        uint64_t seed = next_seed(s);
        if (is_sybil) seed = sim_grind_seed(&s->uid_ids[i / c->sybils_per_hot], bits, seed);
        long p = new_peer(s, seed, i < hostile, is_sybil, 0);
        if (p < 0) return (int)p;
        if (i >= hostile && i - hostile < s->nroles) {
            size_t r = i - hostile;
            s->peers[p].role = (int)r;
            s->roles[r] = (sim_role){ (size_t)p, sim_uniform(s) * c->update_period_s, 0 };
        }
    }
    for (size_t t = 0; t < c->trainers; t++) {
        long p = new_peer(s, next_seed(s), 0, 0, 1);
        if (p < 0) return (int)p;
        s->trainers[s->ntrainers++] = (size_t)p;
    }
    s->building = 0;
    return warm_tables(s);
}

int dht_sim_run(const dht_sim_cfg *cfg, dht_sim_result *out, char *err, size_t errlen)
{
    int rc = check_cfg(cfg, err, errlen);
    if (rc) return rc;
    memset(out, 0, sizeof *out);
    double w0 = wall_seconds(), c0 = cpu_seconds(), r0 = rss_mb();
    uint64_t v0 = dht_record_verifications();
    unsigned long long s0, ver0, hit0;
    dht_ident_counts(&s0, &ver0, &hit0);
    if (!cfg->no_memo && dht_ident_memo_enable(SIM_MEMO_ENTRIES) != 0) return DMOE_ENOMEM;
    rt_lag_spans_off(1);   /* the nodes' stall meters: not reported here, and two clock reads a handler */
    uint8_t key[32];       /* challenges and token keys from a seeded stream: no system call each, repeatable */
    for (int i = 0; i < 4; i++) {
        uint64_t w = mix(cfg->seed + 0xc4a11e9eull * (uint64_t)(i + 1));
        memcpy(key + 8 * i, &w, 8);
    }
    dht_ident_random_stream(key);
    sim *s = calloc(1, sizeof *s);
    if (!s) return DMOE_ENOMEM;
    s->cfg = *cfg;
    if (!s->cfg.trainers) s->cfg.trainers = cfg->peers / 100 > 4 ? cfg->peers / 100 : 4;
    s->res = out;
    s->rng = mix(cfg->seed ^ 0x5eed);
    rc = DMOE_ENOMEM;
    s->l = rt_loop_new();
    if (!s->l || dht_vclock_new(s->l, &s->clock) != 0 || dht_memnet_new(s->l, s->clock, 1, &s->net) != 0) goto out;
    dht_memnet_set_latency(s->net, link_ms, s);
    if (cfg->loss > 0) dht_memnet_set_filter(s->net, lossy, s);
    rt_actor_init(&s->actor, s->l, "dht_sim", handle, destroy);
    if (dht_timer_init(&s->tick, s->clock, &s->actor, MSG_TICK) != 0) goto out;
    rc = build(s, err, errlen);
    if (rc) goto out;
    out->setup_s = wall_seconds() - w0;
    out->bytes_per_peer = (rss_mb() - r0) * 1024.0 * 1024.0 / (double)(s->np ? s->np : 1);
    if (cfg->verbose)
        fprintf(stderr, "dht_sim: %zu peers and %zu trainers built in %.1f s, %.0f bytes each\n", cfg->peers,
                s->ntrainers, out->setup_s, out->bytes_per_peer);
    double w1 = wall_seconds();
    rc = DMOE_ENOMEM;
    if (dht_timer_start(&s->tick, SIM_TICK_MS, 1) != 0) goto out;
    dht_vclock_run(s->clock, is_finished, s, (uint64_t)((cfg->warmup_s + cfg->duration_s + 120) * 1000));
    out->run_s = wall_seconds() - w1;
    out->virtual_s = (double)dht_clock_us(s->clock) / 1e6;
    out->messages = dht_memnet_messages(s->net);
    figures(s, out);
    rc = 0;
out:
    if (rc && !err[0]) snprintf(err, errlen, "%s", dmoe_strerror(rc));
    for (size_t i = 0; i < s->np; i++)
        if (s->peers[i].d) dht_node_stop(s->peers[i].d);
    dht_memnet_free(s->net);
    for (size_t i = 0; i < s->np; i++) {
        dht_node_free(s->peers[i].d);
        free(s->peers[i].forged);
    }
    for (size_t g = 0; g < s->ngrave; g++) dht_node_free(s->graveyard[g]);
    dht_timer_deinit(&s->tick);
    if (s->l) {
        rt_actor_stop(&s->actor);
        rt_loop_free(s->l);
    }
    dht_vclock_free(s->clock);
    out->record_verifications = dht_record_verifications() - v0;
    unsigned long long s1, ver1, hit1;
    dht_ident_counts(&s1, &ver1, &hit1);
    out->signs = s1 - s0;
    out->verifies = ver1 - ver0;
    out->memo_hits = hit1 - hit0;
    dht_ident_memo_enable(0);
    rt_lag_spans_off(0);
    dht_ident_random_stream(NULL);
    out->wall_s = wall_seconds() - w0;
    out->cpu_s = cpu_seconds() - c0;
    out->peak_rss_mb = rss_mb();
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) out->peak_rss_mb = (double)ru.ru_maxrss / 1024.0;
    rt_map_clear(&s->by_id);
    free(s->peers);
    free(s->up);
    free(s->trainers);
    free(s->roles);
    free(s->uid_names);
    free(s->uid_ids);
    free(s->prefix_names);
    free(s->prefix_ids);
    free(s->leave_heap);
    free(s->graveyard);
    free(s->hostile_sorted);
    free(s->hops);
    free(s->lat);
    free(s);
    return rc;
}
