/* wire_msg.c -- decoding and encoding the protocol's messages (wire_msg.h, wire/PROTOCOL.md).
 *
 * Owns the decoded message: the frame bytes and the msgpack zone holding the object tree. Frames come
 * in from the connection actor (out of wire_frame_feed), decoded messages go to whoever dispatches
 * them; replies and requests leave as wire_out messages built here or by the caller on wire_out_pk.
 *
 * Decoding a frame, in order:
 *   1. msg_check walks the raw msgpack bytes once WITHOUT allocating and rejects anything msgpack-c
 *      would either choke on or allocate too much for: truncated objects, nesting deeper than
 *      WIRE_MAX_DEPTH, an array or map announcing more elements than bytes remain (every element
 *      takes at least one byte, a map pair two), ext types, the reserved byte 0xc1, a top level that is
 *      not a map, and bytes after the one top-level object. This bounds msgpack-c's up-front
 *      `count * sizeof(msgpack_object)` allocations by the frame size. It also counts the objects:
 *      a message of more than the caller's max_objects is refused before msgpack-c allocates its
 *      tree (a 32 MiB frame of nils would otherwise decode to 768 MiB).
 *   2. msgpack_unpack into the message's own zone; strings and bins keep pointing into the frame.
 *   3. The envelope: "id" (uint), then "method" (request), "error" (error reply) or "result".
 * Field accessors (wire_map_get, wire_get_*) and wire_tensor_decode read the tree; they never copy
 * tensor bytes. Encoding helpers pack onto a wire_out; tensor bytes are referenced, not copied.
 *
 * Any thread, no shared state: a wire_msg belongs to one thread at a time.
 */
#include "wire/wire_msg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"

/* Zone chunk: enough for the object tree of a typical request in one chunk. */
#define MSG_ZONE_CHUNK 4096

/* ---- the structural pre-validator ------------------------------------------------------------- */

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* msg_check validates that p[len] is exactly one msgpack map obeying the limits above. Returns 0 or
 * DMOE_EPROTO with err filled. Uses a fixed stack of WIRE_MAX_DEPTH counters; allocates nothing. */
static int msg_check(const uint8_t *p, size_t len, size_t *objects, char *err, size_t errlen)
{
    uint64_t rem[WIRE_MAX_DEPTH]; /* elements still expected by each open container */
    int depth = 0;
    size_t pos = 0;
    size_t count = 0;

    if (len == 0) {
        dmoe_set_err(err, errlen, "empty frame");
        return DMOE_EPROTO;
    }
    if (!((p[0] >= 0x80 && p[0] <= 0x8f) || p[0] == 0xde || p[0] == 0xdf)) {
        dmoe_set_err(err, errlen, "top-level object is not a map (first byte 0x%02x)", p[0]);
        return DMOE_EPROTO;
    }
    for (;;) {
        if (pos >= len) {
            dmoe_set_err(err, errlen, "truncated msgpack at byte %zu", pos);
            return DMOE_EPROTO;
        }
        size_t at = pos;
        uint8_t b = p[pos++];
        count++;
        uint64_t payload = 0;     /* bytes that follow the header (scalars, str, bin) */
        uint64_t items = 0;       /* elements of a container (map: 2 per pair) */
        int container = 0;
        int lenbytes = 0;         /* str/bin/array/map: size of the length field */

        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            payload = 0;
        } else if (b <= 0x8f) {
            container = 1;
            items = 2u * (uint64_t)(b & 0x0f);
        } else if (b <= 0x9f) {
            container = 1;
            items = b & 0x0f;
        } else if (b <= 0xbf) {
            payload = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;             /* bin8, str8 */
            case 0xc5: case 0xda: lenbytes = 2; break;             /* bin16, str16 */
            case 0xc6: case 0xdb: lenbytes = 4; break;             /* bin32, str32 */
            case 0xca: payload = 4; break;                         /* float32 */
            case 0xcb: payload = 8; break;                         /* float64 */
            case 0xcc: case 0xd0: payload = 1; break;
            case 0xcd: case 0xd1: payload = 2; break;
            case 0xce: case 0xd2: payload = 4; break;
            case 0xcf: case 0xd3: payload = 8; break;
            case 0xdc: container = 1; lenbytes = 2; break;         /* array16 */
            case 0xdd: container = 1; lenbytes = 4; break;         /* array32 */
            case 0xde: container = 2; lenbytes = 2; break;         /* map16 */
            case 0xdf: container = 2; lenbytes = 4; break;         /* map32 */
            case 0xc7: case 0xc8: case 0xc9:
            case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
                dmoe_set_err(err, errlen, "msgpack ext type 0x%02x at byte %zu is not allowed", b, at);
                return DMOE_EPROTO;
            default:
                dmoe_set_err(err, errlen, "invalid msgpack byte 0x%02x at byte %zu", b, at);
                return DMOE_EPROTO;
            }
            if (lenbytes) {
                if ((size_t)lenbytes > len - pos) {
                    dmoe_set_err(err, errlen, "truncated msgpack length at byte %zu", at);
                    return DMOE_EPROTO;
                }
                uint64_t n = get_be(p + pos, lenbytes);
                pos += (size_t)lenbytes;
                if (container == 2) items = 2 * n;
                else if (container == 1) items = n;
                else payload = n;
            }
        }

        if (container) {
            if (items > len - pos) {
                dmoe_set_err(err, errlen, "msgpack %s at byte %zu announces %llu elements, only %zu bytes left",
                        (b >= 0x90 && b <= 0x9f) || b == 0xdc || b == 0xdd ? "array" : "map", at,
                        (unsigned long long)items, len - pos);
                return DMOE_EPROTO;
            }
            if (items > 0) {
                if (depth == WIRE_MAX_DEPTH) {
                    dmoe_set_err(err, errlen, "msgpack nested deeper than %d at byte %zu", WIRE_MAX_DEPTH, at);
                    return DMOE_EPROTO;
                }
                rem[depth++] = items;
                continue;
            }
        } else if (payload > len - pos) {
            dmoe_set_err(err, errlen, "truncated msgpack value at byte %zu", at);
            return DMOE_EPROTO;
        } else {
            pos += (size_t)payload;
        }

        /* One object is complete: close every container it completes. */
        while (depth > 0 && --rem[depth - 1] == 0) depth--;
        if (depth == 0) break;
    }
    if (pos != len) {
        dmoe_set_err(err, errlen, "%zu trailing bytes after the msgpack map", len - pos);
        return DMOE_EPROTO;
    }
    *objects = count;
    return 0;
}

int wire_msg_count(const uint8_t *p, size_t len, size_t *objects, char *err, size_t errlen)
{
    return msg_check(p, len, objects, err, errlen);
}

size_t wire_msg_decode_cost(size_t objects)
{
    /* msgpack-c takes count * 24 bytes per container from the zone; a request the current chunk cannot
     * hold gets a chunk of the next power-of-two multiple of MSG_ZONE_CHUNK, at most twice its size */
    return 2 * objects * sizeof(msgpack_object) + MSG_ZONE_CHUNK + sizeof(wire_msg) + 256;
}

/* ---- field access ------------------------------------------------------------------------------ */

const msgpack_object *wire_map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen && memcmp(k->via.str.ptr, key, klen) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

int wire_get_str(const msgpack_object *o, char *buf, size_t cap)
{
    if (!o || o->type != MSGPACK_OBJECT_STR) return DMOE_EINVAL;
    size_t n = o->via.str.size;
    if (n && memchr(o->via.str.ptr, 0, n)) return DMOE_EINVAL;
    if (cap == 0 || n > cap - 1) return DMOE_ETOOBIG;
    if (n) memcpy(buf, o->via.str.ptr, n);
    buf[n] = 0;
    return 0;
}

int wire_get_i64(const msgpack_object *o, int64_t *out)
{
    if (!o) return DMOE_EINVAL;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX) return DMOE_EINVAL;
        *out = (int64_t)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return 0;
    }
    return DMOE_EINVAL;
}

int wire_get_f64(const msgpack_object *o, double *out)
{
    if (!o) return DMOE_EINVAL;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return 0;
    default: return DMOE_EINVAL;
    }
}

/* utf8_cut returns the largest n' <= n such that s[0..n') does not end inside a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t n, size_t full)
{
    if (n >= full) return full;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    return n;
}

/* ---- decoding ---------------------------------------------------------------------------------- */

/* decode_error reads an error object {"code": uint, "message": str} into m. */
static int decode_error(const msgpack_object *e, wire_msg *m, char *err, size_t errlen)
{
    if (e->type != MSGPACK_OBJECT_MAP) {
        dmoe_set_err(err, errlen, "\"error\" is not a map");
        return DMOE_EINVAL;
    }
    const msgpack_object *code = wire_map_get(e, "code");
    int64_t c;
    if (!code || wire_get_i64(code, &c) != 0) {
        dmoe_set_err(err, errlen, "\"error\" has no integer \"code\"");
        return DMOE_EINVAL;
    }
    if (c < 0) c = -c; /* tolerate a peer sending the negative form */
    if (c == 0 || c > 1000000) {
        dmoe_set_err(err, errlen, "\"error\" code %lld out of range", (long long)c);
        return DMOE_EINVAL;
    }
    m->err_code = -(int)c;
    const msgpack_object *msg = wire_map_get(e, "message");
    if (msg && msg->type == MSGPACK_OBJECT_STR) {
        size_t n = utf8_cut(msg->via.str.ptr, sizeof m->err_msg - 1, msg->via.str.size);
        memcpy(m->err_msg, msg->via.str.ptr, n);
        m->err_msg[n] = 0;
        for (size_t i = 0; i < n; i++)
            if (m->err_msg[i] == 0) m->err_msg[i] = '?';
    } else if (msg && msg->type != MSGPACK_OBJECT_NIL) {
        dmoe_set_err(err, errlen, "\"error\" \"message\" is not a string");
        return DMOE_EINVAL;
    }
    return 0;
}

int wire_msg_decode(uint8_t *frame, size_t len, wire_msg *m, char *err, size_t errlen)
{
    return wire_msg_decode_max(frame, len, WIRE_MAX_OBJECTS, m, err, errlen);
}

int wire_msg_decode_max(uint8_t *frame, size_t len, size_t max_objects, wire_msg *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    size_t objects = 0;
    int rc = msg_check(frame, len, &objects, err, errlen);
    if (rc == 0 && objects > max_objects) {
        dmoe_set_err(err, errlen, "message of %zu msgpack objects, at most %zu accepted", objects, max_objects);
        rc = DMOE_ETOOBIG;
    }
    if (rc) {
        free(frame);
        return rc;
    }
    if (!msgpack_zone_init(&m->zone, MSG_ZONE_CHUNK)) {
        free(frame);
        dmoe_set_err(err, errlen, "out of memory");
        return DMOE_ENOMEM;
    }
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack((const char *)frame, len, &off, &m->zone, &m->root);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len || m->root.type != MSGPACK_OBJECT_MAP) {
        rc = ur == MSGPACK_UNPACK_NOMEM_ERROR ? DMOE_ENOMEM : DMOE_EPROTO;
        dmoe_set_err(err, errlen, "%s", rc == DMOE_ENOMEM ? "out of memory" : "msgpack unpack failed");
        goto fail;
    }

    const msgpack_object *id = wire_map_get(&m->root, "id");
    if (!id || id->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        dmoe_set_err(err, errlen, id ? "\"id\" is not an unsigned integer" : "missing \"id\"");
        rc = DMOE_EINVAL;
        goto fail;
    }
    m->id = id->via.u64;

    const msgpack_object *method = wire_map_get(&m->root, "method");
    const msgpack_object *error = wire_map_get(&m->root, "error");
    const msgpack_object *result = wire_map_get(&m->root, "result");
    if (method) {
        rc = wire_get_str(method, m->method, sizeof m->method);
        if (rc == 0 && m->method[0] == 0) rc = DMOE_EINVAL;
        if (rc) {
            dmoe_set_err(err, errlen, "\"method\" must be a non-empty string of at most %zu bytes",
                    sizeof m->method - 1);
            rc = DMOE_EINVAL;
            goto fail;
        }
        m->kind = WIRE_REQUEST;
    } else if (error && error->type != MSGPACK_OBJECT_NIL) {
        rc = decode_error(error, m, err, errlen);
        if (rc) goto fail;
        m->kind = WIRE_REPLY_ERR;
    } else if (result) {
        m->kind = WIRE_REPLY_OK;
        m->result = result;
    } else {
        dmoe_set_err(err, errlen, "map has none of \"method\", \"result\", \"error\"");
        rc = DMOE_EINVAL;
        goto fail;
    }
    m->frame = frame;
    m->objects = objects;
    return 0;

fail:;
    uint64_t keep_id = m->id;
    msgpack_zone_destroy(&m->zone);
    free(frame);
    memset(m, 0, sizeof *m);
    m->id = keep_id;
    return rc;
}

void wire_msg_free(wire_msg *m)
{
    if (!m || !m->frame) return;
    msgpack_zone_destroy(&m->zone);
    free(m->frame);
    memset(m, 0, sizeof *m);
}

/* ---- tensors ----------------------------------------------------------------------------------- */

const char *wire_dtype_name(wire_dtype d)
{
    switch (d) {
    case WIRE_DT_F32: return "float32";
    case WIRE_DT_U8: return "uint8";
    case WIRE_DT_F16: return "float16";
    case WIRE_DT_I64: return "int64";
    case WIRE_DT_BOOL: return "bool";
    }
    return "unknown";
}

int wire_dtype_parse(const char *s, size_t n, wire_dtype *out)
{
    static const struct { const char *name; wire_dtype d; } tab[] = {
        { "float32", WIRE_DT_F32 }, { "uint8", WIRE_DT_U8 }, { "float16", WIRE_DT_F16 },
        { "int64", WIRE_DT_I64 },   { "bool", WIRE_DT_BOOL },
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
        if (strlen(tab[i].name) == n && memcmp(tab[i].name, s, n) == 0) {
            *out = tab[i].d;
            return 0;
        }
    }
    return DMOE_EINVAL;
}

size_t wire_dtype_size(wire_dtype d)
{
    switch (d) {
    case WIRE_DT_F32: return 4;
    case WIRE_DT_U8: return 1;
    case WIRE_DT_F16: return 2;
    case WIRE_DT_I64: return 8;
    case WIRE_DT_BOOL: return 1;
    }
    return 0;
}

int wire_tensor_decode(const msgpack_object *o, wire_tensor *t, char *err, size_t errlen)
{
    wire_tensor r;
    memset(&r, 0, sizeof r);
    if (!o || o->type != MSGPACK_OBJECT_MAP) {
        dmoe_set_err(err, errlen, "tensor is not a map");
        return DMOE_EINVAL;
    }
    const msgpack_object *dt = wire_map_get(o, "dtype");
    if (!dt || dt->type != MSGPACK_OBJECT_STR) {
        dmoe_set_err(err, errlen, "tensor has no string \"dtype\"");
        return DMOE_EINVAL;
    }
    if (wire_dtype_parse(dt->via.str.ptr, dt->via.str.size, &r.dtype) != 0) {
        dmoe_set_err(err, errlen, "unknown dtype \"%.*s\"", (int)(dt->via.str.size > 32 ? 32 : dt->via.str.size),
                dt->via.str.ptr);
        return DMOE_EINVAL;
    }
    const msgpack_object *comp = wire_map_get(o, "compression");
    r.compression = WIRE_COMP_NONE;
    if (comp && comp->type != MSGPACK_OBJECT_NIL) {
        char name[32];
        if (comp->type != MSGPACK_OBJECT_STR || comp->via.str.size >= sizeof name) {
            dmoe_set_err(err, errlen, "tensor \"compression\" is not a scheme name");
            return DMOE_EINVAL;
        }
        memcpy(name, comp->via.str.ptr, comp->via.str.size);
        name[comp->via.str.size] = '\0';
        if (wire_compress_parse(name, &r.compression) != 0) {
            dmoe_set_err(err, errlen, "unknown tensor compression \"%s\"", name);
            return DMOE_EINVAL;
        }
        if (r.compression != WIRE_COMP_NONE && r.dtype != WIRE_DT_F32) {
            dmoe_set_err(err, errlen, "only float32 tensors can be compressed");
            return DMOE_EINVAL;
        }
    }

    const msgpack_object *sh = wire_map_get(o, "shape");
    if (!sh || sh->type != MSGPACK_OBJECT_ARRAY) {
        dmoe_set_err(err, errlen, "tensor has no array \"shape\"");
        return DMOE_EINVAL;
    }
    if (sh->via.array.size > WIRE_MAX_NDIM) {
        dmoe_set_err(err, errlen, "tensor has %u dims, at most %d allowed", sh->via.array.size, WIRE_MAX_NDIM);
        return DMOE_ETOOBIG;
    }
    size_t itemsize = wire_dtype_size(r.dtype);
    size_t numel = 1;
    int overflow = 0;
    r.ndim = (int)sh->via.array.size;
    for (int i = 0; i < r.ndim; i++) {
        const msgpack_object *d = &sh->via.array.ptr[i];
        if (d->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            dmoe_set_err(err, errlen, "tensor dim %d is negative", i);
            return DMOE_EINVAL;
        }
        if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            dmoe_set_err(err, errlen, "tensor dim %d is not an integer", i);
            return DMOE_EINVAL;
        }
        if (d->via.u64 > (uint64_t)INT64_MAX || d->via.u64 > SIZE_MAX) {
            overflow = 1;
        } else {
            size_t dim = (size_t)d->via.u64;
            if (dim != 0 && numel > SIZE_MAX / dim) overflow = 1;
            else numel *= dim;
        }
        r.shape[i] = (int64_t)(d->via.u64 > (uint64_t)INT64_MAX ? INT64_MAX : d->via.u64);
    }
    /* A zero dim makes the product 0 even when another dim is huge; still reject absurd dims. */
    if (overflow || numel > SIZE_MAX / itemsize) {
        dmoe_set_err(err, errlen, "tensor element count overflows");
        return DMOE_ETOOBIG;
    }
    const msgpack_object *data = wire_map_get(o, "data");
    if (!data || data->type != MSGPACK_OBJECT_BIN) {
        dmoe_set_err(err, errlen, "tensor has no bin \"data\"");
        return DMOE_EINVAL;
    }
    if (r.compression == WIRE_COMP_NONE && (size_t)data->via.bin.size != numel * itemsize) {
        dmoe_set_err(err, errlen, "tensor data has %u bytes, shape and dtype say %zu", data->via.bin.size,
                numel * itemsize);
        return DMOE_ESHAPE;
    }
    r.numel = numel;
    r.data = (const uint8_t *)data->via.bin.ptr;
    r.nbytes = data->via.bin.size;
    *t = r;
    return 0;
}

size_t wire_tensor_rows(const wire_tensor *t)
{
    if (t->ndim <= 1 || t->shape[t->ndim - 1] == 0) return 1;
    return t->numel / (size_t)t->shape[t->ndim - 1];
}

int wire_tensor_f32(const wire_tensor *t, float *out)
{
    if (t->dtype != WIRE_DT_F32) return DMOE_ESHAPE;
    if (t->compression == WIRE_COMP_NONE) {
        memcpy(out, t->data, t->numel * sizeof(float));
        return 0;
    }
    return wire_decompress_rows(t->compression, t->data, t->nbytes, t->numel, wire_tensor_rows(t), out) == 0
               ? 0 : DMOE_EPROTO;
}

int wire_tensor_pack(wire_out *o, const wire_tensor *t, wire_ref_cleanup cleanup, void *arg)
{
    msgpack_packer *pk = wire_out_pk(o);
    msgpack_pack_map(pk, t->compression != WIRE_COMP_NONE ? 4 : 3);
    if (t->compression != WIRE_COMP_NONE) {
        wire_pack_str(pk, "compression");
        wire_pack_str(pk, wire_compress_name(t->compression));
    }
    wire_pack_str(pk, "dtype");
    wire_pack_str(pk, wire_dtype_name(t->dtype));
    wire_pack_str(pk, "shape");
    msgpack_pack_array(pk, (size_t)t->ndim);
    for (int i = 0; i < t->ndim; i++) msgpack_pack_int64(pk, t->shape[i]);
    wire_pack_str(pk, "data");
    return wire_out_bin_ref(o, t->data, t->nbytes, cleanup, arg);
}

/* ---- building messages ------------------------------------------------------------------------- */

void wire_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void wire_reply_begin(wire_out *o, uint64_t id)
{
    msgpack_packer *pk = wire_out_pk(o);
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, "id");
    msgpack_pack_uint64(pk, id);
    wire_pack_str(pk, "result");
}

wire_out *wire_error_reply(uint64_t id, int code, const char *msg)
{
    wire_out *o = wire_out_new();
    if (!o) return NULL;
    if (code < 0) code = -code;
    if (code == 0) code = -DMOE_EINTERNAL; /* an error reply must carry an error */
    if (!msg) msg = dmoe_strerror(code);
    size_t n = utf8_cut(msg, WIRE_MAX_STR - 1, strlen(msg));
    msgpack_packer *pk = wire_out_pk(o);
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, "id");
    msgpack_pack_uint64(pk, id);
    wire_pack_str(pk, "error");
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, "code");
    msgpack_pack_int(pk, code);
    wire_pack_str(pk, "message");
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, msg, n);
    return o;
}

void wire_request_begin(wire_out *o, uint64_t id, const char *method, uint32_t n_fields)
{
    msgpack_packer *pk = wire_out_pk(o);
    msgpack_pack_map(pk, n_fields);
    wire_pack_str(pk, "id");
    msgpack_pack_uint64(pk, id);
    wire_pack_str(pk, "method");
    wire_pack_str(pk, method);
}
