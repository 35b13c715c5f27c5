/* test_safetensors.c -- runtime/rt_safetensors.c: the exact bytes the writer produces, round trips,
 * files laid out by hand the way Python's safetensors (the Rust writer) lays them out, every kind of
 * corruption refused with its code and message, the sticky-error writer under a file-size limit, and
 * the checkpoint folder helpers. Each test works in its own mkdtemp folder. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/rt_err.h"
#include "runtime/files/rt_safetensors.h"

/* stt_dir makes a fresh temporary folder; stt_rmdir removes it with its files. */
static char *stt_dir(void)
{
    static char d[64];
    snprintf(d, sizeof d, "/tmp/dmoe_st_XXXXXX");
    cr_assert_not_null(mkdtemp(d));
    return d;
}

static void stt_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[512];
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* stt_count_prefix returns how many entries of dir start with prefix. */
static int stt_count_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* stt_slurp reads a whole file into a malloc'd buffer. */
static uint8_t *stt_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    cr_assert_eq(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}

/* stt_raw writes a file: an 8-byte little-endian length hlen (as given, may lie), hdr, data. */
static void stt_raw(const char *path, uint64_t hlen, const char *hdr, size_t hdr_bytes, const void *data,
                    size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    uint8_t l[8];
    for (int i = 0; i < 8; i++) l[i] = (uint8_t)(hlen >> (8 * i));
    fwrite(l, 1, 8, f);
    if (hdr_bytes) fwrite(hdr, 1, hdr_bytes, f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

/* stt_file writes a well-framed file with header text hdr (padded with spaces to pad, if pad > 0). */
static void stt_file(const char *path, const char *hdr, size_t pad, const void *data, size_t n)
{
    char h[4096];
    size_t hl = strlen(hdr);
    cr_assert_lt(hl + 8, sizeof h);
    memcpy(h, hdr, hl);
    while (pad && hl % pad) h[hl++] = ' ';
    stt_raw(path, hl, h, hl, data, n);
}

/* stt_open_code opens path and returns the code, checking that a refusal explains itself and, when
 * want_msg is set, that the message mentions it. */
static int stt_open_code(const char *path, const char *want_msg)
{
    rt_st_file *f = NULL;
    char err[256] = "";
    int rc = rt_st_open(path, &f, err, sizeof err);
    if (rc == 0) {
        rt_st_close(f);
        return 0;
    }
    cr_assert_null(f, "untouched on failure");
    cr_assert(err[0], "a refusal explains itself");
    if (want_msg) cr_assert(strstr(err, want_msg), "message \"%s\" lacks \"%s\"", err, want_msg);
    return rc;
}

Test(safetensors, exact_bytes_and_round_trip, .timeout = 30)
{
    char *dir = stt_dir();
    float w[6] = {1, 2, 3, 4, 5, -6.5f};
    int64_t ids[2] = {-1, 1LL << 40};
    uint8_t mask[5] = {1, 0, 1, 1, 0};
    float scalar = 3.5f;
    rt_st_tensor t[5] = {
        {.name = "ffn.w1", .dtype = RT_ST_F32, .ndim = 2, .shape = {2, 3}, .data = w},
        {.name = "step", .dtype = RT_ST_I64, .ndim = 1, .shape = {2}, .data = ids},
        {.name = "mask", .dtype = RT_ST_U8, .ndim = 1, .shape = {5}, .data = mask},
        {.name = "scale", .dtype = RT_ST_F32, .ndim = 0, .data = &scalar},
        {.name = "empty", .dtype = RT_ST_F32, .ndim = 2, .shape = {0, 4}, .data = NULL},
    };
    rt_st_kv meta[2] = {{"format", "pt"}, {"note", "a \"quoted\"\nline"}};
    char err[256] = "";
    cr_assert_eq(rt_st_write(dir, "step-7.safetensors", t, 5, meta, 2, err, sizeof err), 0, "%s", err);
    cr_assert_eq(stt_count_prefix(dir, "tmp-"), 0, "no temporary file left");
    char path[256];
    snprintf(path, sizeof path, "%s/step-7.safetensors", dir);
    size_t n;
    uint8_t *b = stt_slurp(path, &n);
    const char *want = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"a \\\"quoted\\\"\\nline\"},"
                       "\"ffn.w1\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                       "\"step\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[24,40]},"
                       "\"mask\":{\"dtype\":\"U8\",\"shape\":[5],\"data_offsets\":[40,45]},"
                       "\"scale\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[45,49]},"
                       "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[49,49]}}";
    size_t wl = strlen(want), hl = (wl + 7) / 8 * 8;
    uint64_t got_hl = 0;
    for (int i = 0; i < 8; i++) got_hl |= (uint64_t)b[i] << (8 * i);
    cr_assert_eq(got_hl, hl, "the header length counts the padding: %llu", (unsigned long long)got_hl);
    cr_assert_eq(memcmp(b + 8, want, wl), 0, "header:\n%.*s", (int)hl, (const char *)b + 8);
    for (size_t i = wl; i < hl; i++) cr_assert_eq(b[8 + i], ' ', "padded with spaces");
    cr_assert_eq(n, 8 + hl + 49);
    cr_assert_eq(memcmp(b + 8 + hl, w, 24), 0, "data in order, little-endian");
    free(b);

    rt_st_file *f = NULL;
    cr_assert_eq(rt_st_open(path, &f, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rt_st_count(f), 5);
    cr_assert_str_eq(rt_st_at(f, 0)->name, "ffn.w1", "header order");
    cr_assert_null(rt_st_at(f, 5));
    cr_assert_str_eq(rt_st_meta(f, "format"), "pt");
    cr_assert_str_eq(rt_st_meta(f, "note"), "a \"quoted\"\nline", "escapes decoded");
    cr_assert_null(rt_st_meta(f, "missing"));
    cr_assert_eq(rt_st_meta_count(f), 2);
    cr_assert_str_eq(rt_st_meta_at(f, 1)->key, "note");
    const rt_st_tensor *s = rt_st_find(f, "step");
    cr_assert_not_null(s);
    cr_assert_eq(s->dtype, RT_ST_I64);
    cr_assert_eq(s->nbytes, 16);
    int64_t ids2[2];
    memcpy(ids2, s->data, 16);
    cr_assert_eq(ids2[1], 1LL << 40);
    cr_assert_eq(rt_st_find(f, "scale")->ndim, 0);
    cr_assert_eq(rt_st_find(f, "empty")->nbytes, 0);
    cr_assert_null(rt_st_find(f, "nope"));
    float w2[6];
    int64_t shp[2] = {2, 3}, bad[2] = {3, 2};
    cr_assert_eq(rt_st_copy(f, "ffn.w1", RT_ST_F32, 2, shp, w2, sizeof w2, err, sizeof err), 0);
    cr_assert_arr_eq(w2, w, sizeof w);
    cr_assert_eq(rt_st_copy(f, "ffn.w1", RT_ST_F32, 2, bad, w2, sizeof w2, err, sizeof err), DMOE_ESHAPE);
    cr_assert_eq(rt_st_copy(f, "ffn.w1", RT_ST_I64, 2, shp, w2, sizeof w2, err, sizeof err), DMOE_ESHAPE);
    cr_assert_eq(rt_st_copy(f, "ffn.w1", RT_ST_F32, 2, shp, w2, 20, err, sizeof err), DMOE_EINVAL);
    cr_assert_eq(rt_st_copy(f, "ffn.w9", RT_ST_F32, 2, shp, w2, sizeof w2, err, sizeof err), DMOE_ENOTFOUND);
    rt_st_close(f);
    rt_st_close(NULL);

    /* no tensors, no metadata: "{}" padded to 8 */
    cr_assert_eq(rt_st_write(dir, "empty.safetensors", NULL, 0, NULL, 0, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/empty.safetensors", dir);
    b = stt_slurp(path, &n);
    cr_assert_eq(n, 16);
    cr_assert_eq(memcmp(b + 8, "{}      ", 8), 0);
    free(b);
    cr_assert_eq(stt_open_code(path, NULL), 0);
    stt_rmdir(dir);
}

Test(safetensors, python_layout_loads, .timeout = 30)
{
    char *dir = stt_dir();
    char path[256];
    snprintf(path, sizeof path, "%s/py.safetensors", dir);
    /* what safetensors.torch.save_file({"a": f32[2], "b": i64[1], "caf\u00e9": u8[3]}, metadata=
     * {"format": "pt"}) writes: compact serde_json, __metadata__ first, tensors sorted by alignment then
     * name (so I64 first), non-ASCII raw UTF-8, the header padded with spaces to a multiple of 8. */
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                      "\"caf\xc3\xa9\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[16,19]}}";
    uint8_t data[19];
    int64_t bv = -42;
    float av[2] = {0.25f, -8.0f};
    memcpy(data, &bv, 8);
    memcpy(data + 8, av, 8);
    data[16] = 7, data[17] = 8, data[18] = 9;
    stt_file(path, hdr, 8, data, sizeof data);
    rt_st_file *f = NULL;
    char err[256] = "";
    cr_assert_eq(rt_st_open(path, &f, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rt_st_count(f), 3);
    float a2[2];
    int64_t two = 2;
    cr_assert_eq(rt_st_copy(f, "a", RT_ST_F32, 1, &two, a2, sizeof a2, err, sizeof err), 0, "%s", err);
    cr_assert_arr_eq(a2, av, sizeof av);
    const rt_st_tensor *c = rt_st_find(f, "caf\xc3\xa9");
    cr_assert_not_null(c);
    cr_assert_eq(((const uint8_t *)c->data)[2], 9);
    cr_assert_eq(((uintptr_t)rt_st_find(f, "b")->data - (uintptr_t)rt_st_at(f, 0)->data), 0);
    rt_st_close(f);

    /* pretty-printed, escaped names (\u00e9, a surrogate pair, \" and \/), no padding, no metadata */
    const char *pretty = "{\n  \"caf\\u00e9\" : {\"data_offsets\": [0, 4], \"shape\": [1], \"dtype\": \"F32\"},\r\n"
                         "\t\"\\ud83d\\ude00\\\"x\\/\": {\"dtype\": \"U8\", \"shape\": [ ], \"data_offsets\": [4, 5]}\n}\n";
    uint8_t d2[5] = {0, 0, 128, 63, 200};
    stt_file(path, pretty, 0, d2, 5);
    cr_assert_eq(rt_st_open(path, &f, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(rt_st_find(f, "caf\xc3\xa9"));
    const rt_st_tensor *e = rt_st_find(f, "\xf0\x9f\x98\x80\"x/");
    cr_assert_not_null(e, "surrogate pair decoded to UTF-8");
    cr_assert_eq(*(const uint8_t *)e->data, 200);
    rt_st_close(f);
    stt_rmdir(dir);
}

Test(safetensors, corruptions_refused, .timeout = 30)
{
    char *dir = stt_dir();
    char path[256];
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    uint8_t z[64] = {0};
    const char *ok1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    /* sanity: the base case loads */
    stt_file(path, ok1, 8, z, 8);
    cr_assert_eq(stt_open_code(path, NULL), 0);

    /* truncated: empty file, inside the length, inside the header, inside the data */
    FILE *fp = fopen(path, "wb");
    fclose(fp);
    cr_assert_eq(stt_open_code(path, "truncated"), DMOE_EPROTO);
    stt_raw(path, 5, NULL, 0, NULL, 0);
    cr_assert_eq(stt_open_code(path, "truncated"), DMOE_EPROTO);
    fp = fopen(path, "wb");
    fwrite("\x40\x00\x00", 1, 3, fp);
    fclose(fp);
    cr_assert_eq(stt_open_code(path, "truncated"), DMOE_EPROTO);
    stt_raw(path, 200, ok1, strlen(ok1), NULL, 0);
    cr_assert_eq(stt_open_code(path, "truncated"), DMOE_EPROTO);
    stt_file(path, ok1, 8, z, 7);
    cr_assert_eq(stt_open_code(path, "beyond"), DMOE_EPROTO);
    cr_assert_eq(stt_open_code("/nonexistent/dmoe.safetensors", NULL), DMOE_ENOTFOUND);

    /* header length huge */
    stt_raw(path, 1ull << 40, ok1, strlen(ok1), z, 8);
    cr_assert_eq(stt_open_code(path, "limit"), DMOE_ETOOBIG);
    stt_raw(path, UINT64_MAX, ok1, strlen(ok1), z, 8);
    cr_assert_eq(stt_open_code(path, "limit"), DMOE_ETOOBIG);
    stt_raw(path, RT_ST_MAX_HEADER + 1ull, ok1, strlen(ok1), z, 8);
    cr_assert_eq(stt_open_code(path, "limit"), DMOE_ETOOBIG);
    stt_raw(path, 0, NULL, 0, z, 8);
    cr_assert_eq(stt_open_code(path, "'{'"), DMOE_EPROTO);

    /* bad JSON, each with its message */
    static const struct {
        const char *hdr, *msg;
        int code;
    } bad[] = {
        {" {\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "'{'", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", "expected", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},}", "expected a string", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}x", "after the header", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", "not an integer", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", "negative", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", "leading zero", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":true,\"data_offsets\":[0,8]}}", "expected '['", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}}", "too large",
         DMOE_ETOOBIG},
        {"{\"a\":{\"dtype\":\"F\\x32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "unknown escape", DMOE_EPROTO},
        {"{\"a\\ud800\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "surrogate", DMOE_EPROTO},
        {"{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "\\u0000", DMOE_EPROTO},
        {"{\"a\x01\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "control", DMOE_EPROTO},
        {"{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "UTF-8", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", "unknown field", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", "missing \"data_offsets\"", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "duplicate",
         DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", "more than 2", DMOE_ETOOBIG},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", "needs 2", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]}}", "not supported", DMOE_EINVAL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", "more than 8",
         DMOE_ETOOBIG},
        {"{\"__metadata__\":{\"k\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         "not a string", DMOE_EPROTO},
        {"{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         "duplicate __metadata__ key", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", "duplicate tensor name", DMOE_EPROTO},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "empty tensor name", DMOE_EPROTO},
        /* offsets: reversed, out of range, overlapping, a hole, bytes left over */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", "reversed", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[56,64]}}", "beyond", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", "overlap", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", "hole", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "after the last tensor", DMOE_EPROTO},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", "hole", DMOE_EPROTO},
        /* dtype/shape against the offsets */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", "needs 12 bytes", DMOE_ESHAPE},
        {"{\"a\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,8]}}", "needs 16 bytes", DMOE_ESHAPE},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}", "overflow",
         DMOE_ETOOBIG},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t dlen = strstr(bad[i].hdr, "[12,20]") ? 20 : strstr(bad[i].hdr, "[4,12]") ? 12 : 8;
        stt_file(path, bad[i].hdr, 8, z, dlen);
        cr_assert_eq(stt_open_code(path, bad[i].msg), bad[i].code, "case %zu: %s", i, bad[i].hdr);
    }
    stt_rmdir(dir);
}

Test(safetensors, writer_refusals, .timeout = 30)
{
    char *dir = stt_dir();
    float v[2] = {1, 2};
    char err[256];
    rt_st_tensor t[2] = {{.name = "a", .dtype = RT_ST_F32, .ndim = 1, .shape = {2}, .data = v},
                         {.name = "a", .dtype = RT_ST_F32, .ndim = 1, .shape = {2}, .data = v}};
    cr_assert_eq(rt_st_write(dir, "x.safetensors", t, 2, NULL, 0, err, sizeof err), DMOE_EINVAL);
    cr_assert(strstr(err, "duplicate"));
    t[1].name = "__metadata__";
    cr_assert_eq(rt_st_write(dir, "x.safetensors", t, 2, NULL, 0, err, sizeof err), DMOE_EINVAL);
    t[1].name = "b";
    t[1].data = NULL;
    cr_assert_eq(rt_st_write(dir, "x.safetensors", t, 2, NULL, 0, err, sizeof err), DMOE_EINVAL);
    t[1].data = v;
    t[1].shape[0] = -2;
    cr_assert_eq(rt_st_write(dir, "x.safetensors", t, 2, NULL, 0, err, sizeof err), DMOE_EINVAL);
    t[1].shape[0] = 2;
    t[1].ndim = RT_ST_MAX_NDIM + 1;
    cr_assert_eq(rt_st_write(dir, "x.safetensors", t, 2, NULL, 0, err, sizeof err), DMOE_EINVAL);
    t[1].ndim = 1;
    t[1].dtype = (rt_st_dtype)7;
    cr_assert_eq(rt_st_write(dir, "x.safetensors", t, 2, NULL, 0, err, sizeof err), DMOE_EINVAL);
    t[1].dtype = RT_ST_F32;
    rt_st_kv m[2] = {{"k", "1"}, {"k", "2"}};
    cr_assert_eq(rt_st_write(dir, "x.safetensors", t, 2, m, 2, err, sizeof err), DMOE_EINVAL);
    cr_assert_eq(rt_st_write(dir, "a/b", t, 2, NULL, 0, err, sizeof err), DMOE_EINVAL);
    cr_assert_eq(rt_st_write("/nonexistent/dmoe", "x.safetensors", t, 2, NULL, 0, err, sizeof err), DMOE_ENOTFOUND);
    cr_assert_eq(stt_count_prefix(dir, "x."), 0, "nothing written");
    cr_assert_eq(rt_st_write(dir, "x.safetensors", t, 2, NULL, 0, err, sizeof err), 0, "%s", err);
    stt_rmdir(dir);
}

Test(safetensors, sticky_error_leaves_nothing, .timeout = 30)
{
    char *dir = stt_dir();
    char err[256] = "";
    float small[4] = {1, 2, 3, 4};
    rt_st_tensor t = {.name = "w", .dtype = RT_ST_F32, .ndim = 1, .shape = {4}, .data = small};
    cr_assert_eq(rt_st_write(dir, "step-1.safetensors", &t, 1, NULL, 0, err, sizeof err), 0, "%s", err);
    /* a file-size limit makes the writes fail part-way (this test runs in its own process) */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl, saved;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &saved), 0);
    rl = saved;
    rl.rlim_cur = 4096;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    size_t n = 100000;
    float *big = calloc(n, sizeof *big);
    rt_st_tensor tb[3] = {{.name = "a", .dtype = RT_ST_F32, .ndim = 1, .shape = {(int64_t)n}, .data = big},
                          {.name = "b", .dtype = RT_ST_F32, .ndim = 1, .shape = {(int64_t)n}, .data = big},
                          {.name = "c", .dtype = RT_ST_F32, .ndim = 1, .shape = {4}, .data = small}};
    int rc = rt_st_write(dir, "step-1.safetensors", tb, 3, NULL, 0, err, sizeof err);
    cr_assert_eq(rc, DMOE_EIO, "the first failed write is reported at the end: %d %s", rc, err);
    cr_assert(strstr(err, "write"), "%s", err);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    cr_assert_eq(stt_count_prefix(dir, "tmp-"), 0, "the temporary file is removed");
    /* the old checkpoint under the final name is untouched */
    char path[256];
    snprintf(path, sizeof path, "%s/step-1.safetensors", dir);
    rt_st_file *f = NULL;
    cr_assert_eq(rt_st_open(path, &f, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rt_st_count(f), 1);
    cr_assert_not_null(rt_st_find(f, "w"));
    rt_st_close(f);
    free(big);
    stt_rmdir(dir);
}

/* stt_touch creates an empty file dir/name. */
static void stt_touch(const char *dir, const char *name)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    fclose(f);
}

Test(safetensors, checkpoint_list_and_prune, .timeout = 30)
{
    char *dir = stt_dir();
    const char *names[] = {"step-1.safetensors", "step-2.safetensors", "step-10.safetensors",
                           "step-9.safetensors", "step-010.safetensors", "step-x.safetensors",
                           "step-.safetensors", "step-3.safetensors.tmp", "other-4.safetensors",
                           "step-99999999999999999999.safetensors", "tmp-abc123"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) stt_touch(dir, names[i]);
    int64_t steps[8];
    size_t count = 0;
    cr_assert_eq(rt_ckpt_list(dir, "step-", steps, 8, &count), 0);
    cr_assert_eq(count, 4, "only canonical step-<N>.safetensors count");
    int64_t want[4] = {10, 9, 2, 1};
    cr_assert_arr_eq(steps, want, sizeof want, "newest first");
    cr_assert_eq(rt_ckpt_list(dir, "step-", steps, 2, &count), 0);
    cr_assert_eq(count, 4, "the count is all found, even past cap");
    cr_assert_eq(rt_ckpt_list(dir, "other-", steps, 8, &count), 0);
    cr_assert_eq(count, 1);
    cr_assert_eq(steps[0], 4);
    char p[256];
    cr_assert_eq(rt_ckpt_path(dir, "step-", 12, p, sizeof p), 0);
    cr_assert(strstr(p, "/step-12.safetensors"));
    cr_assert_eq(rt_ckpt_path(dir, "step-", 12, p, 8), DMOE_ETOOBIG);
    cr_assert_eq(rt_ckpt_path(dir, "step-", -1, p, sizeof p), DMOE_EINVAL);

    size_t removed = 99;
    cr_assert_eq(rt_ckpt_prune(dir, "step-", 2, NULL, NULL, &removed), 0);
    cr_assert_eq(removed, 2);
    cr_assert_eq(rt_ckpt_list(dir, "step-", steps, 8, &count), 0);
    cr_assert_eq(count, 2);
    cr_assert_eq(steps[0], 10);
    cr_assert_eq(steps[1], 9);
    cr_assert_eq(stt_count_prefix(dir, "step-010"), 1, "non-canonical names are never deleted");
    cr_assert_eq(stt_count_prefix(dir, "other-4"), 1);
    cr_assert_eq(stt_count_prefix(dir, "tmp-"), 1);
    cr_assert_eq(rt_ckpt_prune(dir, "step-", 5, NULL, NULL, &removed), 0);
    cr_assert_eq(removed, 0, "keeping more than exist deletes nothing");
    cr_assert_eq(rt_ckpt_prune(dir, "step-", 0, NULL, NULL, &removed), 0);
    cr_assert_eq(removed, 2);
    cr_assert_eq(rt_ckpt_list(dir, "step-", steps, 8, &count), 0);
    cr_assert_eq(count, 0);
    cr_assert_eq(rt_ckpt_list("/nonexistent/dmoe", "step-", steps, 8, &count), DMOE_ENOTFOUND);
    stt_rmdir(dir);
}

Test(safetensors, fuzz_mutations, .timeout = 120)
{
    char *dir = stt_dir();
    float w[16];
    for (int i = 0; i < 16; i++) w[i] = (float)i;
    int64_t k[3] = {1, 2, 3};
    rt_st_tensor t[2] = {{.name = "w", .dtype = RT_ST_F32, .ndim = 2, .shape = {4, 4}, .data = w},
                         {.name = "k\\\"", .dtype = RT_ST_I64, .ndim = 1, .shape = {3}, .data = k}};
    rt_st_kv m = {"format", "pt"};
    char err[256];
    cr_assert_eq(rt_st_write(dir, "base.safetensors", t, 2, &m, 1, err, sizeof err), 0, "%s", err);
    char path[256], fz[256];
    snprintf(path, sizeof path, "%s/base.safetensors", dir);
    snprintf(fz, sizeof fz, "%s/fuzz.safetensors", dir);
    size_t n;
    uint8_t *base = stt_slurp(path, &n);
    uint8_t *b = malloc(n);
    uint64_t s = 7;
    int accepted = 0;
    for (int iter = 0; iter < 2000; iter++) {
        memcpy(b, base, n);
        int flips = 1 + iter % 4;
        for (int i = 0; i < flips; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(s >> 33) % (n < 200 ? n : 200);   /* the length and the header */
            b[at] = (uint8_t)(s >> 17);
        }
        size_t len = iter % 5 == 0 ? (size_t)(s >> 40) % (n + 1) : n;
        FILE *f = fopen(fz, "wb");
        fwrite(b, 1, len, f);
        fclose(f);
        rt_st_file *sf = NULL;
        if (rt_st_open(fz, &sf, err, sizeof err) == 0) {
            accepted++;
            for (size_t i = 0; i < rt_st_count(sf); i++) {
                const rt_st_tensor *x = rt_st_at(sf, i);
                volatile uint8_t sum = 0;   /* every accepted tensor's bytes are inside the file */
                for (size_t j = 0; j < x->nbytes; j++) sum = (uint8_t)(sum + ((const uint8_t *)x->data)[j]);
                (void)sum;
            }
            rt_st_close(sf);
        }
    }
    cr_log_info("fuzz: %d of 2000 mutated files still valid", accepted);
    free(b);
    free(base);
    stt_rmdir(dir);
}
