/* loadgen.c -- the load generator's front (see loadgen.h): loadgen_run picks the mode's lg_mode_ops and
 * hands the checked cfg to the engine (loadgen_engine.c); loadgen_print writes a report for people or
 * as one JSON object. The only file that names the modes.
 */
#include "actors/load/loadgen.h"

#include <string.h>

#include "actors/load/loadgen_engine.h"
#include "runtime/rt_err.h"
#include "wire/codec/wire_json.h"

int loadgen_run(const loadgen_cfg *c, loadgen_report *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    int rc = loadgen_check_cfg(c, err, errlen);
    if (rc) return rc;
    const lg_mode_ops *ops = c->mode == LOADGEN_MOE ? &lg_moe_ops : c->mode == LOADGEN_DHT ? &lg_dht_ops : &lg_node_ops;
    return lg_engine_run(c, ops, r, err, errlen);
}

/* ---- printing ---- */

static void print_lat_json(FILE *f, const char *key, const loadgen_lat *l)
{
    fprintf(f, "\"%s\": {\"n\": %llu, \"p50\": %.0f, \"p90\": %.0f, \"p99\": %.0f, \"max\": %.0f, \"mean\": %.1f}", key,
            (unsigned long long)l->n, l->p50, l->p90, l->p99, l->max, l->mean);
}

static void print_lat_human(FILE *f, const char *what, const loadgen_lat *l)
{
    if (!l->n) return;
    fprintf(f, "  %-9s p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f ms  (%llu replies)\n", what, l->p50 / 1e3,
            l->p90 / 1e3, l->p99 / 1e3, l->max / 1e3, l->mean / 1e3, (unsigned long long)l->n);
}

static void human_bytes(char *buf, size_t cap, uint64_t b)
{
    if (b >= (1ull << 30)) snprintf(buf, cap, "%.2f GiB", (double)b / (double)(1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, cap, "%.1f MiB", (double)b / (double)(1ull << 20));
    else snprintf(buf, cap, "%.1f KiB", (double)b / 1024.0);
}

void loadgen_print(FILE *f, const loadgen_cfg *c, const loadgen_report *r, int json)
{
    static const char *const modes[] = {"node", "moe", "dht"};
    char peer[WIRE_MADDR_TEXT];
    if (c->mode == LOADGEN_NODE) wire_maddr_format(&c->peer, peer, sizeof peer);
    else snprintf(peer, sizeof peer, "%s", c->initial_peers && c->initial_peers[0] ? c->initial_peers[0] : "");
    int mode = c->mode >= LOADGEN_NODE && c->mode <= LOADGEN_DHT ? c->mode : LOADGEN_NODE;
    if (json) {
        fprintf(f, "{\"ok\": %s, \"mode\": \"%s\", \"peer\": ", r->errors == 0 && r->lost == 0 ? "true" : "false",
                modes[mode]);
        wire_json_string(f, peer, strlen(peer));
        fprintf(f, ", \"targets\": %d, \"first_target\": ", r->n_targets);
        wire_json_string(f, r->first_target, strlen(r->first_target));
        fprintf(f, ", \"clients\": %d, \"batch_min\": %lld, \"batch_max\": %lld, \"mix\": %g, \"row_elems\": %lld",
                c->clients, (long long)c->batch_min, (long long)c->batch_max, c->mix, (long long)r->row_elems);
        fprintf(f, ", \"run_s\": %.3f, \"sent\": %llu, \"replies\": %llu, \"errors\": %llu, \"lost\": %llu, \"errors_by_kind\": {",
                r->run_s, (unsigned long long)r->sent, (unsigned long long)r->ok, (unsigned long long)r->errors,
                (unsigned long long)r->lost);
        int first = 1;
        for (int k = 0; k < LOADGEN_N_CODES; k++) {
            if (!r->err_by_code[k]) continue;
            const char *name = k ? dmoe_strerror(-k) : "other";
            fprintf(f, "%s", first ? "" : ", ");
            wire_json_string(f, name, strlen(name));
            fprintf(f, ": %llu", (unsigned long long)r->err_by_code[k]);
            first = 0;
        }
        fprintf(f, "}, \"first_error\": ");
        wire_json_string(f, r->first_error, strlen(r->first_error));
        fprintf(f, ", \"bytes_sent\": %llu, \"bytes_received\": %llu, \"window_s\": %.3f, \"requests\": %llu, \"rows\": %llu",
                (unsigned long long)r->bytes_sent, (unsigned long long)r->bytes_received, r->window_s,
                (unsigned long long)r->requests, (unsigned long long)r->rows);
        fprintf(f, ", \"forward_requests\": %llu, \"backward_requests\": %llu, \"requests_per_s\": %.2f, \"rows_per_s\": %.2f, ",
                (unsigned long long)r->fwd_requests, (unsigned long long)r->bwd_requests, r->req_per_s, r->rows_per_s);
        print_lat_json(f, "latency_us", &r->lat);
        fprintf(f, ", ");
        print_lat_json(f, "forward_latency_us", &r->lat_fwd);
        fprintf(f, ", ");
        print_lat_json(f, "backward_latency_us", &r->lat_bwd);
        if (mode == LOADGEN_MOE) {
            double n = r->moe_fwds ? (double)r->moe_fwds : 1;
            fprintf(f, ", \"moe_forward_ms\": {\"n\": %llu, \"search\": %.3f, \"dispatch\": %.3f, \"wait\": %.3f, "
                       "\"total\": %.3f}, \"experts_retried\": %llu",
                    (unsigned long long)r->moe_fwds, r->moe_search_ms / n, r->moe_dispatch_ms / n, r->moe_wait_ms / n,
                    r->moe_total_ms / n, (unsigned long long)r->moe_retried);
        }
        fprintf(f, ", \"samples\": %d}\n", r->n_samples);
        return;
    }
    char batch[64], sent[32], recv[32];
    if (c->batch_min == c->batch_max) snprintf(batch, sizeof batch, "%lld", (long long)c->batch_min);
    else snprintf(batch, sizeof batch, "%lld-%lld", (long long)c->batch_min, (long long)c->batch_max);
    human_bytes(sent, sizeof sent, r->bytes_sent);
    human_bytes(recv, sizeof recv, r->bytes_received);
    const char *fw = mode == LOADGEN_DHT ? "store" : "forward", *bw = mode == LOADGEN_DHT ? "get" : "backward";
    if (mode == LOADGEN_MOE) {
        char grid[96] = "";
        for (int d = 0; d < c->ndim && d < LOADGEN_MAX_DIMS; d++)
            snprintf(grid + strlen(grid), sizeof grid - strlen(grid), "%s%d", d ? "x" : "", c->grid_size[d]);
        fprintf(f, "load on a MoE layer via %s: %s grid %s, k_best %d, up to %d experts per forward, %d clients, batch %s x %lld, "
                   "%.0f%% backward, %.1f s\n", peer, c->uid_prefix, grid, c->k_best, r->n_targets, c->clients, batch,
                (long long)r->row_elems, c->mix * 100.0, r->run_s);
    } else if (mode == LOADGEN_DHT) {
        fprintf(f, "load on the DHT via %s: %d client-mode peers, values of %s bytes, %.0f%% gets, %.1f s\n", peer,
                c->clients, batch, c->mix * 100.0, r->run_s);
    } else {
        fprintf(f, "load on %s: %d expert%s (%s%s), %d clients, batch %s x %lld, %.0f%% backward, %.1f s\n", peer,
                r->n_targets, r->n_targets == 1 ? "" : "s", r->first_target, r->n_targets > 1 ? ", ..." : "", c->clients,
                batch, (long long)r->row_elems, c->mix * 100.0, r->run_s);
    }
    fprintf(f, "  requests  %llu sent, %llu replies, %llu errors, %llu lost\n", (unsigned long long)r->sent,
            (unsigned long long)r->ok, (unsigned long long)r->errors, (unsigned long long)r->lost);
    fprintf(f, "  window    %.2f s after %.1f s warm-up: %llu requests (%llu %s, %llu %s), %llu rows\n", r->window_s,
            c->warmup_s, (unsigned long long)r->requests, (unsigned long long)r->fwd_requests, fw,
            (unsigned long long)r->bwd_requests, bw, (unsigned long long)r->rows);
    fprintf(f, "  throughput %.1f requests/s, %.1f rows/s\n", r->req_per_s, r->rows_per_s);
    print_lat_human(f, "latency", &r->lat);
    if (r->lat_fwd.n && r->lat_bwd.n) {
        print_lat_human(f, fw, &r->lat_fwd);
        print_lat_human(f, bw, &r->lat_bwd);
    }
    if (mode == LOADGEN_MOE && r->moe_fwds) {
        double n = (double)r->moe_fwds;
        fprintf(f, "  forward   mean %.2f ms = beam search %.2f + dispatch %.2f + waiting %.2f (%llu forwards, %llu "
                   "requests retried)\n", r->moe_total_ms / n, r->moe_search_ms / n, r->moe_dispatch_ms / n,
                r->moe_wait_ms / n, (unsigned long long)r->moe_fwds, (unsigned long long)r->moe_retried);
    }
    if (mode == LOADGEN_NODE) fprintf(f, "  bytes     %s sent, %s received\n", sent, recv);
    for (int k = 0; k < LOADGEN_N_CODES; k++)
        if (r->err_by_code[k])
            fprintf(f, "  error     %s: %llu\n", k ? dmoe_strerror(-k) : "other", (unsigned long long)r->err_by_code[k]);
    if (r->first_error[0]) fprintf(f, "  first error: %s\n", r->first_error);
    if (r->errors == 0 && r->lost == 0) fprintf(f, "  result    OK: zero errors, zero lost replies\n");
    else fprintf(f, "  result    FAILED: %llu errors, %llu lost replies\n", (unsigned long long)r->errors, (unsigned long long)r->lost);
}
