/* dht_trust.c -- the trusted-key set, its file, and the signed-record policy (see dht_trust.h).
 *
 * Design notes. The set is an rt_map of 32-byte public keys; each key lives in its own allocation,
 * which the map's entry points at (keys over RT_MAP_INLINE bytes are held by pointer). The file is read
 * line by line with a fixed buffer: a line too long to be a key and a comment is refused, not cut.
 */
#include "actors/dht/trust/dht_trust.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/dht/trust/dht_record.h"
#include "runtime/rt_err.h"
#include "runtime/rt_map.h"

struct dht_trust {
    rt_map keys;   /* pk -> its own copy (the map's key points into it) */
};

int dht_trust_new(dht_trust **out)
{
    dht_trust *t = calloc(1, sizeof *t);
    if (!t) return DMOE_ENOMEM;
    *out = t;
    return 0;
}

int dht_trust_add(dht_trust *t, const uint8_t pk[DHT_IDENT_PK_BYTES])
{
    if (rt_map_get(&t->keys, pk, DHT_IDENT_PK_BYTES)) return 0;
    if (rt_map_count(&t->keys) >= DHT_TRUST_MAX_KEYS) return DMOE_ETOOBIG;
    uint8_t *k = malloc(DHT_IDENT_PK_BYTES);
    if (!k) return DMOE_ENOMEM;
    memcpy(k, pk, DHT_IDENT_PK_BYTES);
    if (rt_map_put(&t->keys, k, DHT_IDENT_PK_BYTES, k) != 0) {
        free(k);
        return DMOE_ENOMEM;
    }
    return 0;
}

int dht_trust_has(const dht_trust *t, const uint8_t pk[DHT_IDENT_PK_BYTES])
{
    return rt_map_get(&t->keys, pk, DHT_IDENT_PK_BYTES) != NULL;
}

size_t dht_trust_count(const dht_trust *t) { return rt_map_count(&t->keys); }

void dht_trust_free(dht_trust *t)
{
    if (!t) return;
    rt_map_iter it = RT_MAP_ITER_INIT;
    const void *k;
    size_t kl;
    void *v;
    while ((v = rt_map_next(&t->keys, &it, &k, &kl))) {
        rt_map_del_at(&t->keys, &it);
        free(v);
    }
    rt_map_clear(&t->keys);
    free(t);
}

void dht_trust_hex(const uint8_t pk[DHT_IDENT_PK_BYTES], char out[2 * DHT_IDENT_PK_BYTES + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < DHT_IDENT_PK_BYTES; i++) {
        out[2 * i] = digits[pk[i] >> 4];
        out[2 * i + 1] = digits[pk[i] & 15];
    }
    out[2 * DHT_IDENT_PK_BYTES] = 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* parse_line reads one line's key into pk: returns 1 (a key), 0 (blank or comment) or DMOE_EINVAL. */
static int parse_line(char *line, uint8_t pk[DHT_IDENT_PK_BYTES])
{
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char *p = line;
    while (isspace((unsigned char)*p)) p++;
    size_t n = strlen(p);
    while (n && isspace((unsigned char)p[n - 1])) n--;
    if (n == 0) return 0;
    if (n != 2 * DHT_IDENT_PK_BYTES) return DMOE_EINVAL;
    for (size_t i = 0; i < DHT_IDENT_PK_BYTES; i++) {
        int hi = hexval((unsigned char)p[2 * i]), lo = hexval((unsigned char)p[2 * i + 1]);
        if (hi < 0 || lo < 0) return DMOE_EINVAL;
        pk[i] = (uint8_t)(hi << 4 | lo);
    }
    return 1;
}

int dht_trust_load(const char *path, dht_trust **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read the trusted keys file %s", path);
        return DMOE_EIO;
    }
    dht_trust *t;
    int rc = dht_trust_new(&t);
    if (rc != 0) {
        fclose(f);
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    char line[1024];
    size_t lineno = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n' && !feof(f)) {
            snprintf(err, errlen, "%s:%zu: line too long", path, lineno);
            rc = DMOE_EINVAL;
            break;
        }
        uint8_t pk[DHT_IDENT_PK_BYTES];
        int k = parse_line(line, pk);
        if (k < 0) {
            snprintf(err, errlen, "%s:%zu: want an Ed25519 public key as 64 hex digits (# starts a comment)", path,
                     lineno);
            rc = k;
        } else if (k == 1 && (rc = dht_trust_add(t, pk)) != 0) {
            snprintf(err, errlen, "%s:%zu: %s", path, lineno,
                     rc == DMOE_ETOOBIG ? "too many trusted keys" : "out of memory");
        }
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, errlen, "cannot read the trusted keys file %s", path);
        rc = DMOE_EIO;
    }
    fclose(f);
    if (rc == 0 && dht_trust_count(t) == 0) {
        snprintf(err, errlen, "%s holds no key: a private swarm would trust nobody", path);
        rc = DMOE_EINVAL;
    }
    if (rc != 0) {
        dht_trust_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* ---- policy ---- */

/* check applies the record rules with lifetime limit `horizon` seconds. */
static int check(const dht_trust *t, double horizon, const dht_id *key, const uint8_t *subkey, size_t sklen,
                 const uint8_t *value, size_t vlen, double expiration, double now, char *err, size_t errlen)
{
    if (!dht_record_is_record(value, vlen)) {
        if (!t) return 0;
        snprintf(err, errlen, "this swarm is private: unsigned values are refused");
        return DMOE_EINVAL;
    }
    dht_record r;
    char why[200];
    if (dht_record_open(key, subkey, sklen, value, vlen, expiration, &r, why, sizeof why) != 0) {
        snprintf(err, errlen, "signed record refused: %s", why);
        return DMOE_EINVAL;
    }
    if (!(expiration <= now + horizon)) {
        snprintf(err, errlen, "signed record refused: it expires %.0f s from now, beyond the %.0f s lifetime cap",
                 expiration - now, horizon);
        return DMOE_EINVAL;
    }
    if (t && !dht_trust_has(t, r.pk)) {
        char hex[2 * DHT_IDENT_PK_BYTES + 1];
        dht_trust_hex(r.pk, hex);
        snprintf(err, errlen, "signed record refused: key %.16s... is not among the trusted keys", hex);
        return DMOE_EINVAL;
    }
    return 1;
}

int dht_trust_check_store(const dht_trust *t, double max_lifetime, const dht_id *key, const uint8_t *subkey,
                          size_t sklen, const uint8_t *value, size_t vlen, double expiration, double now, char *err,
                          size_t errlen)
{
    return check(t, max_lifetime, key, subkey, sklen, value, vlen, expiration, now, err, errlen);
}

int dht_trust_accept(const dht_trust *t, double max_lifetime, int signed_only, const dht_id *key, const uint8_t *subkey,
                     size_t sklen, const uint8_t *value, size_t vlen, double expiration, double now)
{
    char err[256];
    int rc = check(t, max_lifetime + DHT_RECORD_SKEW_S, key, subkey, sklen, value, vlen, expiration, now, err,
                   sizeof err);
    return rc == 1 || (rc == 0 && !signed_only);
}
