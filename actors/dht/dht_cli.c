/* dht_cli.c -- client-mode DHT for tools, and dmoe-call's find / dht store / dht get (see dht_cli.h). */
#include "actors/dht/dht_cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/grid/dht_experts.h"
#include "actors/dht/dht_lookup.h"
#include "actors/dht/rpc/dht_net.h"
#include "runtime/rt_err.h"
#include "wire/codec/wire_json.h"

struct dht_cli {
    dht_net *net;
    dht *d;
    dht_cli_joined joined;
    void *joined_arg;
    dht_cli_done done;
    void *done_arg;
    int json;
    char **names;        /* find: the uids asked */
};

static void on_joined(void *arg, int err, const char *msg)
{
    dht_cli *c = arg;
    c->joined(c->joined_arg, err, msg);
}

dht_cli *dht_cli_join(rt_loop *l, client *cl, const char *const *peers, size_t n, dht_cli_joined cb, void *arg,
                      char *err, size_t errlen)
{
    dht_cli *c = calloc(1, sizeof *c);
    if (!c) { snprintf(err, errlen, "out of memory"); return NULL; }
    c->joined = cb;
    c->joined_arg = arg;
    dht_transport tr;
    dht_cfg dc;
    dht_cfg_default(&dc);
    dc.client_mode = 1;
    dc.seed = (uint64_t)getpid() ^ rt_clock_us();
    if (dht_net_new(cl, &c->net, &tr) != 0 || dht_node_new(l, &dc, &tr, &c->d) != 0) {
        snprintf(err, errlen, "cannot create a DHT node");
        dht_cli_free(c);
        return NULL;
    }
    if (dht_node_bootstrap(c->d, peers, n, on_joined, c, err, errlen) != 0) {
        dht_cli_free(c);
        return NULL;
    }
    return c;
}

dht *dht_cli_node(dht_cli *c) { return c->d; }

void dht_cli_free(dht_cli *c)
{
    if (!c) return;
    if (c->d) dht_node_stop(c->d);
    dht_node_free(c->d);
    dht_net_free(c->net);
    free(c->names);
    free(c);
}

/* ---- find ---- */

static void on_found(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    dht_cli *c = arg;
    if (err) {
        fprintf(stderr, "dmoe-call: find: %s\n", msg ? msg : dmoe_strerror(err));
        c->done(c->done_arg, 1);
        return;
    }
    int missing = 0;
    if (c->json) printf("{");
    for (size_t i = 0; i < n; i++) {
        char addr[WIRE_MADDR_TEXT] = "";
        if (locs[i].found) wire_maddr_format(&locs[i].addr, addr, sizeof addr);
        missing += !locs[i].found;
        if (c->json) {
            printf("%s", i ? ", " : "");
            wire_json_string(stdout, c->names[i], strlen(c->names[i]));
            printf(": ");
            if (locs[i].found) wire_json_string(stdout, addr, strlen(addr));
            else printf("null");
        } else {
            printf("%s: %s\n", c->names[i], locs[i].found ? addr : "not found");
        }
    }
    if (c->json) printf("}\n");
    c->done(c->done_arg, missing ? 1 : 0);
}

int dht_cli_find(dht_cli *c, const char *const *uids, size_t n, int json, dht_cli_done done, void *arg, char *err,
                 size_t errlen)
{
    c->done = done;
    c->done_arg = arg;
    c->json = json;
    free(c->names);
    c->names = malloc((n ? n : 1) * sizeof *c->names);
    if (!c->names) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    memcpy(c->names, uids, n * sizeof *uids);
    return dht_get_experts(c->d, uids, n, on_found, c, err, errlen);
}

/* ---- store ---- */

static void on_stored(void *arg, int err, const char *msg, size_t n_stored)
{
    dht_cli *c = arg;
    if (c->json) printf("{\"ok\": %s, \"replicas\": %zu}\n", err ? "false" : "true", n_stored);
    else if (err) fprintf(stderr, "dmoe-call: dht store: %s\n", msg ? msg : dmoe_strerror(err));
    else printf("stored on %zu replica%s\n", n_stored, n_stored == 1 ? "" : "s");
    c->done(c->done_arg, err ? 1 : 0);
}

/* Pack s as a msgpack int when it is a decimal integer, else as a str. */
static void pack_scalar(msgpack_packer *pk, const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s && !*end && !errno) msgpack_pack_int64(pk, v);
    else {
        msgpack_pack_str(pk, strlen(s));
        msgpack_pack_str_body(pk, s, strlen(s));
    }
}

int dht_cli_store(dht_cli *c, const char *key, const char *value, const char *subkey, double expiration_s, int json,
                  dht_cli_done done, void *arg, char *err, size_t errlen)
{
    c->done = done;
    c->done_arg = arg;
    c->json = json;
    dht_id id;
    if (dht_id_from_str(&id, key, strlen(key)) != 0) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    msgpack_sbuffer vb, sb;
    msgpack_sbuffer_init(&vb);
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &vb, msgpack_sbuffer_write);
    msgpack_pack_str(&pk, strlen(value));
    msgpack_pack_str_body(&pk, value, strlen(value));
    if (subkey) {
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        pack_scalar(&pk, subkey);
    }
    int rc = dht_store(c->d, &id, subkey ? sb.data : NULL, subkey ? sb.size : 0, vb.data, vb.size,
                       dht_node_now(c->d) + expiration_s, on_stored, c);
    msgpack_sbuffer_destroy(&vb);
    msgpack_sbuffer_destroy(&sb);
    if (rc) snprintf(err, errlen, "dht store: %s", dmoe_strerror(rc));
    return rc;
}

/* ---- get ---- */

static void print_packed(const uint8_t *p, size_t n)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, (const char *)p, n, &off) == MSGPACK_UNPACK_SUCCESS) wire_json_print(stdout, &u.data);
    else printf("null");
    msgpack_unpacked_destroy(&u);
}

static void on_got(void *arg, int err, const char *msg, const dht_get_result *r)
{
    dht_cli *c = arg;
    if (err && err != DMOE_ETIMEDOUT) {
        fprintf(stderr, "dmoe-call: dht get: %s\n", msg ? msg : dmoe_strerror(err));
        c->done(c->done_arg, 1);
        return;
    }
    if (!r->found) {
        if (c->json) printf("{\"found\": false}\n");
        else printf("not found\n");
        c->done(c->done_arg, 1);
        return;
    }
    double now = dht_node_now(c->d);
    if (!r->is_dict) {
        if (c->json) { printf("{\"found\": true, \"value\": "); print_packed(r->value, r->vlen); printf(", \"expires_in\": %.3f}\n", r->expiration - now); }
        else { print_packed(r->value, r->vlen); printf("  (expires in %.1f s)\n", r->expiration - now); }
    } else {
        if (c->json) printf("{\"found\": true, \"subkeys\": [");
        for (size_t i = 0; i < r->nsubs; i++) {
            if (c->json) {
                printf("%s{\"subkey\": ", i ? ", " : "");
                print_packed(r->subs[i].subkey, r->subs[i].sklen);
                printf(", \"value\": ");
                print_packed(r->subs[i].value, r->subs[i].vlen);
                printf(", \"expires_in\": %.3f}", r->subs[i].expiration - now);
            } else {
                print_packed(r->subs[i].subkey, r->subs[i].sklen);
                printf(": ");
                print_packed(r->subs[i].value, r->subs[i].vlen);
                printf("  (expires in %.1f s)\n", r->subs[i].expiration - now);
            }
        }
        if (c->json) printf("]}\n");
    }
    c->done(c->done_arg, 0);
}

int dht_cli_get(dht_cli *c, const char *key, int latest, int json, dht_cli_done done, void *arg, char *err,
                size_t errlen)
{
    c->done = done;
    c->done_arg = arg;
    c->json = json;
    dht_id id;
    if (dht_id_from_str(&id, key, strlen(key)) != 0) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    int rc = dht_get(c->d, &id, latest, on_got, c);
    if (rc) snprintf(err, errlen, "dht get: %s", dmoe_strerror(rc));
    return rc;
}
