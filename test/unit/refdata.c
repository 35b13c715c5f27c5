/* refdata.c -- loads the PyTorch reference vectors of test/data (see refdata.h); test-only code.
 *
 * The whole file is read into memory and unpacked with msgpack-c; each tensor's bytes are copied out of
 * the msgpack zone into a malloc'd buffer (aligned for float, unlike a bin inside the file), after
 * checking that the byte count matches the shape and dtype. Then the msgpack objects are dropped, so a
 * refdata is just an array of (name, dtype, shape, data). Data is little-endian, as is every machine
 * this project runs on.
 */
#include "test/unit/refdata.h"

#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    int is_u8;
    int ndim;
    int64_t shape[REFDATA_MAX_DIMS];
    size_t numel;
    void *data;
} refdata_tensor;

struct refdata {
    int n;
    refdata_tensor *t;
};

const char *refdata_dir(void)
{
    const char *d = getenv("DMOE_TEST_DATA");
    return d && *d ? d : "test/data";
}

void refdata_free(refdata *rd)
{
    if (!rd) return;
    for (int i = 0; i < rd->n; i++) {
        free(rd->t[i].name);
        free(rd->t[i].data);
    }
    free(rd->t);
    free(rd);
}

/* refdata_read_file returns the malloc'd contents of path and its length in *len, or NULL. */
static char *refdata_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long sz = ftell(f);
        if (sz >= 0 && fseek(f, 0, SEEK_SET) == 0) {
            buf = malloc((size_t)sz + 1);
            if (buf && fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
                free(buf);
                buf = NULL;
            }
            *len = (size_t)sz;
        }
    }
    fclose(f);
    return buf;
}

static int refdata_key_is(const msgpack_object *k, const char *s)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(s) && memcmp(k->via.str.ptr, s, k->via.str.size) == 0;
}

/* refdata_parse_tensor fills t from the map obj; returns 0 or -1 when it is not a valid tensor. */
static int refdata_parse_tensor(const msgpack_object *obj, refdata_tensor *t)
{
    if (obj->type != MSGPACK_OBJECT_MAP) return -1;
    const msgpack_object *shape = NULL, *dtype = NULL, *data = NULL;
    for (uint32_t i = 0; i < obj->via.map.size; i++) {
        const msgpack_object_kv *kv = &obj->via.map.ptr[i];
        if (refdata_key_is(&kv->key, "shape")) shape = &kv->val;
        else if (refdata_key_is(&kv->key, "dtype")) dtype = &kv->val;
        else if (refdata_key_is(&kv->key, "data")) data = &kv->val;
    }
    if (!shape || shape->type != MSGPACK_OBJECT_ARRAY || shape->via.array.size > REFDATA_MAX_DIMS) return -1;
    if (!dtype || dtype->type != MSGPACK_OBJECT_STR) return -1;
    if (!data || (data->type != MSGPACK_OBJECT_BIN && data->type != MSGPACK_OBJECT_STR)) return -1;
    if (refdata_key_is(dtype, "f32")) t->is_u8 = 0;
    else if (refdata_key_is(dtype, "u8")) t->is_u8 = 1;
    else return -1;
    t->ndim = (int)shape->via.array.size;
    t->numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        const msgpack_object *d = &shape->via.array.ptr[i];
        if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER || d->via.u64 > (1u << 30)) return -1;
        t->shape[i] = (int64_t)d->via.u64;
        t->numel *= (size_t)d->via.u64;
    }
    const char *bytes = data->type == MSGPACK_OBJECT_BIN ? data->via.bin.ptr : data->via.str.ptr;
    size_t nbytes = data->type == MSGPACK_OBJECT_BIN ? data->via.bin.size : data->via.str.size;
    if (nbytes != t->numel * (t->is_u8 ? 1 : sizeof(float))) return -1;
    t->data = malloc(nbytes ? nbytes : 1);
    if (!t->data) return -1;
    if (nbytes) memcpy(t->data, bytes, nbytes);
    return 0;
}

refdata *refdata_load(const char *file)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", refdata_dir(), file);
    size_t len = 0;
    char *buf = refdata_read_file(path, &len);
    if (!buf) {
        fprintf(stderr, "refdata: cannot read %s (set DMOE_TEST_DATA to the test/data folder)\n", path);
        return NULL;
    }
    refdata *rd = calloc(1, sizeof *rd);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int ok = rd && msgpack_unpack_next(&up, buf, len, &off) == MSGPACK_UNPACK_SUCCESS &&
             up.data.type == MSGPACK_OBJECT_MAP;
    if (ok) {
        uint32_t n = up.data.via.map.size;
        rd->t = calloc(n ? n : 1, sizeof *rd->t);
        ok = rd->t != NULL;
        for (uint32_t i = 0; ok && i < n; i++) {
            const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
            refdata_tensor *t = &rd->t[rd->n];
            if (kv->key.type != MSGPACK_OBJECT_STR) {
                ok = 0;
                break;
            }
            t->name = strndup(kv->key.via.str.ptr, kv->key.via.str.size);
            rd->n++;
            ok = t->name && refdata_parse_tensor(&kv->val, t) == 0;
        }
    }
    msgpack_unpacked_destroy(&up);
    free(buf);
    if (!ok) {
        fprintf(stderr, "refdata: %s is not a map of tensors\n", path);
        refdata_free(rd);
        return NULL;
    }
    return rd;
}

static const refdata_tensor *refdata_find(const refdata *rd, const char *name)
{
    if (!rd || !name) return NULL;
    for (int i = 0; i < rd->n; i++)
        if (strcmp(rd->t[i].name, name) == 0) return &rd->t[i];
    return NULL;
}

int refdata_count(const refdata *rd)
{
    return rd ? rd->n : 0;
}

const char *refdata_name(const refdata *rd, int i)
{
    if (!rd || i < 0 || i >= rd->n) return NULL;
    return rd->t[i].name;
}

const float *refdata_f32(const refdata *rd, const char *name, size_t *numel)
{
    const refdata_tensor *t = refdata_find(rd, name);
    if (!t || t->is_u8) return NULL;
    if (numel) *numel = t->numel;
    return t->data;
}

const uint8_t *refdata_u8(const refdata *rd, const char *name, size_t *numel)
{
    const refdata_tensor *t = refdata_find(rd, name);
    if (!t || !t->is_u8) return NULL;
    if (numel) *numel = t->numel;
    return t->data;
}

int refdata_shape(const refdata *rd, const char *name, int64_t *shape)
{
    const refdata_tensor *t = refdata_find(rd, name);
    if (!t) return -1;
    if (shape)
        for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
    return t->ndim;
}

void refdata_expect_close(const char *what, const float *got, const float *want, size_t n, float atol, float rtol)
{
    for (size_t i = 0; i < n; i++) {
        float tol = atol + rtol * fabsf(want[i]);
        cr_assert(isfinite(got[i]) && fabsf(got[i] - want[i]) <= tol, "%s[%zu]: got %.8g, want %.8g", what, i,
                  (double)got[i], (double)want[i]);
    }
}

/* ref_param returns rd's tensor "<prefix>.<p's name>", asserting that it has p's shape. */
static const float *ref_param(const refdata *rd, const char *prefix, const kern_param_info *p, char *key, size_t keylen)
{
    snprintf(key, keylen, "%s.%s", prefix, p->name);
    int64_t shape[REFDATA_MAX_DIMS];
    cr_assert_eq(refdata_shape(rd, key, shape), p->ndim, "%s missing or of another rank", key);
    for (int d = 0; d < p->ndim; d++) cr_assert_eq(shape[d], p->shape[d], "%s dim %d", key, d);
    size_t n = 0;
    const float *t = refdata_f32(rd, key, &n);
    cr_assert(t, "%s is not f32", key);
    cr_assert_eq(n, p->numel, "%s numel", key);
    return t;
}

void refdata_load_params(const refdata *rd, const kern_model *m, float *params)
{
    for (int i = 0; i < m->n_params; i++) {
        char key[96];
        const kern_param_info *p = &m->params[i];
        memcpy(params + p->offset, ref_param(rd, "param", p, key, sizeof key), p->numel * sizeof *params);
    }
}

void refdata_expect_grads(const refdata *rd, const kern_model *m, const float *grads, float atol, float rtol)
{
    for (int i = 0; i < m->n_params; i++) {
        char key[96];
        const kern_param_info *p = &m->params[i];
        const float *want = ref_param(rd, "grad", p, key, sizeof key);
        refdata_expect_close(key, grads + p->offset, want, p->numel, atol, rtol);
    }
}

const kern_class *refdata_model(const char *cls_name, int hidden, kern_model *m)
{
    const kern_class *cls = kern_expert_find(cls_name);
    cr_assert(cls, "no expert class %s", cls_name);
    kern_config cfg = {.hidden_dim = hidden};
    cr_assert_eq(cls->setup(m, &cfg), 0, "%s setup at hidden size %d", cls_name, hidden);
    cr_assert_eq(m->cls, cls);
    return cls;
}

/* ---- one expert class against one reference file ---- */

void refdata_case_open(refdata_case *c, const char *cls_name, const char *file)
{
    memset(c, 0, sizeof *c);
    c->rd = refdata_load(file);
    cr_assert(c->rd, "cannot load %s", file);
    int64_t shape[REFDATA_MAX_DIMS];
    cr_assert_eq(refdata_shape(c->rd, "input0", shape), 2);
    c->B = shape[0];
    c->cls = refdata_model(cls_name, (int)shape[1], &c->m);
    c->params = calloc(c->m.n_floats, sizeof *c->params);
    c->grads = calloc(c->m.n_floats, sizeof *c->grads);
    cr_assert(c->params && c->grads);
    refdata_load_params(c->rd, &c->m, c->params);
    for (int i = 0; i < c->m.n_in; i++) {
        char key[16];
        snprintf(key, sizeof key, "input%d", i);
        size_t n = 0;
        const float *f = refdata_f32(c->rd, key, &n);
        const uint8_t *u = f ? NULL : refdata_u8(c->rd, key, &n);
        cr_assert(f || u, "%s missing", key);
        cr_assert_eq(n, (size_t)c->B * kern_io_numel(&c->m.in[i]), "%s numel", key);
        cr_assert_eq(c->m.in[i].dtype, KERN_F32, "%s: only float32 inputs here", key);
        c->in[i] = malloc(n * sizeof *c->in[i]);   /* a u8 0/1 mask is stored as u8 or f32 */
        c->gin[i] = malloc(n * sizeof *c->gin[i]);
        cr_assert(c->in[i] && c->gin[i]);
        for (size_t j = 0; j < n; j++) c->in[i][j] = f ? f[j] : (float)u[j];
        c->n_in_elems[i] = n;
    }
    c->nx = c->n_in_elems[0];
    c->y = calloc(c->nx, sizeof *c->y);
    size_t wsn = c->cls->forward_ws(&c->m, c->B), wbn = c->cls->backward_ws(&c->m, c->B);
    c->ws = malloc((wsn > wbn ? wsn : wbn) * sizeof *c->ws);
    cr_assert(c->y && c->ws);
}

int refdata_case_forward(refdata_case *c, uint64_t seed)
{
    const void *in[KERN_MAX_IO];
    for (int i = 0; i < c->m.n_in; i++) in[i] = c->in[i];
    float *out[1] = {c->y};
    return c->cls->forward(&c->m, c->params, c->B, in, out, c->ws, seed);
}

int refdata_case_backward(refdata_case *c, int with_grad_in, uint64_t seed)
{
    const void *in[KERN_MAX_IO];
    for (int i = 0; i < c->m.n_in; i++) in[i] = c->in[i];
    const float *gout[1] = {refdata_f32(c->rd, "grad_output", NULL)};
    cr_assert(gout[0], "grad_output missing");
    return c->cls->backward(&c->m, c->params, c->B, in, gout, with_grad_in ? c->gin : NULL, c->grads, c->ws, seed);
}

void refdata_case_check(refdata_case *c, float atol, float rtol, uint64_t seed)
{
    const float *want_y = refdata_f32(c->rd, "output", NULL), *want_gx = refdata_f32(c->rd, "grad_input0", NULL);
    cr_assert(want_y && want_gx, "output or grad_input0 missing");
    cr_assert_eq(refdata_case_forward(c, seed), 0);
    refdata_expect_close("output", c->y, want_y, c->nx, atol, rtol);
    memset(c->grads, 0xff, c->m.n_floats * sizeof *c->grads);   /* NaN: every gradient must be overwritten */
    for (int i = 0; i < c->m.n_in; i++) memset(c->gin[i], 0xff, c->n_in_elems[i] * sizeof *c->gin[i]);
    cr_assert_eq(refdata_case_backward(c, 1, seed), 0);
    refdata_expect_close("grad_input0", c->gin[0], want_gx, c->nx, atol, rtol);
    refdata_expect_grads(c->rd, &c->m, c->grads, atol, rtol);
    if (c->cls->backward_inputs && c->cls->backward_params) refdata_case_check_stages(c, atol, rtol, seed);
}

void refdata_case_check_stages(refdata_case *c, float atol, float rtol, uint64_t seed)
{
    const float *want_gx = refdata_f32(c->rd, "grad_input0", NULL);
    const float *gout[1] = {refdata_f32(c->rd, "grad_output", NULL)};
    cr_assert(want_gx && gout[0], "grad_input0 or grad_output missing");
    const void *in[KERN_MAX_IO];
    for (int i = 0; i < c->m.n_in; i++) in[i] = c->in[i];
    size_t nbytes = c->m.n_floats * sizeof *c->grads;
    float *whole = malloc(nbytes), *gx_whole = malloc(c->nx * sizeof(float));
    cr_assert(whole && gx_whole);
    cr_assert_eq(refdata_case_backward(c, 1, seed), 0);
    memcpy(whole, c->grads, nbytes);
    memcpy(gx_whole, c->gin[0], c->nx * sizeof(float));
    memset(c->grads, 0xff, nbytes);
    for (int i = 0; i < c->m.n_in; i++) memset(c->gin[i], 0xff, c->n_in_elems[i] * sizeof *c->gin[i]);
    cr_assert_eq(c->cls->backward_inputs(&c->m, c->params, c->B, in, NULL, gout, c->gin, c->grads, c->ws, seed), 0);
    refdata_expect_close("grad_input0 after the first stage", c->gin[0], want_gx, c->nx, atol, rtol);
    cr_assert_eq(c->cls->backward_params(&c->m, c->B, in, gout, c->grads, c->ws), 0);
    refdata_expect_grads(c->rd, &c->m, c->grads, atol, rtol);
    cr_assert_eq(memcmp(c->grads, whole, nbytes), 0, "the two stages give the whole backward's gradients");
    cr_assert_eq(memcmp(c->gin[0], gx_whole, c->nx * sizeof(float)), 0, "and its grad_input0");
    free(whole);
    free(gx_whole);
}

void refdata_case_close(refdata_case *c)
{
    for (int i = 0; i < KERN_MAX_IO; i++) {
        free(c->in[i]);
        free(c->gin[i]);
    }
    free(c->ws);
    free(c->y);
    free(c->grads);
    free(c->params);
    refdata_free(c->rd);
}
