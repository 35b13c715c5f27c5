/* dht_cmds.c -- dmoe-call's find / dht store / dht get (see dht_cmds.h).
 *
 * Each command allocates a small context (the node, how to print, whom to tell) that its completion
 * frees after calling done.
 */
#include "cmd/call/dht_cmds.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/dht_lookup.h"
#include "actors/grid/dht_experts.h"
#include "runtime/rt_err.h"
#include "wire/codec/wire_json.h"

typedef struct {
    dht *d;
    dht_cmd_done done;
    void *done_arg;
    int json;
    const char **names;   /* find: the uids asked (the strings stay the caller's) */
} cmd;

static cmd *cmd_new(dht *d, int json, dht_cmd_done done, void *arg, char *err, size_t errlen)
{
    cmd *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    *c = (cmd){ d, done, arg, json, NULL };
    return c;
}

/* cmd_end tells the caller and frees c. */
static void cmd_end(cmd *c, int status)
{
    dht_cmd_done done = c->done;
    void *arg = c->done_arg;
    free(c->names);
    free(c);
    done(arg, status);
}

/* ---- find ---- */

static void on_found(void *arg, int err, const char *msg, const dht_expert_loc *locs, size_t n)
{
    cmd *c = arg;
    if (err) {
        fprintf(stderr, "dmoe-call: find: %s\n", msg ? msg : dmoe_strerror(err));
        cmd_end(c, 1);
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
    cmd_end(c, missing ? 1 : 0);
}

int dht_cmd_find(dht *d, const char *const *uids, size_t n, int json, dht_cmd_done done, void *arg, char *err,
                 size_t errlen)
{
    cmd *c = cmd_new(d, json, done, arg, err, errlen);
    if (!c) return DMOE_ENOMEM;
    c->names = malloc((n ? n : 1) * sizeof *c->names);
    if (!c->names) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return DMOE_ENOMEM;
    }
    memcpy(c->names, uids, n * sizeof *uids);
    int rc = dht_get_experts(d, uids, n, on_found, c, err, errlen);
    if (rc) {
        free(c->names);
        free(c);
    }
    return rc;
}

/* ---- store ---- */

static void on_stored(void *arg, int err, const char *msg, size_t n_stored)
{
    cmd *c = arg;
    if (c->json) printf("{\"ok\": %s, \"replicas\": %zu}\n", err ? "false" : "true", n_stored);
    else if (err) fprintf(stderr, "dmoe-call: dht store: %s\n", msg ? msg : dmoe_strerror(err));
    else printf("stored on %zu replica%s\n", n_stored, n_stored == 1 ? "" : "s");
    cmd_end(c, err ? 1 : 0);
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

int dht_cmd_store(dht *d, const char *key, const char *value, const char *subkey, double expiration_s, int json,
                  dht_cmd_done done, void *arg, char *err, size_t errlen)
{
    dht_id id;
    if (dht_id_from_str(&id, key, strlen(key)) != 0) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    cmd *c = cmd_new(d, json, done, arg, err, errlen);
    if (!c) return DMOE_ENOMEM;
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
    if (rc) {
        free(c);
        snprintf(err, errlen, "dht store: %s", dmoe_strerror(rc));
    }
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
    cmd *c = arg;
    if (err && err != DMOE_ETIMEDOUT) {
        fprintf(stderr, "dmoe-call: dht get: %s\n", msg ? msg : dmoe_strerror(err));
        cmd_end(c, 1);
        return;
    }
    if (!r->found) {
        if (c->json) printf("{\"found\": false}\n");
        else printf("not found\n");
        cmd_end(c, 1);
        return;
    }
    double now = dht_node_now(c->d);
    if (!r->is_dict) {
        if (c->json) printf("{\"found\": true, \"value\": ");
        print_packed(r->value, r->vlen);
        if (c->json) printf(", \"expires_in\": %.3f}\n", r->expiration - now);
        else printf("  (expires in %.1f s)\n", r->expiration - now);
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
    cmd_end(c, 0);
}

int dht_cmd_get(dht *d, const char *key, int latest, int json, dht_cmd_done done, void *arg, char *err,
                size_t errlen)
{
    dht_id id;
    if (dht_id_from_str(&id, key, strlen(key)) != 0) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    cmd *c = cmd_new(d, json, done, arg, err, errlen);
    if (!c) return DMOE_ENOMEM;
    int rc = dht_get(d, &id, latest, on_got, c);
    if (rc) {
        free(c);
        snprintf(err, errlen, "dht get: %s", dmoe_strerror(rc));
    }
    return rc;
}
