/* wire_msg.h -- decoding and encoding the protocol's messages: requests, replies, tensors
 * (wire/PROTOCOL.md is the normative description).
 *
 * Decoding: wire_msg_decode validates a frame body as one msgpack map with bounded depth and counts
 * (a count can never exceed the bytes left, so a hostile 10-byte frame cannot make msgpack-c allocate
 * gigabytes), unpacks it without copying (strings and bins point into the frame), and reads "id" and
 * "method" (requests) or "result"/"error" (replies). The frame buffer must outlive the decoded message:
 * wire_msg owns both and wire_msg_free releases both.
 *
 * Tensors on the wire: {"dtype": str, "shape": [uint...], "data": bin, "compression": str (optional,
 * default "NONE")}. dtype is "float32" (little-endian), "uint8", "float16", "int64" (little-endian) or
 * "bool" (one byte); a float32 tensor may be compressed
 * with one of hivemind's schemes (wire_compress.h), its data then holding that scheme's bytes.
 * wire_tensor_decode checks every field, the number of dims, that the element count does not
 * overflow, and for uncompressed data that the length equals numel * itemsize (compressed data is
 * checked by wire_tensor_f32, which decompresses).
 */
#ifndef DMOE_WIRE_MSG_H
#define DMOE_WIRE_MSG_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/codec/wire_compress.h"
#include "wire/wire_out.h"

#define WIRE_MAX_DEPTH   16      /* nesting depth of any message */
#define WIRE_MAX_NDIM    8       /* dims of a tensor */
#define WIRE_MAX_STR     4096    /* bytes of a method, uid, or error message we accept */
/* msgpack objects in one message: each costs sizeof(msgpack_object) (24 bytes) once decoded, 24 times
 * its smallest encoding (a nil is 1 byte), so the count is what bounds decoding memory. The default
 * fits a node's info reply for thousands of experts; a node's server takes requests with far fewer
 * (WIRE_MAX_REQ_OBJECTS: every request of the protocol needs a few hundred at most). */
#define WIRE_MAX_OBJECTS     ((size_t)1 << 20)
#define WIRE_MAX_REQ_OBJECTS ((size_t)1 << 14)

/* int64 and bool are taken for masks only (hivemind sends det_dropout's mask as int64, a transformer's
 * padding mask as bool): the node converts them to the expert's declared dtype on receipt. */
typedef enum { WIRE_DT_F32 = 0, WIRE_DT_U8 = 1, WIRE_DT_F16 = 2, WIRE_DT_I64 = 3, WIRE_DT_BOOL = 4 } wire_dtype;
/* A tensor's "compression": one of hivemind's schemes (wire/wire_compress.h); NONE is plain data. */
typedef wire_scheme wire_compression;
#define WIRE_COMP_NONE WIRE_SCHEME_NONE

typedef struct {
    wire_dtype dtype;
    wire_compression compression;
    int ndim;
    int64_t shape[WIRE_MAX_NDIM];
    size_t numel;
    const uint8_t *data;     /* into the frame: not aligned; read with memcpy */
    size_t nbytes;
} wire_tensor;

typedef enum { WIRE_REQUEST = 0, WIRE_REPLY_OK = 1, WIRE_REPLY_ERR = 2 } wire_kind;

typedef struct {
    wire_kind kind;
    uint64_t id;
    char method[32];            /* requests: the method name ("" otherwise) */
    msgpack_object root;        /* the whole map */
    const msgpack_object *result; /* WIRE_REPLY_OK: the "result" value */
    int err_code;               /* WIRE_REPLY_ERR: the code, as a negative DMOE_* value */
    char err_msg[256];          /* WIRE_REPLY_ERR: the message, truncated */
    size_t objects;             /* msgpack objects in the message (the map itself included) */
    /* private: */
    uint8_t *frame;
    msgpack_zone zone;
} wire_msg;

/* wire_msg_decode takes ownership of frame (malloc'd, len bytes) on success and on failure.
 * Returns 0 and fills *m, or DMOE_EPROTO (not one valid msgpack map, too deep, counts over the bytes
 * left, trailing bytes) or DMOE_EINVAL (a map without a uint "id", or a request whose "method" is not a
 * short string, or a reply with neither result nor error). err (errlen bytes) gets a human message.
 * On DMOE_EINVAL m->id is set when it could be read (so an error reply can carry it), else 0. */
int wire_msg_decode(uint8_t *frame, size_t len, wire_msg *m, char *err, size_t errlen);
/* wire_msg_decode_max is wire_msg_decode refusing (DMOE_ETOOBIG, before anything is allocated) a
 * message of more than max_objects msgpack objects. wire_msg_decode uses WIRE_MAX_OBJECTS. */
int wire_msg_decode_max(uint8_t *frame, size_t len, size_t max_objects, wire_msg *m, char *err, size_t errlen);
/* wire_msg_count checks p[len] as wire_msg_decode does (structure, depth, counts) without allocating
 * and writes the number of msgpack objects to *objects. Returns 0 or DMOE_EPROTO (err filled). */
int wire_msg_count(const uint8_t *p, size_t len, size_t *objects, char *err, size_t errlen);
/* wire_msg_decode_cost returns an upper bound of the bytes decoding a message of that many objects
 * allocates (the object tree in msgpack-c's zone, its chunk rounding, the wire_msg). */
size_t wire_msg_decode_cost(size_t objects);
/* wire_msg_free releases the frame and the unpack zone; zeroed or NULL m is a no-op. */
void wire_msg_free(wire_msg *m);

/* wire_map_get returns the value under string key in map (a MSGPACK_OBJECT_MAP), or NULL. */
const msgpack_object *wire_map_get(const msgpack_object *map, const char *key);
/* wire_get_str copies a string value of at most cap-1 bytes into buf (NUL-terminated). Returns 0,
 * DMOE_EINVAL (not a string, or contains NUL) or DMOE_ETOOBIG. */
int wire_get_str(const msgpack_object *o, char *buf, size_t cap);
/* wire_get_i64 reads a positive or negative integer. Returns 0 or DMOE_EINVAL. */
int wire_get_i64(const msgpack_object *o, int64_t *out);
/* wire_get_f64 reads a float or an integer as double. Returns 0 or DMOE_EINVAL. */
int wire_get_f64(const msgpack_object *o, double *out);

/* wire_tensor_decode reads a tensor map. Returns 0, DMOE_EINVAL (missing or mistyped field, unknown
 * dtype or compression, negative dim) or DMOE_ETOOBIG (more than WIRE_MAX_NDIM dims, overflow), or
 * DMOE_ESHAPE (data length differs from numel * itemsize); err gets the detail. */
int wire_tensor_decode(const msgpack_object *o, wire_tensor *t, char *err, size_t errlen);
/* wire_tensor_rows returns the rows a compression scheme normalises over: the product of all dims but
 * the last (1 for a 1-D tensor). */
size_t wire_tensor_rows(const wire_tensor *t);
/* wire_tensor_f32 writes t's t->numel float32 values into out (aligned, caller's), decompressing when
 * t is compressed. Returns 0, DMOE_ESHAPE (not float32) or DMOE_EPROTO (compressed bytes malformed). */
int wire_tensor_f32(const wire_tensor *t, float *out);
/* wire_tensor_pack packs t as a tensor map; the data is referenced (see wire_out_bin_ref), cleanup is
 * called with arg once it is released. A t->compression other than NONE is written as the
 * "compression" field (t->data must then hold that scheme's bytes). Returns 0 or DMOE_ENOMEM. */
int wire_tensor_pack(wire_out *o, const wire_tensor *t, wire_ref_cleanup cleanup, void *arg);
/* wire_dtype_name / wire_dtype_parse / wire_dtype_size: "float32" <-> WIRE_DT_F32, element bytes. */
const char *wire_dtype_name(wire_dtype d);
int wire_dtype_parse(const char *s, size_t n, wire_dtype *out);
size_t wire_dtype_size(wire_dtype d);

/* wire_pack_str packs a C string. */
void wire_pack_str(msgpack_packer *pk, const char *s);
/* wire_reply_begin starts a success reply {"id": id, "result": <what the caller packs next>}. */
void wire_reply_begin(wire_out *o, uint64_t id);
/* wire_error_reply builds a whole error reply {"id": id, "error": {"code": -code, "message": msg}};
 * returns NULL when out of memory. */
wire_out *wire_error_reply(uint64_t id, int code, const char *msg);
/* wire_request_begin starts a request map of n_fields entries (id and method included) and packs
 * "id" and "method"; the caller packs the remaining n_fields - 2 key/value pairs. */
void wire_request_begin(wire_out *o, uint64_t id, const char *method, uint32_t n_fields);

#endif
