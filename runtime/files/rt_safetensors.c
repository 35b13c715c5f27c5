/* rt_safetensors.c -- safetensors writing and strict reading (see rt_safetensors.h).
 *
 * Design notes.
 *   Writing goes through st_out, a sticky-error file writer in the manner of SQLite's vdbesort.c: each
 *   so_write is a no-op once one has failed, and so_finish (fsync, close) reports the first error. So
 *   rt_st_write issues all its writes without checking each, and decides once: rename into place, or
 *   unlink the temporary file. The header is built in memory first (rt_strbuf, also sticky: an allocation
 *   failure is reported at the end), because its length is the first thing in the file.
 *
 *   Reading checks that the header is UTF-8, then walks it with the JSON-subset cursor of rt_json.c
 *   (strings with every escape, non-negative integers, arrays of them; see rt_json.h). This file supplies
 *   the structure: one object whose members are "__metadata__" (an object of strings) or tensors (an
 *   object of exactly dtype, shape and data_offsets). The structure is fixed, so nothing recurses and a
 *   hostile header cannot exhaust the stack. Floats, true/false/null, unknown fields and duplicate keys
 *   are refused. Tensors are then checked against the buffer: sorted by offsets, each must start where
 *   the previous one ended, and the last must end at the end of the file; that catches overlaps, holes
 *   and trailing bytes in one pass.
 *
 *   Checkpoint folders (rt_ckpt_*, declared in rt_safetensors.h) live in rt_ckpt_files.c.
 *
 * No global state; blocking I/O only.
 */
#include "runtime/files/rt_safetensors.h"
#include "runtime/text/rt_strbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/rt_err.h"
#include "runtime/text/rt_json.h"

#define ST_META_KEY "__metadata__"

/* st_fail formats the message into err (if any) and returns code. */
static int st_fail(char *err, size_t errlen, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int st_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *rt_st_dtype_name(rt_st_dtype dtype)
{
    switch (dtype) {
    case RT_ST_F32: return "F32";
    case RT_ST_I64: return "I64";
    case RT_ST_U8: return "U8";
    }
    return NULL;
}

size_t rt_st_dtype_size(rt_st_dtype dtype)
{
    switch (dtype) {
    case RT_ST_F32: return 4;
    case RT_ST_I64: return 8;
    case RT_ST_U8: return 1;
    }
    return 0;
}

/* st_nbytes computes the byte size of a tensor; returns 0 or DMOE_ETOOBIG on overflow. */
static int st_nbytes(rt_st_dtype dtype, int ndim, const int64_t *shape, size_t *out)
{
    size_t n = rt_st_dtype_size(dtype);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX || __builtin_mul_overflow(n, (size_t)shape[i], &n))
            return DMOE_ETOOBIG;
    *out = n;
    return 0;
}

/* st_cmp_str orders pointers to C strings (for duplicate checks). */
static int st_cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* st_first_dup returns a name that occurs twice among names[0..n) (sorted in place), or NULL. */
static const char *st_first_dup(const char **names, size_t n)
{
    qsort(names, n, sizeof *names, st_cmp_str);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}

/* ---- the in-memory header: a growable buffer with a sticky allocation error -------------------- */


static void sb_u64(rt_strbuf *b, uint64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof t, "%llu", (unsigned long long)v);
    rt_strbuf_put(b, t, (size_t)n);
}

/* sb_json writes s as a JSON string literal, escaped as serde_json does. */
static void sb_json(rt_strbuf *b, const char *s)
{
    rt_strbuf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char e[8];
        switch (*c) {
        case '"': rt_strbuf_put(b, "\\\"", 2); break;
        case '\\': rt_strbuf_put(b, "\\\\", 2); break;
        case '\b': rt_strbuf_put(b, "\\b", 2); break;
        case '\f': rt_strbuf_put(b, "\\f", 2); break;
        case '\n': rt_strbuf_put(b, "\\n", 2); break;
        case '\r': rt_strbuf_put(b, "\\r", 2); break;
        case '\t': rt_strbuf_put(b, "\\t", 2); break;
        default:
            if (*c < 0x20) {
                snprintf(e, sizeof e, "\\u%04x", *c);
                rt_strbuf_put(b, e, 6);
            } else {
                rt_strbuf_put(b, c, 1);
            }
        }
    }
    rt_strbuf_put(b, "\"", 1);
}

/* ---- the sticky-error file writer -------------------------------------------------------------- */

typedef struct {
    int fd;
    int err;              /* 0 or the first error code */
    int sys;              /* errno of the first failure */
    const char *what;     /* the call that failed */
} st_out;

static void so_write(st_out *o, const void *p, size_t n)
{
    const uint8_t *q = p;
    while (!o->err && n > 0) {
        ssize_t w = write(o->fd, q, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            o->err = DMOE_EIO;
            o->sys = w < 0 ? errno : ENOSPC;
            o->what = "write";
            return;
        }
        q += w;
        n -= (size_t)w;
    }
}

/* so_finish flushes to disk and closes; returns the first error of the whole sequence. */
static int so_finish(st_out *o)
{
    if (!o->err && fsync(o->fd) != 0) {
        o->err = DMOE_EIO;
        o->sys = errno;
        o->what = "fsync";
    }
    if (close(o->fd) != 0 && !o->err) {
        o->err = DMOE_EIO;
        o->sys = errno;
        o->what = "close";
    }
    o->fd = -1;
    return o->err;
}

/* st_check_tensors validates the writer's input; returns 0 or a code with the message in err. */
static int st_check_tensors(const rt_st_tensor *t, size_t nt, const rt_st_kv *meta, size_t nmeta, char *err,
                            size_t errlen)
{
    if ((nt && !t) || (nmeta && !meta)) return st_fail(err, errlen, DMOE_EINVAL, "NULL tensor or metadata list");
    for (size_t i = 0; i < nt; i++) {
        size_t nb;
        if (!t[i].name || !t[i].name[0] || strcmp(t[i].name, ST_META_KEY) == 0)
            return st_fail(err, errlen, DMOE_EINVAL, "tensor %zu: missing or reserved name", i);
        if (!rt_st_dtype_name(t[i].dtype))
            return st_fail(err, errlen, DMOE_EINVAL, "tensor '%s': unknown dtype %d", t[i].name, (int)t[i].dtype);
        if (t[i].ndim < 0 || t[i].ndim > RT_ST_MAX_NDIM)
            return st_fail(err, errlen, DMOE_EINVAL, "tensor '%s': %d dims", t[i].name, t[i].ndim);
        for (int d = 0; d < t[i].ndim; d++)
            if (t[i].shape[d] < 0)
                return st_fail(err, errlen, DMOE_EINVAL, "tensor '%s': negative dim %d", t[i].name, d);
        if (st_nbytes(t[i].dtype, t[i].ndim, t[i].shape, &nb))
            return st_fail(err, errlen, DMOE_ETOOBIG, "tensor '%s': size overflows", t[i].name);
        if (nb && !t[i].data) return st_fail(err, errlen, DMOE_EINVAL, "tensor '%s': NULL data", t[i].name);
    }
    for (size_t i = 0; i < nmeta; i++)
        if (!meta[i].key || !meta[i].value)
            return st_fail(err, errlen, DMOE_EINVAL, "metadata entry %zu: NULL key or value", i);
    size_t most = nt > nmeta ? nt : nmeta;
    const char **names = malloc((most ? most : 1) * sizeof *names);
    if (!names) return st_fail(err, errlen, DMOE_ENOMEM, "out of memory");
    for (size_t i = 0; i < nt; i++) names[i] = t[i].name;
    const char *dup = st_first_dup(names, nt);
    int rc = dup ? st_fail(err, errlen, DMOE_EINVAL, "duplicate tensor name '%s'", dup) : 0;
    if (!rc) {
        for (size_t i = 0; i < nmeta; i++) names[i] = meta[i].key;
        dup = st_first_dup(names, nmeta);
        if (dup) rc = st_fail(err, errlen, DMOE_EINVAL, "duplicate metadata key '%s'", dup);
    }
    free(names);
    return rc;
}

/* st_header builds the padded JSON header into b; returns 0 or a code. */
static int st_header(rt_strbuf *b, const rt_st_tensor *t, size_t nt, const rt_st_kv *meta, size_t nmeta)
{
    uint64_t off = 0;
    rt_strbuf_put(b, "{", 1);
    if (nmeta) {
        sb_json(b, ST_META_KEY);
        rt_strbuf_put(b, ":{", 2);
        for (size_t i = 0; i < nmeta; i++) {
            if (i) rt_strbuf_put(b, ",", 1);
            sb_json(b, meta[i].key);
            rt_strbuf_put(b, ":", 1);
            sb_json(b, meta[i].value);
        }
        rt_strbuf_put(b, "}", 1);
    }
    for (size_t i = 0; i < nt; i++) {
        size_t nb = 0;
        st_nbytes(t[i].dtype, t[i].ndim, t[i].shape, &nb);   /* checked by st_check_tensors */
        if (__builtin_add_overflow(off, (uint64_t)nb, &off)) return DMOE_ETOOBIG;
        if (nmeta || i) rt_strbuf_put(b, ",", 1);
        sb_json(b, t[i].name);
        rt_strbuf_str(b, ":{\"dtype\":");
        sb_json(b, rt_st_dtype_name(t[i].dtype));
        rt_strbuf_str(b, ",\"shape\":[");
        for (int d = 0; d < t[i].ndim; d++) {
            if (d) rt_strbuf_put(b, ",", 1);
            sb_u64(b, (uint64_t)t[i].shape[d]);
        }
        rt_strbuf_str(b, "],\"data_offsets\":[");
        sb_u64(b, off - nb);
        rt_strbuf_put(b, ",", 1);
        sb_u64(b, off);
        rt_strbuf_str(b, "]}");
    }
    rt_strbuf_put(b, "}", 1);
    while (!b->failed && b->len % 8) rt_strbuf_put(b, " ", 1);   /* the Rust writer's padding: data 8-aligned */
    if (b->failed) return DMOE_ENOMEM;
    if (b->len > RT_ST_MAX_HEADER) return DMOE_ETOOBIG;
    return 0;
}

int rt_st_write(const char *dir, const char *name, const rt_st_tensor *t, size_t nt, const rt_st_kv *meta,
                size_t nmeta, char *err, size_t errlen)
{
    if (!dir || !name || !name[0] || strchr(name, '/'))
        return st_fail(err, errlen, DMOE_EINVAL, "bad folder or file name");
    int rc = st_check_tensors(t, nt, meta, nmeta, err, errlen);
    if (rc) return rc;
    rt_strbuf hdr = {0};
    rc = st_header(&hdr, t, nt, meta, nmeta);
    if (rc) {
        free(hdr.p);
        return st_fail(err, errlen, rc, rc == DMOE_ENOMEM ? "out of memory" : "header too large");
    }
    size_t dl = strlen(dir);
    char *tmp = malloc(dl + 16), *dst = malloc(dl + strlen(name) + 2);
    if (!tmp || !dst) {
        free(hdr.p);
        free(tmp);
        free(dst);
        return st_fail(err, errlen, DMOE_ENOMEM, "out of memory");
    }
    snprintf(tmp, dl + 16, "%s/tmp-XXXXXX", dir);
    sprintf(dst, "%s/%s", dir, name);
    st_out o = {.fd = mkstemp(tmp)};
    if (o.fd < 0) {
        rc = st_fail(err, errlen, errno == ENOENT ? DMOE_ENOTFOUND : DMOE_EIO, "create %s: %s", tmp,
                     strerror(errno));
        goto out;
    }
    (void)fchmod(o.fd, 0644);   /* mkstemp makes 0600; a checkpoint is as readable as any saved file */
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hdr.len >> (8 * i));
    so_write(&o, len8, 8);
    so_write(&o, hdr.p, hdr.len);
    for (size_t i = 0; i < nt; i++) {
        size_t nb = 0;
        st_nbytes(t[i].dtype, t[i].ndim, t[i].shape, &nb);
        if (nb) so_write(&o, t[i].data, nb);
    }
    if (so_finish(&o)) {
        rc = st_fail(err, errlen, o.err, "%s %s: %s", o.what, tmp, strerror(o.sys));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, dst) != 0) {
        rc = st_fail(err, errlen, DMOE_EIO, "rename %s to %s: %s", tmp, dst, strerror(errno));
        unlink(tmp);
        goto out;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0)
        rc = st_fail(err, errlen, DMOE_EIO, "fsync folder %s: %s", dir, strerror(errno));
    if (dfd >= 0) close(dfd);
out:
    free(hdr.p);
    free(tmp);
    free(dst);
    return rc;
}

/* ---- reading ----------------------------------------------------------------------------------- */

struct rt_st_file {
    uint8_t *buf;          /* the whole file */
    size_t size;
    rt_st_tensor *t;       /* header order; names and data point into owned memory */
    size_t nt, tcap;
    uint64_t (*off)[2];    /* data_offsets per tensor, parallel to t */
    size_t *by_name;       /* indices of t sorted by name */
    rt_st_kv *meta;
    size_t nmeta, mcap;
};

/* One tensor entry as parsed, before the checks against the buffer. */
typedef struct {
    const char *name;
    bool has_dtype, has_shape, has_off;
    rt_st_dtype dtype;
    int ndim;
    uint64_t shape[RT_ST_MAX_NDIM];
    uint64_t off[2];
} st_entry;

static int st_tensor_member(rt_json_cur *j, const char *key, void *ctx)
{
    st_entry *e = ctx;
    int rc, n;
    if (strcmp(key, "dtype") == 0) {
        if (e->has_dtype) return rt_json_fail(j, DMOE_EPROTO, "tensor '%s': duplicate \"dtype\"", e->name);
        char *s;
        if ((rc = rt_json_string(j, &s))) return rc;
        rc = 0;
        if (strcmp(s, "F32") == 0) e->dtype = RT_ST_F32;
        else if (strcmp(s, "I64") == 0) e->dtype = RT_ST_I64;
        else if (strcmp(s, "U8") == 0) e->dtype = RT_ST_U8;
        else rc = rt_json_fail(j, DMOE_EINVAL, "tensor '%s': dtype \"%.16s\" is not supported", e->name, s);
        free(s);
        e->has_dtype = true;
        return rc;
    }
    if (strcmp(key, "shape") == 0) {
        if (e->has_shape) return rt_json_fail(j, DMOE_EPROTO, "tensor '%s': duplicate \"shape\"", e->name);
        if ((rc = rt_json_uints(j, e->shape, RT_ST_MAX_NDIM, INT64_MAX, &e->ndim, "shape"))) return rc;
        e->has_shape = true;
        return 0;
    }
    if (strcmp(key, "data_offsets") == 0) {
        if (e->has_off) return rt_json_fail(j, DMOE_EPROTO, "tensor '%s': duplicate \"data_offsets\"", e->name);
        if ((rc = rt_json_uints(j, e->off, 2, UINT64_MAX, &n, "data_offsets"))) return rc;
        if (n != 2) return rt_json_fail(j, DMOE_EPROTO, "tensor '%s': data_offsets needs 2 numbers", e->name);
        e->has_off = true;
        return 0;
    }
    return rt_json_fail(j, DMOE_EPROTO, "tensor '%s': unknown field \"%.32s\"", e->name, key);
}

static int st_meta_member(rt_json_cur *j, const char *key, void *ctx)
{
    rt_st_file *f = ctx;
    if (f->nmeta == f->mcap) {
        size_t cap = f->mcap ? 2 * f->mcap : 8;
        rt_st_kv *m = realloc(f->meta, cap * sizeof *m);
        if (!m) return rt_json_fail(j, DMOE_ENOMEM, "out of memory");
        f->meta = m;
        f->mcap = cap;
    }
    char *k = strdup(key), *v = NULL;
    if (!k) return rt_json_fail(j, DMOE_ENOMEM, "out of memory");
    if (rt_json_peek(j) != '"') {
        free(k);
        return rt_json_fail(j, DMOE_EPROTO, "__metadata__ value of \"%.32s\" is not a string", key);
    }
    int rc = rt_json_string(j, &v);
    if (rc) {
        free(k);
        return rc;
    }
    f->meta[f->nmeta].key = k;
    f->meta[f->nmeta].value = v;
    f->nmeta++;
    return 0;
}

/* The top-level walk: everything the header holds goes into f; tensor offsets checked later. */
typedef struct {
    rt_st_file *f;
    bool seen_meta;
} st_top;

static int st_top_member(rt_json_cur *j, const char *key, void *ctx)
{
    st_top *top = ctx;
    rt_st_file *f = top->f;
    if (strcmp(key, ST_META_KEY) == 0) {
        if (top->seen_meta) return rt_json_fail(j, DMOE_EPROTO, "duplicate key \"__metadata__\"");
        top->seen_meta = true;
        return rt_json_members(j, st_meta_member, f);
    }
    if (!key[0]) return rt_json_fail(j, DMOE_EPROTO, "empty tensor name");
    if (f->nt == f->tcap) {
        size_t cap = f->tcap ? 2 * f->tcap : 8;
        rt_st_tensor *t = realloc(f->t, cap * sizeof *t);
        if (!t) return rt_json_fail(j, DMOE_ENOMEM, "out of memory");
        f->t = t;
        uint64_t(*off)[2] = realloc(f->off, cap * sizeof *off);
        if (!off) return rt_json_fail(j, DMOE_ENOMEM, "out of memory");
        f->off = off;
        f->tcap = cap;
    }
    char *name = strdup(key);
    if (!name) return rt_json_fail(j, DMOE_ENOMEM, "out of memory");
    st_entry e = {.name = name};
    int rc = rt_json_members(j, st_tensor_member, &e);
    if (!rc && !(e.has_dtype && e.has_shape && e.has_off))
        rc = rt_json_fail(j, DMOE_EPROTO, "tensor '%s': missing %s", name,
                     !e.has_dtype ? "\"dtype\"" : !e.has_shape ? "\"shape\"" : "\"data_offsets\"");
    if (rc) {
        free(name);
        return rc;
    }
    rt_st_tensor *t = &f->t[f->nt];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = e.dtype;
    t->ndim = e.ndim;
    for (int d = 0; d < e.ndim; d++) t->shape[d] = (int64_t)e.shape[d];
    f->off[f->nt][0] = e.off[0];
    f->off[f->nt][1] = e.off[1];
    f->nt++;
    return 0;
}

/* st_cmp_off orders tensor indices by data_offsets (qsort_r, the file as context). */
static int st_cmp_off(const void *a, const void *b, void *ctx)
{
    const rt_st_file *f = ctx;
    const uint64_t *ox = f->off[*(const size_t *)a], *oy = f->off[*(const size_t *)b];
    if (ox[0] != oy[0]) return ox[0] < oy[0] ? -1 : 1;
    if (ox[1] != oy[1]) return ox[1] < oy[1] ? -1 : 1;
    return 0;
}

/* st_cmp_name orders tensor indices by name. */
static int st_cmp_name(const void *a, const void *b, void *ctx)
{
    const rt_st_file *f = ctx;
    return strcmp(f->t[*(const size_t *)a].name, f->t[*(const size_t *)b].name);
}

static int st_cmp_kv(const void *a, const void *b)
{
    return strcmp(((const rt_st_kv *)a)->key, ((const rt_st_kv *)b)->key);
}

/* st_validate checks every tensor against the data buffer of dlen bytes at data. */
static int st_validate(rt_st_file *f, const uint8_t *data, uint64_t dlen, char *err, size_t errlen)
{
    for (size_t i = 0; i < f->nt; i++) {
        rt_st_tensor *t = &f->t[i];
        uint64_t b = f->off[i][0], e = f->off[i][1];
        if (b > e) return st_fail(err, errlen, DMOE_EPROTO, "tensor '%s': data_offsets [%llu, %llu] reversed",
                                  t->name, (unsigned long long)b, (unsigned long long)e);
        if (e > dlen)
            return st_fail(err, errlen, DMOE_EPROTO,
                           "tensor '%s': data_offsets [%llu, %llu] beyond the %llu-byte buffer (truncated?)",
                           t->name, (unsigned long long)b, (unsigned long long)e, (unsigned long long)dlen);
        size_t nb;
        if (st_nbytes(t->dtype, t->ndim, t->shape, &nb))
            return st_fail(err, errlen, DMOE_ETOOBIG, "tensor '%s': size overflows", t->name);
        if ((uint64_t)nb != e - b)
            return st_fail(err, errlen, DMOE_ESHAPE, "tensor '%s': %s shape needs %zu bytes, data_offsets hold %llu",
                           t->name, rt_st_dtype_name(t->dtype), nb, (unsigned long long)(e - b));
        t->data = data + b;
        t->nbytes = nb;
    }
    size_t *ix = malloc((f->nt ? f->nt : 1) * sizeof *ix);
    if (!ix) return st_fail(err, errlen, DMOE_ENOMEM, "out of memory");
    for (size_t i = 0; i < f->nt; i++) ix[i] = i;
    if (f->nt) qsort_r(ix, f->nt, sizeof *ix, st_cmp_off, f);
    uint64_t at = 0;
    int rc = 0;
    for (size_t k = 0; k < f->nt && !rc; k++) {
        const uint64_t *o = f->off[ix[k]];
        if (o[0] < at)
            rc = st_fail(err, errlen, DMOE_EPROTO, "tensor '%s': data_offsets [%llu, %llu] overlap another tensor",
                         f->t[ix[k]].name, (unsigned long long)o[0], (unsigned long long)o[1]);
        else if (o[0] > at)
            rc = st_fail(err, errlen, DMOE_EPROTO, "hole in the buffer: bytes [%llu, %llu) belong to no tensor",
                         (unsigned long long)at, (unsigned long long)o[0]);
        at = o[1];
    }
    if (!rc && at != dlen)
        rc = st_fail(err, errlen, DMOE_EPROTO, "%llu bytes after the last tensor belong to no tensor",
                     (unsigned long long)(dlen - at));
    if (!rc) {
        qsort_r(ix, f->nt, sizeof *ix, st_cmp_name, f);
        for (size_t k = 1; k < f->nt && !rc; k++)
            if (strcmp(f->t[ix[k - 1]].name, f->t[ix[k]].name) == 0)
                rc = st_fail(err, errlen, DMOE_EPROTO, "duplicate tensor name '%s'", f->t[ix[k]].name);
    }
    if (!rc && f->nmeta > 1) {
        rt_st_kv *sorted = malloc(f->nmeta * sizeof *sorted);
        if (!sorted) {
            rc = st_fail(err, errlen, DMOE_ENOMEM, "out of memory");
        } else {
            memcpy(sorted, f->meta, f->nmeta * sizeof *sorted);
            qsort(sorted, f->nmeta, sizeof *sorted, st_cmp_kv);
            for (size_t k = 1; k < f->nmeta && !rc; k++)
                if (strcmp(sorted[k - 1].key, sorted[k].key) == 0)
                    rc = st_fail(err, errlen, DMOE_EPROTO, "duplicate __metadata__ key '%s'", sorted[k].key);
            free(sorted);
        }
    }
    if (rc) {
        free(ix);
        return rc;
    }
    f->by_name = ix;
    return 0;
}

/* st_read_all reads path into a malloc'd buffer. */
static int st_read_all(const char *path, uint8_t **buf, size_t *size, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return st_fail(err, errlen, errno == ENOENT ? DMOE_ENOTFOUND : DMOE_EIO, "open %s: %s", path,
                       strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return st_fail(err, errlen, DMOE_EIO, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size, got = 0;
    uint8_t *b = malloc(n ? n : 1);
    if (!b) {
        close(fd);
        return st_fail(err, errlen, DMOE_ENOMEM, "out of memory for %zu bytes", n);
    }
    while (got < n) {
        ssize_t r = pread(fd, b + got, n - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got < n) {
        free(b);
        return st_fail(err, errlen, DMOE_EIO, "read %s: short read", path);
    }
    *buf = b;
    *size = n;
    return 0;
}

int rt_st_open(const char *path, rt_st_file **out, char *err, size_t errlen)
{
    if (!path || !out) return st_fail(err, errlen, DMOE_EINVAL, "NULL argument");
    rt_st_file *f = calloc(1, sizeof *f);
    if (!f) return st_fail(err, errlen, DMOE_ENOMEM, "out of memory");
    int rc = st_read_all(path, &f->buf, &f->size, err, errlen);
    if (rc) {
        free(f);
        return rc;
    }
    if (f->size < 8) {
        rc = st_fail(err, errlen, DMOE_EPROTO, "truncated: %zu bytes, shorter than the header length", f->size);
        goto fail;
    }
    uint64_t hn = 0;
    for (int i = 0; i < 8; i++) hn |= (uint64_t)f->buf[i] << (8 * i);
    if (hn > RT_ST_MAX_HEADER) {
        rc = st_fail(err, errlen, DMOE_ETOOBIG, "header length %llu over the %u-byte limit", (unsigned long long)hn,
                     RT_ST_MAX_HEADER);
        goto fail;
    }
    if (hn > f->size - 8) {
        rc = st_fail(err, errlen, DMOE_EPROTO, "truncated: header length %llu runs past the %zu-byte file",
                     (unsigned long long)hn, f->size);
        goto fail;
    }
    const char *h = (const char *)f->buf + 8;
    if (hn == 0 || h[0] != '{') {
        rc = st_fail(err, errlen, DMOE_EPROTO, "bad header: does not start with '{'");
        goto fail;
    }
    if (!rt_json_utf8_ok(f->buf + 8, (size_t)hn)) {
        rc = st_fail(err, errlen, DMOE_EPROTO, "bad header: not UTF-8");
        goto fail;
    }
    rt_json_cur j;
    rt_json_init(&j, h, (size_t)hn, err, errlen);
    st_top top = {.f = f};
    rc = rt_json_members(&j, st_top_member, &top);
    if (!rc) {
        rt_json_ws(&j);   /* the Rust writer pads with spaces; JSON allows any whitespace here */
        if (j.p != j.end) rc = rt_json_fail(&j, DMOE_EPROTO, "bad JSON: bytes after the header object");
    }
    if (rc) goto fail;
    rc = st_validate(f, f->buf + 8 + hn, f->size - 8 - hn, err, errlen);
    if (rc) goto fail;
    *out = f;
    return 0;
fail:
    rt_st_close(f);
    return rc;
}

int rt_st_read_meta(const char *path, const char *key, char *out, size_t outlen, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return st_fail(err, errlen, errno == ENOENT ? DMOE_ENOTFOUND : DMOE_EIO, "open %s: %s", path, strerror(errno));
    struct stat st;
    uint8_t len8[8];
    int rc = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || pread(fd, len8, 8, 0) != 8) {
        close(fd);
        return st_fail(err, errlen, DMOE_EPROTO, "%s: not a safetensors file", path);
    }
    uint64_t hn = 0;
    for (int i = 0; i < 8; i++) hn |= (uint64_t)len8[i] << (8 * i);
    if (hn == 0 || hn > RT_ST_MAX_HEADER || hn > (uint64_t)st.st_size - 8) {
        close(fd);
        return st_fail(err, errlen, DMOE_EPROTO, "%s: header length %llu does not fit", path, (unsigned long long)hn);
    }
    rt_st_file *f = calloc(1, sizeof *f);
    if (f) f->buf = malloc((size_t)hn);
    if (!f || !f->buf) {
        close(fd);
        rt_st_close(f);
        return st_fail(err, errlen, DMOE_ENOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < hn) {
        ssize_t r = pread(fd, f->buf + got, (size_t)hn - got, (off_t)(8 + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got < hn || f->buf[0] != '{' || !rt_json_utf8_ok(f->buf, (size_t)hn)) {
        rt_st_close(f);
        return st_fail(err, errlen, DMOE_EPROTO, "%s: bad header", path);
    }
    rt_json_cur j;
    rt_json_init(&j, (const char *)f->buf, (size_t)hn, err, errlen);
    st_top top = {.f = f};
    rc = rt_json_members(&j, st_top_member, &top);
    if (!rc) {
        rc = DMOE_ENOTFOUND;
        for (size_t i = 0; i < f->nmeta; i++)
            if (strcmp(f->meta[i].key, key) == 0) {
                if (out && outlen) snprintf(out, outlen, "%s", f->meta[i].value);
                rc = 0;
                break;
            }
        if (rc) st_fail(err, errlen, rc, "%s: no metadata %s", path, key);
    }
    rt_st_close(f);
    return rc;
}

void rt_st_close(rt_st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->nt; i++) free((char *)f->t[i].name);
    for (size_t i = 0; i < f->nmeta; i++) {
        free((char *)f->meta[i].key);
        free((char *)f->meta[i].value);
    }
    free(f->t);
    free(f->off);
    free(f->by_name);
    free(f->meta);
    free(f->buf);
    free(f);
}

size_t rt_st_count(const rt_st_file *f)
{
    return f ? f->nt : 0;
}

const rt_st_tensor *rt_st_at(const rt_st_file *f, size_t i)
{
    return f && i < f->nt ? &f->t[i] : NULL;
}

const rt_st_tensor *rt_st_find(const rt_st_file *f, const char *name)
{
    if (!f || !name) return NULL;
    size_t lo = 0, hi = f->nt;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->t[f->by_name[mid]].name, name);
        if (c == 0) return &f->t[f->by_name[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const char *rt_st_meta(const rt_st_file *f, const char *key)
{
    if (!f || !key) return NULL;
    for (size_t i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

size_t rt_st_meta_count(const rt_st_file *f)
{
    return f ? f->nmeta : 0;
}

const rt_st_kv *rt_st_meta_at(const rt_st_file *f, size_t i)
{
    return f && i < f->nmeta ? &f->meta[i] : NULL;
}

int rt_st_copy(const rt_st_file *f, const char *name, rt_st_dtype dtype, int ndim, const int64_t *shape,
               void *dst, size_t dst_bytes, char *err, size_t errlen)
{
    const rt_st_tensor *t = rt_st_find(f, name);
    if (!t) return st_fail(err, errlen, DMOE_ENOTFOUND, "no tensor '%s'", name ? name : "(null)");
    bool same = t->dtype == dtype && t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = shape && t->shape[d] == shape[d];
    if (!same) return st_fail(err, errlen, DMOE_ESHAPE, "tensor '%s': dtype or shape differs from the expected", name);
    if (dst_bytes != t->nbytes || (dst_bytes && !dst))
        return st_fail(err, errlen, DMOE_EINVAL, "tensor '%s': %zu bytes, destination %zu", name, t->nbytes,
                       dst_bytes);
    if (dst_bytes) memcpy(dst, t->data, dst_bytes);
    return 0;
}
