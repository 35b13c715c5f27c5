/* dmoe-node -- host experts over TCP (hivemind-server's counterpart).
 *
 * Parses hivemind's flags (from --config FILE too, runtime/text/rt_conf.h: the command line wins) into a
 * node_cfg, starts the node on a fresh loop, and runs until SIGINT or SIGTERM, which start the graceful
 * stop (node.h); a second signal stops at once. Exit status, as every program's (RT_ARGS_EXIT_HELP): 0
 * after a clean stop, 1 when the node fails at run time or cannot use the network (a busy port, an
 * initial peer that does not answer), 2 on bad usage or bad local input -- flags, and what they name
 * that can be checked before the node starts (local_inputs_ok: the expert class, uids and pattern, the
 * schedule, the trusted-keys, identity and checkpoint paths), each with a plain "dmoe-node: ..." line.
 * `--num_experts 0` runs a DHT-only node (a bootstrap node for the others).
 */
#include <errno.h>
#include <event2/event.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actors/node/ckpt.h"
#include "actors/dht/trust/dht_ident.h"
#include "actors/dht/trust/dht_trust.h"
#include "actors/grid/uid.h"
#include "actors/node/node.h"
#include "kernels/kern_classes.h"
#include "kernels/kern_expert.h"
#include "runtime/rt_mem.h"
#include "runtime/text/rt_args.h"
#include "runtime/text/rt_conf.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"

typedef struct {
    rt_loop *loop;
    node *n;
    int signals;
    int failed;
} app;

static void on_fatal(void *arg, int status, const char *msg)
{
    app *a = arg;
    a->failed = status;
    rt_loop_break(a->loop);
}

static void stopped(void *arg)
{
    app *a = arg;
    LOG_INFO("Server stopped");
    rt_loop_break(a->loop);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    app *a = arg;
    if (++a->signals > 1) {
        LOG_WARN("second signal: stopping now");
        rt_loop_break(a->loop);
        return;
    }
    LOG_INFO("Caught %s, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    node_stop(a->n, stopped, a);
}

/* A path the node will create a file or folder at: the folder it goes in must exist. */
static int parent_exists(const char *flag, const char *path)
{
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    const char *dir = dirname(copy);
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return 1;
    fprintf(stderr, "dmoe-node: %s %s: the folder %s does not exist\n", flag, path, dir);
    return 0;
}

/* local_inputs_ok checks what the flags name that is on this machine, before the node starts, so that
 * bad local input is exit 2 with a plain message rather than a start-up failure in the log: the expert
 * class, the uids or pattern, the schedule, the trusted-keys file, the identity file (read when it
 * exists; its folder otherwise), the checkpoint folder. Returns 1 when all is well. */
static int local_inputs_ok(const node_cfg *c)
{
    int ok = 1;
    char err[512];
    if (!kern_expert_find(c->expert_cls)) {
        fprintf(stderr, "dmoe-node: --expert_cls %s is not a known class (known: %s)\n", c->expert_cls, kern_expert_names());
        ok = 0;
    }
    if (kern_sched_check(&c->sched) != 0) {
        fprintf(stderr, "dmoe-node: --scheduler linear needs --num_training_steps >= 1 and --num_warmup_steps >= 0\n");
        ok = 0;
    }
    if (c->num_experts < 0) { fprintf(stderr, "dmoe-node: --num_experts must be at least 0 (0: a DHT-only node)\n"); ok = 0; }
    if (c->num_experts == 0 && !c->expert_uids && !c->checkpoint_dir && c->client_mode) {
        fprintf(stderr, "dmoe-node: --num_experts 0 runs a DHT-only node, which cannot be in --client_mode\n");
        ok = 0;
    }
    if (c->max_batch_size < 1 || c->min_batch_size < 1 || c->min_batch_size > c->max_batch_size) {
        fprintf(stderr, "dmoe-node: need 1 <= --min_batch_size <= --max_batch_size\n");
        ok = 0;
    }
    for (int i = 0; c->expert_uids && c->expert_uids[i]; i++)
        if (!uid_is_valid(c->expert_uids[i])) {
            fprintf(stderr, "dmoe-node: --expert_uids %s is not an uid (name.coord[.coord...], e.g. expert.3)\n",
                    c->expert_uids[i]);
            ok = 0;
        }
    if (c->expert_pattern && !c->expert_uids && c->num_experts > 0) {
        /* the syntax only: a pattern with fewer free uids than --num_experts is the node's call at start
         * (a WARN, or exit 2 with --strict_experts), once the DHT says which are free */
        uint64_t grid = 0, row = 0;
        int ncoords = 0;
        if (uid_pattern_shape(c->expert_pattern, &grid, &row, &ncoords, err, sizeof err) != 0) {
            fprintf(stderr, "dmoe-node: --expert_pattern %s: %s\n", c->expert_pattern, err);
            ok = 0;
        }
    }
    if (c->trusted_keys_path) {
        dht_trust *t = NULL;
        if (dht_trust_load(c->trusted_keys_path, &t, err, sizeof err) != 0) {
            fprintf(stderr, "dmoe-node: --trusted_keys: %s\n", err);
            ok = 0;
        }
        dht_trust_free(t);
    }
    if (c->identity_path) {
        if (access(c->identity_path, F_OK) == 0) {
            dht_ident key;
            int created = 0;
            if (dht_ident_init() != 0 || dht_ident_load_or_create(c->identity_path, &key, &created, err, sizeof err) != 0) {
                fprintf(stderr, "dmoe-node: --identity_path: %s\n", err);
                ok = 0;
            } else {
                dht_ident_wipe(&key);
            }
        } else if (!parent_exists("--identity_path", c->identity_path)) {
            ok = 0;
        }
    }
    if (c->checkpoint_dir) {
        struct stat st;
        if (stat(c->checkpoint_dir, &st) == 0) {
            if (!S_ISDIR(st.st_mode)) { fprintf(stderr, "dmoe-node: --checkpoint_dir %s is not a folder\n", c->checkpoint_dir); ok = 0; }
        } else if (errno != ENOENT || !parent_exists("--checkpoint_dir", c->checkpoint_dir)) {
            if (errno != ENOENT) fprintf(stderr, "dmoe-node: --checkpoint_dir %s: %s\n", c->checkpoint_dir, strerror(errno));
            ok = 0;
        }
    }
    return ok;
}

int main(int argc, char **argv)
{
    (void)rt_mem_tune();   /* big buffers stay in the heap (runtime/rt_mem.h) */
    node_cfg c;
    node_default_cfg(&c);
    const char *expert_cls = c.expert_cls, *pattern = NULL, *optimizer = "adam", *log_level = NULL,
               *scheduler = "none";
    int64_t warmup = 0, total_steps = 0, total_steps_alias = 0;
    double weight_decay = 0, clip_grad_norm = 0;
    int hidden = c.kcfg.hidden_dim, seq_len = 128, delay_ms = 500;
    double lr = -1, dropout = 0.1, max_frame_mb = (double)(c.max_frame >> 20),
           max_pending_mb = (double)(c.max_pending_bytes >> 20);
    double reply_soft_mb = (double)(c.reply_soft_bytes >> 20), reply_hard_mb = (double)(c.reply_hard_bytes >> 20),
           max_replies_mb = (double)(c.max_replies_bytes >> 20), min_rate_kbps = (double)(c.min_rate >> 10),
           min_rate_grace_s = c.min_rate_grace_ms / 1000.0;
    char **uids = NULL, **host_maddrs = NULL, **announce_maddrs = NULL, **initial_peers = NULL;
    const char *checkpoint_dir = NULL, *compression = "NONE", *identity_path = NULL, *config = NULL;
    const char *trusted_keys = NULL;
    int metrics_port = -1;
    double cache_mb = (double)(c.activation_cache_bytes >> 20);
    int64_t max_batch = c.max_batch_size, min_batch = c.min_batch_size;

    const rt_arg flags[] = {
        {"expert_cls", ARG_STR, &expert_cls, "expert class: ffn, det_dropout, transformer, nop, nop_delay", "Experts", NULL, "CLASS"},
        {"hidden_dim", ARG_INT, &hidden, "main dimension of the experts", "Experts"},
        {"num_experts", ARG_INT, &c.num_experts, "how many experts to host (with --expert_pattern; 0: a DHT-only node)", "Experts"},
        {"expert_pattern", ARG_STR, &pattern, "uid pattern, e.g. expert.[0:5] or ffn.[0:4].[0:256]", "Experts", NULL, "PATTERN"},
        {"strict_experts", ARG_FLAG, &c.strict_experts, "exit with status 2 when the pattern has fewer free uids than --num_experts (default: start with the free ones, and a WARN)", "Experts"},
        {"expert_uids", ARG_LIST, &uids, "explicit expert uids (instead of a pattern)", "Experts", NULL, "UID"},
        {"seq_len", ARG_INT, &seq_len, "transformer: sequence length S of its [B, S, H] input (hivemind's 128)", "Experts", NULL, "N"},
        {"dropout", ARG_F64, &dropout, "transformer: dropout probability in training (hivemind's 0.1; 0 for determinism)", "Experts", NULL, "P"},
        {"delay_ms", ARG_INT, &delay_ms, "nop_delay: how long each batch is held (ms; the loop never sleeps)", "Experts", NULL, "MS"},
        {"max_batch_size", ARG_I64, &max_batch, "most rows in one batch (a bigger request is an error)", "Batching"},
        {"min_batch_size", ARG_I64, &min_batch, "fewest rows a batch waits for (at most --batch_wait_ms)", "Batching"},
        {"batch_wait_ms", ARG_INT, &c.batch_wait_ms, "longest wait for --min_batch_size rows", "Batching", NULL, "MS"},
        {"activation_cache_mb", ARG_F64, &cache_mb, "forward activations kept for their backward, MiB (0: recompute)", "Batching", NULL, "MIB"},
        {"num_workers", ARG_INT, &c.num_workers, "worker threads for the kernels (default: the core count)", "Batching"},
        {"optimizer", ARG_STR, &optimizer, "optimizer applied after each batched backward: adam, sgd, lamb, none", "Training", NULL, "NAME"},
        {"lr", ARG_F64, &lr, "learning rate (-1: each optimizer's own: adam 1e-3, sgd 0.01, lamb 1e-3)", "Training", NULL, "LR"},
        {"weight_decay", ARG_F64, &weight_decay, "L2 weight decay added to the gradients (as torch's optimizers)", "Training", NULL, "X"},
        {"clip_grad_norm", ARG_F64, &clip_grad_norm, "clip the global gradient norm to this before each step (0: off)", "Training", NULL, "X"},
        {"scheduler", ARG_STR, &scheduler, "learning-rate schedule: none, or linear (warm-up then decay to 0)", "Training", NULL, "NAME"},
        {"num_warmup_steps", ARG_I64, &warmup, "linear: steps of warm-up from 0 to --lr", "Training"},
        {"num_training_steps", ARG_I64, &total_steps, "linear: the step at which the rate reaches 0", "Training"},
        {"num_total_steps", ARG_I64, &total_steps_alias, "the same as --num_training_steps (hivemind's older name)", "Training"},
        {"seed", ARG_U64, &c.seed, "seed for uids drawn from patterns and initial weights", "Training"},
        {"host_maddrs", ARG_LIST, &host_maddrs, "addresses to listen on, multiaddrs or IP:PORT (default /ip4/127.0.0.1/tcp/0; a wildcard 0.0.0.0 or :: announces the machine's addresses)", "Network", rt_args_is_maddr, "ADDR"},
        {"announce_maddrs", ARG_LIST, &announce_maddrs, "IP addresses to tell others instead of the bound ones (behind NAT, a forwarded port)", "Network", rt_args_is_maddr, "ADDR"},
        {"compression", ARG_STR, &compression, "wire compression of inputs and input gradients: NONE, FLOAT16, MEANSTD_16BIT, UNIFORM_8BIT, BLOCKWISE_8BIT", "Network", NULL, "NAME"},
        {"max_frame_mb", ARG_F64, &max_frame_mb, "largest frame accepted, MiB (a frame is one request)", "Network", NULL, "MIB"},
        {"max_pending_mb", ARG_F64, &max_pending_mb, "received requests held before reading pauses, MiB", "Network", NULL, "MIB"},
        {"max_inflight", ARG_INT, &c.max_inflight, "open requests per connection before reading pauses", "Network"},
        {"reply_soft_mb", ARG_F64, &reply_soft_mb, "unread replies of one connection before it stops being read, MiB", "Limits", NULL, "MIB"},
        {"reply_hard_mb", ARG_F64, &reply_hard_mb, "unread replies of one connection before it is closed, MiB", "Limits", NULL, "MIB"},
        {"max_replies_mb", ARG_F64, &max_replies_mb, "unread replies of all connections; past it a slow reader is closed, MiB", "Limits", NULL, "MIB"},
        {"min_rate_kbps", ARG_F64, &min_rate_kbps, "slowest a frame may arrive once it is past the grace period, KiB/s (0: any)", "Limits", NULL, "KIB"},
        {"min_rate_grace_s", ARG_F64, &min_rate_grace_s, "seconds a frame may arrive slower than --min_rate_kbps", "Limits", NULL, "S"},
        {"idle_timeout_s", ARG_INT, &c.idle_timeout_s, "close an inbound connection idle this long (0: never)", "Limits", NULL, "S"},
        {"max_connections", ARG_INT, &c.max_connections, "open connections (at most half the file descriptors); when full the quietest is closed for a new one", "Limits"},
        {"initial_peers", ARG_LIST, &initial_peers, "DHT peers to join: multiaddrs (/ip4, /ip6, /dns .../tcp/PORT[/p2p/ID]) or HOST:PORT", "DHT", rt_args_is_maddr, "ADDR"},
        {"client_mode", ARG_FLAG, &c.client_mode, "join the DHT without serving it (experts are then not declared)", "DHT"},
        {"update_period", ARG_F64, &c.update_period, "seconds between declaring the experts in the DHT (and checkpoints)", "DHT", NULL, "S"},
        {"expiration", ARG_F64, &c.expiration, "seconds a declaration lives (0: max(2 * update_period, 3))", "DHT", NULL, "S"},
        {"trusted_keys", ARG_STR, &trusted_keys, "a private swarm: store and use only DHT records signed by the Ed25519 public keys in FILE (64 hex digits a line, # comments)", "DHT", NULL, "PATH"},
        {"identity_path", ARG_STR, &identity_path, "keep the node's Ed25519 key, hence its DHT id, in FILE across restarts (created 0600 if absent; default: a new key each start)", "DHT", NULL, "PATH"},
        {"checkpoint_dir", ARG_STR, &checkpoint_dir, "save experts to DIR/<uid>/step-N.safetensors and load them at start", "Checkpoints", NULL, "DIR"},
        {"keep_checkpoints", ARG_INT, &c.keep_checkpoints, "checkpoint files kept per expert", "Checkpoints"},
        {"stats_report_interval", ARG_F64, &c.stats_report_interval, "seconds between stats reports: a line per expert that had work, and a total (0: never)", "Logging", NULL, "S"},
        {"metrics_port", ARG_INT, &metrics_port, "serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any port; -1: off)", "Logging", NULL, "PORT"},
        {"log_level", ARG_STR, &log_level, "DEBUG, INFO, WARN or ERROR (also $DMOE_LOG)", "Logging", NULL, "LEVEL"},
        {"config", ARG_STR, &config, "read flags from FILE, YAML 'key: value' lines as hivemind's config.yml (scripts/dmoe-node.conf); command-line flags win", "Config", NULL, "PATH"},
    };
    const int nflags = (int)(sizeof flags / sizeof flags[0]);
    char err[512];
    char *pos[1];
    int npos;
    rt_conf conf;
    if (rt_conf_merge(argc, argv, flags, nflags, &conf, err, sizeof err) != 0) {
        fprintf(stderr, "dmoe-node: %s\n", err);
        return 2;
    }
    int rc = rt_args_parse(conf.argc, conf.argv, flags, nflags, pos, 0, &npos, err, sizeof err);
    if (rc == RT_ARGS_HELP || rc == RT_ARGS_VERSION) {
        if (rc == RT_ARGS_HELP) rt_args_usage(stdout, "dmoe-node [flags]   (host experts over TCP)", flags, nflags);
        else rt_args_version(stdout, "dmoe-node");
        rt_args_free(flags, nflags);
        rt_conf_free(&conf);
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "dmoe-node: %s\n", err);
        rt_args_free(flags, nflags);
        rt_conf_free(&conf);
        return 2;
    }
    int bad = 0;
    if (log_level) {
        int lv = rt_log_parse_level(log_level);
        if (lv < 0) { fprintf(stderr, "dmoe-node: --log_level %s is not DEBUG, INFO, WARN or ERROR\n", log_level); bad = 1; }
        else rt_log_set_level(lv);
    }
    c.expert_cls = expert_cls;
    c.expert_pattern = pattern;
    c.expert_uids = uids;
    c.kcfg.hidden_dim = hidden;
    c.kcfg.seq_len = seq_len;
    c.kcfg.dropout = (float)dropout;
    c.kcfg.delay_ms = strcmp(expert_cls, "nop_delay") == 0 ? delay_ms : 0;
    c.max_batch_size = max_batch;
    c.min_batch_size = min_batch;
    if (hidden < 1) { fprintf(stderr, "dmoe-node: --hidden_dim must be positive\n"); bad = 1; }
    if (kern_optim_parse(optimizer, &c.opt) != 0) {
        fprintf(stderr, "dmoe-node: --optimizer %s is not adam, sgd, lamb or none\n", optimizer);
        bad = 1;
    }
    if (lr >= 0) c.opt.lr = (float)lr;
    if (weight_decay < 0 || clip_grad_norm < 0) { fprintf(stderr, "dmoe-node: --weight_decay and --clip_grad_norm must be >= 0\n"); bad = 1; }
    c.opt.weight_decay = (float)weight_decay;
    c.opt.clip_grad_norm = (float)clip_grad_norm;
    if (kern_sched_parse(scheduler, &c.sched) != 0) { fprintf(stderr, "dmoe-node: --scheduler %s is not none or linear\n", scheduler); bad = 1; }
    c.sched.num_warmup_steps = warmup;
    c.sched.num_total_steps = total_steps ? total_steps : total_steps_alias;
    if (max_frame_mb < 0.001 || max_frame_mb > 4095) { fprintf(stderr, "dmoe-node: --max_frame_mb must be in (0, 4095]\n"); bad = 1; }
    c.max_frame = (size_t)(max_frame_mb * 1048576.0);
    if (max_pending_mb < 1) { fprintf(stderr, "dmoe-node: --max_pending_mb must be at least 1\n"); bad = 1; }
    c.max_pending_bytes = (size_t)(max_pending_mb * 1048576.0);
    if (reply_soft_mb < 0.001 || reply_hard_mb < reply_soft_mb || max_replies_mb < reply_soft_mb) {
        fprintf(stderr, "dmoe-node: need 0 < --reply_soft_mb <= --reply_hard_mb and --reply_soft_mb <= --max_replies_mb\n");
        bad = 1;
    }
    c.reply_soft_bytes = (size_t)(reply_soft_mb * 1048576.0);
    c.reply_hard_bytes = (size_t)(reply_hard_mb * 1048576.0);
    c.max_replies_bytes = (size_t)(max_replies_mb * 1048576.0);
    if (min_rate_kbps < 0 || min_rate_grace_s < 0.1 || c.idle_timeout_s < 0 || c.max_connections < 1) {
        fprintf(stderr, "dmoe-node: need --min_rate_kbps >= 0, --min_rate_grace_s >= 0.1, --idle_timeout_s >= 0, --max_connections >= 1\n");
        bad = 1;
    }
    c.min_rate = (size_t)(min_rate_kbps * 1024.0);
    c.min_rate_grace_ms = (int)(min_rate_grace_s * 1000.0);
    if (c.num_workers < 1 || c.num_workers > 256) { fprintf(stderr, "dmoe-node: --num_workers must be in 1..256\n"); bad = 1; }
    if (host_maddrs) {
        c.n_host = 0;
        for (int i = 0; host_maddrs[i] && !bad; i++) {
            if (c.n_host == NODE_MAX_ADDRS) { fprintf(stderr, "dmoe-node: at most %d --host_maddrs\n", NODE_MAX_ADDRS); bad = 1; break; }
            if (wire_maddr_parse_listen(host_maddrs[i], &c.host[c.n_host++], err, sizeof err) != 0) {
                fprintf(stderr, "dmoe-node: --host_maddrs %s: %s\n", host_maddrs[i], err);
                bad = 1;
            }
        }
    }
    if (announce_maddrs) {
        for (int i = 0; announce_maddrs[i] && !bad; i++) {
            if (c.n_announce == NODE_MAX_ADDRS) { fprintf(stderr, "dmoe-node: at most %d --announce_maddrs\n", NODE_MAX_ADDRS); bad = 1; break; }
            wire_maddr *an = &c.announce[c.n_announce++];
            if (wire_maddr_parse(announce_maddrs[i], an, err, sizeof err) != 0) {
                fprintf(stderr, "dmoe-node: --announce_maddrs %s: %s\n", announce_maddrs[i], err);
                bad = 1;
            } else if (an->family == AF_UNSPEC || wire_maddr_is_wildcard(an)) {
                fprintf(stderr, "dmoe-node: --announce_maddrs %s: announce an IP address others can dial "
                        "(peers do not resolve names; 0.0.0.0 and :: reach nobody)\n", announce_maddrs[i]);
                bad = 1;
            }
        }
    }
    if (!(c.update_period > 0) || c.expiration < 0 || c.stats_report_interval < 0) {
        fprintf(stderr, "dmoe-node: --update_period must be positive; --expiration and --stats_report_interval >= 0\n");
        bad = 1;
    }
    if (c.keep_checkpoints < 1) { fprintf(stderr, "dmoe-node: --keep_checkpoints must be at least 1\n"); bad = 1; }
    if (metrics_port < -1 || metrics_port > 65535) { fprintf(stderr, "dmoe-node: --metrics_port must be -1..65535\n"); bad = 1; }
    c.metrics_port = metrics_port;
    if (cache_mb < 0) { fprintf(stderr, "dmoe-node: --activation_cache_mb must be >= 0\n"); bad = 1; }
    c.activation_cache_bytes = (size_t)(cache_mb * 1048576.0);
    if (wire_compress_parse(compression, &c.compression) != 0) {
        fprintf(stderr, "dmoe-node: --compression %s is not NONE, FLOAT16, MEANSTD_16BIT, UNIFORM_8BIT or BLOCKWISE_8BIT\n", compression);
        bad = 1;
    }
    c.checkpoint_dir = checkpoint_dir;
    c.identity_path = identity_path;
    c.trusted_keys_path = trusted_keys;
    c.initial_peers = initial_peers;
    if (!bad && !local_inputs_ok(&c)) bad = 1;
    /* after the checks that create nothing: this one makes the folder (its parent exists, checked above) */
    if (checkpoint_dir && !bad && ckpt_dir_check(checkpoint_dir, err, sizeof err) != 0) {   /* not at the first save */
        fprintf(stderr, "dmoe-node: --checkpoint_dir: %s\n", err);
        bad = 1;
    }
    if (bad) { rt_args_free(flags, nflags); rt_conf_free(&conf); return 2; }

    signal(SIGPIPE, SIG_IGN);
    app a = {0};
    a.loop = rt_loop_new();
    if (!a.loop) { fprintf(stderr, "dmoe-node: cannot create the event loop\n"); rt_conf_free(&conf); return 1; }
    c.on_fatal = on_fatal;
    c.fatal_arg = &a;
    a.n = node_start(a.loop, &c, err, sizeof err);
    if (!a.n) {
        LOG_ERROR("%s", err);
        rt_loop_free(a.loop);
        rt_args_free(flags, nflags);
        rt_conf_free(&conf);
        return 1;
    }
    struct event *sigint = evsignal_new(rt_loop_base(a.loop), SIGINT, on_signal, &a);
    struct event *sigterm = evsignal_new(rt_loop_base(a.loop), SIGTERM, on_signal, &a);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    rt_loop_run(a.loop);
    event_free(sigint);
    event_free(sigterm);
    /* The stop is done or under way: a signal from now on (a supervisor's repeated SIGTERM) changes
     * nothing, and must not turn the clean exit into a death by signal while the process tears down. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    node_free(a.n);
    rt_loop_free(a.loop);
    rt_args_free(flags, nflags);   /* the node kept pointers into these lists until now */
    rt_conf_free(&conf);           /* and into the config's words */
    return a.failed;
}
