/* moe_cmd.c -- `dmoe-call moe`: one forward of a Mixture-of-Experts layer over the live experts of a
 * DHT (see moe_cmd.h).
 *
 * Parses hivemind's layer flags (rt_args), reads the input (--input X.npy, float32 [B, H]) or makes
 * seeded random rows (--random BxH), checks that --output can be written -- local input first, exit 2
 * -- then joins the DHT through moe_net_open, makes the layer, runs one forward with moe_forward_run,
 * prints a summary (text or one JSON object) and writes the output rows [B, H] to --output.
 * Linked only into dmoe-call. One thread: the loop (plus the layer's gating worker).
 */
#include "cmd/call/moe_cmd.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/moe/route/moe_net.h"
#include "actors/net/resolve.h"
#include "kernels/kern_rng.h"
#include "runtime/files/rt_outfile.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/text/rt_args.h"
#include "wire/codec/wire_json.h"
#include "wire/codec/wire_npy.h"

static int is_number_word(const char *w) { return w[0] >= '0' && w[0] <= '9'; }

int moe_call_main(int argc, char **argv)
{
    char **peers = NULL, **grid_words = NULL;
    const char *prefix = "expert.", *random = NULL, *log_level = NULL, *trusted_keys = NULL, *input = NULL, *output = NULL;
    dht_trust *trusted = NULL;
    int k_best = 2, k_min = 1, json = 0, detect = 0, no_detect = 0, allow_zero = 0, is_switch = 0;
    double fwd_timeout = 30, after_k_min = 1.0;
    uint64_t seed = 0;
    const rt_arg flags[] = {
        {"initial_peers", ARG_LIST, &peers, "DHT peers to join", "DHT", rt_args_is_maddr, "ADDR"},
        {"trusted_keys", ARG_STR, &trusted_keys, "a private swarm: use only DHT records signed by the Ed25519 public keys in FILE (64 hex digits a line, # comments)", "DHT", NULL, "PATH"},
        {"uid_prefix", ARG_STR, &prefix, "experts' uid prefix", "Layer", NULL, "PREFIX"},
        {"grid_size", ARG_LIST, &grid_words, "grid dimensions, e.g. 15 or 32 32", "Layer", is_number_word, "N"},
        {"k_best", ARG_INT, &k_best, "experts per sample", "Layer", NULL},
        {"k_min", ARG_INT, &k_min, "answers per sample before the straggler timer starts", "Layer", NULL},
        {"forward_timeout", ARG_F64, &fwd_timeout, "seconds for the whole call", "Layer", NULL, "S"},
        {"timeout_after_k_min", ARG_F64, &after_k_min, "seconds to wait for stragglers after k_min answers", "Layer", NULL, "S"},
        {"detect_anomalies", ARG_FLAG, &detect, "mask answers with NaN/Inf (the default)", "Layer", NULL},
        {"no_detect_anomalies", ARG_FLAG, &no_detect, "use answers with NaN/Inf (hivemind's default)", "Layer", NULL},
        {"allow_zero_outputs", ARG_FLAG, &allow_zero, "zeros for samples nobody answered instead of an error", "Layer", NULL},
        {"switch", ARG_FLAG, &is_switch, "RemoteSwitchMixtureOfExperts (k_best 1 routing, residual)", "Layer", NULL},
        {"random", ARG_STR, &random, "random input of this shape, seeded normal values (default: 3x512 without --input)", "Input", NULL, "BxH"},
        {"input", ARG_STR, &input, "the input rows as .npy, float32 [B, H] (instead of --random)", "Input", NULL, "PATH"},
        {"output", ARG_STR, &output, "write the layer's output [B, H] to this .npy file (checked before the call)", "Output", NULL, "PATH"},
        {"seed", ARG_U64, &seed, "seed of the input and the gating weights", "Input", NULL},
        {"json", ARG_FLAG, &json, "print one JSON object", "Output", NULL},
        {"log_level", ARG_STR, &log_level, "DEBUG, INFO, WARN or ERROR", "Output", NULL, "LEVEL"},
    };
    const int nflags = (int)(sizeof flags / sizeof flags[0]);
    char err[512];
    char *pos[4];
    int npos = 0;
    int rc = rt_args_parse(argc, argv, flags, nflags, pos, 4, &npos, err, sizeof err);
    if (rc == RT_ARGS_HELP) {
        rt_args_usage(stdout, "dmoe-call --initial_peers ADDR... moe --grid_size N... [--random BxH | --input X.npy] [--output Y.npy]\n"
                              "       [flags]   (one forward of a Mixture-of-Experts layer over the experts of the DHT)", flags, nflags);
        rt_args_free(flags, nflags);
        return 0;
    }
    if (rc == RT_ARGS_VERSION) { rt_args_version(stdout, "dmoe-call"); rt_args_free(flags, nflags); return 0; }
    if (rc != 0) { fprintf(stderr, "dmoe-call moe: %s\n", err); rt_args_free(flags, nflags); return 2; }
    moe_cfg c;
    moe_cfg_default(&c);
    int64_t shape[2];
    void *xin = NULL;   /* --input's rows */
    int status = 2;
    if (log_level) {
        int lv = rt_log_parse_level(log_level);
        if (lv < 0) { fprintf(stderr, "dmoe-call moe: bad --log_level %s\n", log_level); goto out; }
        rt_log_set_level(lv);
    }
    if (detect && no_detect) { fprintf(stderr, "dmoe-call moe: --detect_anomalies or --no_detect_anomalies, not both\n"); goto out; }
    if (moe_parse_grid(grid_words, c.grid_size, &c.ndim, err, sizeof err) != 0) { fprintf(stderr, "dmoe-call moe: %s\n", err); goto out; }
    if (!peers) { fprintf(stderr, "dmoe-call moe: --initial_peers ADDR... is required (any node of the DHT)\n"); goto out; }
    if (input && random) { fprintf(stderr, "dmoe-call moe: give --input or --random, not both\n"); goto out; }
    if (input) {
        wire_dtype dt;
        int nd;
        int64_t sh[WIRE_MAX_NDIM];
        size_t nbytes;
        if (wire_npy_read(input, &dt, &nd, sh, &xin, &nbytes, err, sizeof err) != 0) {
            fprintf(stderr, "dmoe-call moe: %s\n", err);
            goto out;
        }
        if (dt != WIRE_DT_F32 || nd != 2 || sh[0] < 1 || sh[1] < 1) {
            fprintf(stderr, "dmoe-call moe: --input %s: expected float32 rows [B, H]\n", input);
            goto out;
        }
        shape[0] = sh[0];
        shape[1] = sh[1];
    } else if (rt_args_shape(random ? random : "3x512", shape, 2) != 2 || shape[0] < 1 || shape[1] < 1) {
        fprintf(stderr, "dmoe-call moe: --random %s: expected BxH, e.g. 3x512\n", random);
        goto out;
    }
    if (output && rt_outfile_check(output, err, sizeof err) != 0) { fprintf(stderr, "dmoe-call moe: --output: %s\n", err); goto out; }
    if (trusted_keys && dht_trust_load(trusted_keys, &trusted, err, sizeof err) != 0) {
        fprintf(stderr, "dmoe-call moe: --trusted_keys: %s\n", err);
        goto out;
    }
    snprintf(c.uid_prefix, sizeof c.uid_prefix, "%s", prefix);
    c.in_features = (int)shape[1];
    c.k_best = k_best;
    c.k_min = k_min;
    c.forward_timeout = fwd_timeout;
    c.timeout_after_k_min = after_k_min;
    c.detect_anomalies = !no_detect;
    c.allow_zero_outputs = allow_zero;
    c.is_switch = is_switch;
    c.seed = seed;
    size_t np = 0;
    while (peers && peers[np]) np++;

    signal(SIGPIPE, SIG_IGN);
    rt_loop *l = rt_loop_new();
    if (!l) { fprintf(stderr, "dmoe-call moe: out of memory\n"); status = 1; goto out; }
    uint64_t t0 = rt_clock_us();
    char **resolved = NULL;   /* host names resolved, before the loop runs */
    moe_net *net = NULL;
    if (resolve_now((const char *const *)peers, np, &resolved, err, sizeof err) == 0)
        net = moe_net_open_trusted(l, (const char *const *)resolved, np, DHT_NEG_CACHE_S, trusted, err, sizeof err);
    resolve_list_free(resolved);
    moe_layer *m = NULL;
    if (!net) {
        fprintf(stderr, "dmoe-call moe: %s\n", err);
        status = 1;
    } else if ((rc = moe_layer_new(l, &c, moe_net_succ(net), moe_net_caller(net), &m, err, sizeof err)) != 0) {
        fprintf(stderr, "dmoe-call moe: %s\n", err);
    } else {
        size_t n = (size_t)shape[0] * (size_t)shape[1];
        float *x = xin ? xin : malloc(n * sizeof *x);
        xin = NULL;
        kern_rng r;
        kern_rng_seed(&r, seed);
        for (size_t i = 0; x && !input && i < n; i++) x[i] = kern_rng_normal(&r);
        moe_fwd *f = NULL;
        uint64_t t1 = rt_clock_us();
        rc = x ? moe_forward_run(m, x, shape[0], &f, err, sizeof err) : DMOE_ENOMEM;
        double ms = (double)(rt_clock_us() - t1) / 1000.0, join_ms = (double)(t1 - t0) / 1000.0;
        if (rc) {
            wire_json_error(json, "dmoe-call moe", rc, err);
            status = 1;
        } else {
            int64_t B;
            int D;
            const float *y = moe_fwd_output(f, &B, &D);
            const moe_fwd_stats *st = moe_fwd_stats_of(f);
            int64_t yshape[2] = {B, D};
            int unsaved = output && wire_npy_write(output, WIRE_DT_F32, 2, yshape, y, err, sizeof err) != 0;
            if (unsaved) fprintf(stderr, "dmoe-call moe: %s\n", err);
            double s = 0, s2 = 0;
            for (size_t i = 0; i < (size_t)B * (size_t)D; i++) { s += y[i]; s2 += (double)y[i] * y[i]; }
            double cnt = (double)B * D, mean = s / cnt, var = s2 / cnt - mean * mean;
            if (json)
                printf("{\"ok\": true, \"shape\": [%lld, %d], \"mean\": %.9g, \"std\": %.9g, \"experts_chosen\": %d, "
                       "\"experts_answered\": %d, \"zero_rows\": %lld, \"experts_retried\": %d, \"rows_retried\": %lld, "
                       "\"search_ms\": %.3f, \"dispatch_ms\": %.3f, \"wait_ms\": %.3f, \"elapsed_ms\": %.3f, "
                       "\"join_ms\": %.3f}\n",
                       (long long)B, D, mean, var > 0 ? sqrt(var) : 0, st->experts_chosen, st->experts_answered,
                       (long long)st->zero_rows, st->experts_retried, (long long)st->rows_retried, st->search_ms,
                       st->dispatch_ms, st->wait_ms, ms, join_ms);
            else
                printf("moe %s grid %d%s: output shape [%lld, %d]  mean %.6g  std %.6g\n"
                       "experts answering %d of %d chosen (%lld samples with none; %d requests retried on spares)\n"
                       "elapsed %.3f ms: beam search %.3f ms (%d DHT rounds), dispatch %.3f ms, waiting %.3f ms "
                       "(joining the DHT took %.3f ms)\n",
                       c.uid_prefix, c.grid_size[0], c.ndim > 1 ? "x..." : "", (long long)B, D, mean,
                       var > 0 ? sqrt(var) : 0, st->experts_answered, st->experts_chosen, (long long)st->zero_rows,
                       st->experts_retried, ms, st->search_ms, st->beam_rounds, st->dispatch_ms, st->wait_ms, join_ms);
            status = unsaved ? 2 : 0;
        }
        moe_fwd_free(f);
        free(x);
    }
    moe_layer_free(m);
    moe_net_close(net);
    rt_loop_free(l);
out:
    dht_trust_free(trusted);
    free(xin);
    rt_args_free(flags, nflags);
    return status;
}
