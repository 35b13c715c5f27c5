/* wire_npy.c -- reading and writing NumPy .npy files (wire_npy.h).
 *
 * Owns nothing between calls. A read opens the file, parses the preamble and the header dict, checks
 * that the file holds exactly the bytes the shape says, then reads the data straight into the buffer
 * it returns (converting '<f8' to float32 through a bounded scratch buffer). A write builds the header
 * text numpy.save would, pads it with spaces so the data starts on a 64-byte boundary, and writes
 * preamble, header and data; on any failure the partial file is removed.
 *
 * The file layout (NEP 1):
 *   "\x93NUMPY" major minor   8 bytes
 *   HEADER_LEN                uint16 LE (1.0) or uint32 LE (2.0, 3.0)
 *   header                    HEADER_LEN bytes: a Python dict literal, e.g.
 *                             {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 *                             padded with spaces and ended by '\n'
 *   data                      numel * itemsize bytes, C order here
 * The header parser is a small tokenizer for exactly that literal: single- or double-quoted keys in any
 * order, any whitespace, optional trailing commas in the dict and the tuple, Python 2's "3L" longs.
 * Numbers are stored little-endian; on a big-endian host the bytes are swapped after reading.
 * Blocking stdio; any thread; no shared state.
 */
#include "wire/codec/wire_npy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/rt_err.h"

#define NPY_MAGIC      "\x93NUMPY"
#define NPY_MAGIC_LEN  6
#define NPY_ALIGN      64            /* numpy pads headers so data starts on this boundary */
#define NPY_MAX_HEADER (1u << 20)    /* a header we are willing to parse; numpy's own cap is 10 KiB */
#define NPY_CHUNK      (1u << 20)    /* '<f8' conversion scratch, bytes */

/* The element types a file may hold, as read from 'descr'. */
typedef enum { NPY_F4, NPY_F8, NPY_U1 } npy_kind;

typedef struct {
    npy_kind kind;
    int fortran;
    int ndim;
    int64_t shape[WIRE_MAX_NDIM];
    int have_descr, have_fortran, have_shape;
} npy_header;

static int host_is_big_endian(void)
{
    const uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 0;
}

/* swap_bytes reverses each size-byte element of p[n elements] in place. */
static void swap_bytes(uint8_t *p, size_t n, size_t size)
{
    for (size_t i = 0; i < n; i++, p += size)
        for (size_t a = 0, b = size - 1; a < b; a++, b--) {
            uint8_t t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

/* ---- header parsing ---------------------------------------------------------------------------- */

typedef struct {
    const char *p, *end;
    char *err;
    size_t errlen;
} hparser;

static void hp_ws(hparser *h)
{
    while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r')) h->p++;
}

/* hp_eat skips whitespace and consumes c if it is next; returns whether it did. */
static int hp_eat(hparser *h, char c)
{
    hp_ws(h);
    if (h->p < h->end && *h->p == c) {
        h->p++;
        return 1;
    }
    return 0;
}

/* hp_string reads a quoted string (no escapes: none occur in npy headers) into buf. */
static int hp_string(hparser *h, char *buf, size_t cap)
{
    hp_ws(h);
    if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) {
        dmoe_set_err(h->err, h->errlen, "npy header: expected a quoted string");
        return DMOE_EPROTO;
    }
    char q = *h->p++;
    size_t n = 0;
    while (h->p < h->end && *h->p != q) {
        if (*h->p == '\\' || n + 1 >= cap) {
            dmoe_set_err(h->err, h->errlen, "npy header: unsupported or too long string");
            return DMOE_EPROTO;
        }
        buf[n++] = *h->p++;
    }
    if (h->p >= h->end) {
        dmoe_set_err(h->err, h->errlen, "npy header: unterminated string");
        return DMOE_EPROTO;
    }
    h->p++;
    buf[n] = 0;
    return 0;
}

/* hp_word reads an identifier (True, False). */
static int hp_word(hparser *h, const char *w)
{
    hp_ws(h);
    size_t n = strlen(w);
    if ((size_t)(h->end - h->p) >= n && memcmp(h->p, w, n) == 0) {
        h->p += n;
        return 1;
    }
    return 0;
}

/* hp_shape reads a tuple of non-negative integers. */
static int hp_shape(hparser *h, npy_header *hd)
{
    if (!hp_eat(h, '(')) {
        dmoe_set_err(h->err, h->errlen, "npy header: 'shape' is not a tuple");
        return DMOE_EPROTO;
    }
    hd->ndim = 0;
    for (;;) {
        if (hp_eat(h, ')')) break;
        hp_ws(h);
        if (h->p >= h->end || *h->p < '0' || *h->p > '9') {
            dmoe_set_err(h->err, h->errlen, "npy header: 'shape' holds something other than non-negative integers");
            return DMOE_EPROTO;
        }
        int64_t v = 0;
        while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
            int d = *h->p++ - '0';
            if (v > (INT64_MAX - d) / 10) {
                dmoe_set_err(h->err, h->errlen, "npy header: a dimension overflows");
                return DMOE_ETOOBIG;
            }
            v = v * 10 + d;
        }
        if (h->p < h->end && (*h->p == 'L' || *h->p == 'l')) h->p++;
        if (hd->ndim == WIRE_MAX_NDIM) {
            dmoe_set_err(h->err, h->errlen, "npy array has more than %d dims", WIRE_MAX_NDIM);
            return DMOE_ETOOBIG;
        }
        hd->shape[hd->ndim++] = v;
        if (hp_eat(h, ',')) continue;
        if (hp_eat(h, ')')) break;
        dmoe_set_err(h->err, h->errlen, "npy header: malformed 'shape' tuple");
        return DMOE_EPROTO;
    }
    hd->have_shape = 1;
    return 0;
}

/* parse_descr maps a descr string to a kind, with a precise message for what we refuse. */
static int parse_descr(const char *d, npy_header *hd, char *err, size_t errlen)
{
    if (!strcmp(d, "<f4")) hd->kind = NPY_F4;
    else if (!strcmp(d, "<f8")) hd->kind = NPY_F8;
    else if (!strcmp(d, "|u1") || !strcmp(d, "|b1") || !strcmp(d, "u1") || !strcmp(d, "b1")) hd->kind = NPY_U1;
    else if (d[0] == '>' && (!strcmp(d + 1, "f4") || !strcmp(d + 1, "f8"))) {
        dmoe_set_err(err, errlen, "npy dtype '%s' is big-endian; save it as little-endian ('<f4')", d);
        return DMOE_EINVAL;
    } else {
        dmoe_set_err(err, errlen, "npy dtype '%s' is not supported (use '<f4', '<f8', '|u1' or '|b1')", d);
        return DMOE_EINVAL;
    }
    hd->have_descr = 1;
    return 0;
}

/* parse_header reads the dict literal in txt[len]. */
static int parse_header(const char *txt, size_t len, npy_header *hd, char *err, size_t errlen)
{
    hparser h = { txt, txt + len, err, errlen };
    memset(hd, 0, sizeof *hd);
    if (!hp_eat(&h, '{')) {
        dmoe_set_err(err, errlen, "npy header is not a dict");
        return DMOE_EPROTO;
    }
    for (;;) {
        if (hp_eat(&h, '}')) break;
        char key[32], val[32];
        int rc = hp_string(&h, key, sizeof key);
        if (rc) return rc;
        if (!hp_eat(&h, ':')) {
            dmoe_set_err(err, errlen, "npy header: expected ':' after '%s'", key);
            return DMOE_EPROTO;
        }
        if (!strcmp(key, "descr")) {
            if ((rc = hp_string(&h, val, sizeof val)) != 0) return rc;
            if ((rc = parse_descr(val, hd, err, errlen)) != 0) return rc;
        } else if (!strcmp(key, "fortran_order")) {
            if (hp_word(&h, "True")) hd->fortran = 1;
            else if (hp_word(&h, "False")) hd->fortran = 0;
            else {
                dmoe_set_err(err, errlen, "npy header: 'fortran_order' is not True or False");
                return DMOE_EPROTO;
            }
            hd->have_fortran = 1;
        } else if (!strcmp(key, "shape")) {
            if ((rc = hp_shape(&h, hd)) != 0) return rc;
        } else {
            dmoe_set_err(err, errlen, "npy header has an unexpected key '%s'", key);
            return DMOE_EPROTO;
        }
        if (hp_eat(&h, ',')) continue;
        if (hp_eat(&h, '}')) break;
        dmoe_set_err(err, errlen, "npy header: expected ',' or '}'");
        return DMOE_EPROTO;
    }
    hp_ws(&h);
    if (h.p != h.end) {
        dmoe_set_err(err, errlen, "npy header: text after the dict");
        return DMOE_EPROTO;
    }
    if (!hd->have_descr || !hd->have_fortran || !hd->have_shape) {
        dmoe_set_err(err, errlen, "npy header lacks one of 'descr', 'fortran_order', 'shape'");
        return DMOE_EPROTO;
    }
    if (hd->fortran) {
        dmoe_set_err(err, errlen, "npy array is in Fortran order; save np.ascontiguousarray(x) instead");
        return DMOE_EINVAL;
    }
    return 0;
}

/* ---- reading ----------------------------------------------------------------------------------- */

/* read_exact reads n bytes or fails. */
static int read_exact(FILE *f, void *buf, size_t n)
{
    return fread(buf, 1, n, f) == n ? 0 : DMOE_EIO;
}

/* read_f8_as_f32 reads numel little-endian doubles and stores them as floats into out. */
static int read_f8_as_f32(FILE *f, size_t numel, float *out)
{
    size_t per = NPY_CHUNK / 8;
    double *tmp = malloc((numel < per ? (numel ? numel : 1) : per) * sizeof *tmp);
    if (!tmp) return DMOE_ENOMEM;
    int big = host_is_big_endian();
    size_t done = 0;
    while (done < numel) {
        size_t n = numel - done < per ? numel - done : per;
        if (read_exact(f, tmp, n * 8) != 0) {
            free(tmp);
            return DMOE_EIO;
        }
        if (big) swap_bytes((uint8_t *)tmp, n, 8);
        for (size_t i = 0; i < n; i++) out[done + i] = (float)tmp[i];
        done += n;
    }
    free(tmp);
    return 0;
}

int wire_npy_read(const char *path, wire_dtype *dtype, int *ndim, int64_t *shape, void **data,
                  size_t *nbytes, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        dmoe_set_err(err, errlen, "%s: %s", path, strerror(e));
        return e == ENOENT ? DMOE_ENOTFOUND : DMOE_EIO;
    }
    int rc = 0;
    char *htxt = NULL;
    void *buf = NULL;
    struct stat st;
    uint8_t pre[12];

    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        dmoe_set_err(err, errlen, "%s: not a regular file", path);
        rc = DMOE_EIO;
        goto out;
    }
    if (read_exact(f, pre, 10) != 0 || memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
        dmoe_set_err(err, errlen, "%s: not an .npy file (bad magic)", path);
        rc = DMOE_EPROTO;
        goto out;
    }
    int major = pre[6], minor = pre[7];
    size_t hlen, pre_len;
    if (major == 1 && minor == 0) {
        hlen = (size_t)pre[8] | ((size_t)pre[9] << 8);
        pre_len = 10;
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (read_exact(f, pre + 10, 2) != 0) {
            dmoe_set_err(err, errlen, "%s: truncated .npy preamble", path);
            rc = DMOE_EPROTO;
            goto out;
        }
        hlen = (size_t)pre[8] | ((size_t)pre[9] << 8) | ((size_t)pre[10] << 16) | ((size_t)pre[11] << 24);
        pre_len = 12;
    } else {
        dmoe_set_err(err, errlen, "%s: .npy format version %d.%d is not supported", path, major, minor);
        rc = DMOE_EPROTO;
        goto out;
    }
    if (hlen == 0 || hlen > NPY_MAX_HEADER || (uint64_t)st.st_size < pre_len + hlen) {
        dmoe_set_err(err, errlen, "%s: .npy header length %zu is invalid for a file of %lld bytes", path, hlen,
                (long long)st.st_size);
        rc = DMOE_EPROTO;
        goto out;
    }
    htxt = malloc(hlen);
    if (!htxt) {
        rc = DMOE_ENOMEM;
        dmoe_set_err(err, errlen, "out of memory");
        goto out;
    }
    if (read_exact(f, htxt, hlen) != 0) {
        dmoe_set_err(err, errlen, "%s: read error in the .npy header", path);
        rc = DMOE_EIO;
        goto out;
    }
    npy_header hd;
    char perr[160] = "";
    rc = parse_header(htxt, hlen, &hd, perr, sizeof perr);
    if (rc) {
        dmoe_set_err(err, errlen, "%s: %s", path, perr);
        goto out;
    }

    size_t in_size = hd.kind == NPY_F8 ? 8 : hd.kind == NPY_F4 ? 4 : 1;
    size_t out_size = hd.kind == NPY_U1 ? 1 : 4;
    size_t numel = 1;
    for (int i = 0; i < hd.ndim; i++) {
        uint64_t d = (uint64_t)hd.shape[i];
        if (d > SIZE_MAX || (d && numel > SIZE_MAX / 8 / d)) {
            dmoe_set_err(err, errlen, "%s: .npy shape is too large", path);
            rc = DMOE_ETOOBIG;
            goto out;
        }
        numel *= (size_t)d;
    }
    uint64_t have = (uint64_t)st.st_size - pre_len - hlen;
    if (have != (uint64_t)numel * in_size) {
        dmoe_set_err(err, errlen, "%s: .npy data has %llu bytes but the header's shape and dtype say %llu", path,
                (unsigned long long)have, (unsigned long long)numel * in_size);
        rc = DMOE_ESHAPE;
        goto out;
    }
    buf = malloc(numel ? numel * out_size : 1);
    if (!buf) {
        dmoe_set_err(err, errlen, "out of memory for %zu elements", numel);
        rc = DMOE_ENOMEM;
        goto out;
    }
    if (hd.kind == NPY_F8) {
        rc = read_f8_as_f32(f, numel, buf);
    } else {
        rc = read_exact(f, buf, numel * in_size);
        if (rc == 0 && in_size > 1 && host_is_big_endian()) swap_bytes(buf, numel, in_size);
    }
    if (rc) {
        dmoe_set_err(err, errlen, rc == DMOE_ENOMEM ? "out of memory" : "%s: read error in the .npy data", path);
        goto out;
    }

    *dtype = hd.kind == NPY_U1 ? WIRE_DT_U8 : WIRE_DT_F32;
    *ndim = hd.ndim;
    for (int i = 0; i < hd.ndim; i++) shape[i] = hd.shape[i];
    *data = buf;
    *nbytes = numel * out_size;
    buf = NULL;
out:
    free(buf);
    free(htxt);
    fclose(f);
    return rc;
}

/* ---- writing ----------------------------------------------------------------------------------- */

/* write_data writes n elements of size bytes little-endian, swapping through a scratch buffer on big-endian hosts. */
static int write_data(FILE *f, const void *data, size_t n, size_t size)
{
    if (size == 1 || !host_is_big_endian()) return fwrite(data, 1, n * size, f) == n * size ? 0 : DMOE_EIO;
    uint8_t tmp[4096];
    const uint8_t *p = data;
    size_t per = sizeof tmp / size;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < per ? n - done : per;
        memcpy(tmp, p + done * size, k * size);
        swap_bytes(tmp, k, size);
        if (fwrite(tmp, 1, k * size, f) != k * size) return DMOE_EIO;
        done += k;
    }
    return 0;
}

int wire_npy_write(const char *path, wire_dtype dtype, int ndim, const int64_t *shape, const void *data,
                   char *err, size_t errlen)
{
    const char *descr;
    size_t size;
    if (dtype == WIRE_DT_F32) {
        descr = "<f4";
        size = 4;
    } else if (dtype == WIRE_DT_U8) {
        descr = "|u1";
        size = 1;
    } else {
        dmoe_set_err(err, errlen, "npy: can only write float32 or uint8, not %s", wire_dtype_name(dtype));
        return DMOE_EINVAL;
    }
    if (ndim < 0 || ndim > WIRE_MAX_NDIM) {
        dmoe_set_err(err, errlen, "npy: %d dims (0..%d allowed)", ndim, WIRE_MAX_NDIM);
        return DMOE_EINVAL;
    }
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            dmoe_set_err(err, errlen, "npy: dim %d is negative", i);
            return DMOE_EINVAL;
        }
        if ((uint64_t)shape[i] > SIZE_MAX || (shape[i] && numel > SIZE_MAX / size / (size_t)shape[i])) {
            dmoe_set_err(err, errlen, "npy: shape too large");
            return DMOE_ETOOBIG;
        }
        numel *= (size_t)shape[i];
        n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%s), }", ndim == 1 ? "," : "");
    /* Pad with spaces so preamble + header + '\n' is a multiple of NPY_ALIGN. */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (NPY_ALIGN - total % NPY_ALIGN) % NPY_ALIGN;
    memset(hdr + n, ' ', pad);
    hdr[(size_t)n + pad] = '\n';
    size_t hlen = (size_t)n + pad + 1; /* < 512 with at most 8 dims of 19 digits: version 1.0 fits */

    FILE *f = fopen(path, "wb");
    if (!f) {
        dmoe_set_err(err, errlen, "%s: %s", path, strerror(errno));
        return DMOE_EIO;
    }
    uint8_t pre[10];
    memcpy(pre, NPY_MAGIC, NPY_MAGIC_LEN);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (uint8_t)(hlen & 0xff);
    pre[9] = (uint8_t)(hlen >> 8);
    int rc = 0;
    if (fwrite(pre, 1, sizeof pre, f) != sizeof pre || fwrite(hdr, 1, hlen, f) != hlen)
        rc = DMOE_EIO;
    if (!rc && numel) rc = write_data(f, data, numel, size);
    if (fclose(f) != 0) rc = DMOE_EIO;
    if (rc) {
        dmoe_set_err(err, errlen, "%s: write failed", path);
        remove(path);
    }
    return rc;
}
