/* rt_safetensors.h -- safetensors files: expert checkpoints that Python's safetensors library reads.
 *
 * The format (huggingface/safetensors README): 8 bytes N, an unsigned little-endian 64-bit header
 * length; N bytes of UTF-8 JSON starting with '{', possibly padded at the end with spaces; then the
 * byte buffer. The JSON maps each tensor name to {"dtype": "F32", "shape": [..], "data_offsets":
 * [BEGIN, END]} (offsets relative to the buffer, END one past) and may hold "__metadata__", a
 * string-to-string map. Tensors are little-endian, C order; the buffer must be covered exactly, without
 * holes or overlaps.
 *
 * Writing: rt_st_write builds the header as the Rust implementation does (compact JSON, "__metadata__"
 * first, then the tensors in the caller's order with contiguous offsets, the header padded with spaces
 * to a multiple of 8 bytes so the data starts 8-aligned), writes header and data to DIR/tmp-XXXXXX
 * through a sticky-error writer (after the first failed write nothing more is written and the error is
 * reported at the end), fsyncs it, renames it to DIR/NAME and fsyncs DIR. Readers never see a partial
 * file under the final name; on failure the temporary file is removed.
 *
 * Reading: rt_st_open reads the whole file into memory and validates it strictly (header length within
 * RT_ST_MAX_HEADER and the file, JSON of exactly the subset above with no duplicate keys, known dtypes,
 * shapes whose byte size equals END - BEGIN, offsets inside the buffer, contiguous, covering it to the
 * last byte). Then tensors are looked up by name and copied out with rt_st_copy.
 *
 * Checkpoint folders: rt_ckpt_list lists PREFIX<N>.safetensors files (N a canonical decimal) newest
 * (highest N) first and rt_ckpt_prune deletes all but the newest K.
 *
 * Implemented in three files: rt_safetensors.c (writing, reading), rt_json.c (the header's JSON
 * subset), rt_ckpt_files.c (checkpoint folders).
 *
 * Plain blocking file I/O: call from a worker thread or a tool's main thread, never from the event loop.
 * An rt_st_file is read-only after rt_st_open and may be shared by threads until rt_st_close.
 */
#ifndef DMOE_RT_SAFETENSORS_H
#define DMOE_RT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define RT_ST_MAX_HEADER 100000000u   /* the Rust reader's limit: no parsing of huge JSON */
#define RT_ST_MAX_NDIM 8              /* dims of one tensor (the wire's WIRE_MAX_NDIM) */

typedef enum { RT_ST_F32 = 0, RT_ST_I64 = 1, RT_ST_U8 = 2 } rt_st_dtype;

/* One tensor: what the writer takes and what the reader hands out. */
typedef struct {
    const char *name;                 /* UTF-8, non-empty, not "__metadata__" */
    rt_st_dtype dtype;
    int ndim;                         /* 0 (a scalar) .. RT_ST_MAX_NDIM */
    int64_t shape[RT_ST_MAX_NDIM];
    const void *data;                 /* numel * element size bytes, little-endian; may be unaligned
                                       * when read from a file whose header is not padded to 8 */
    size_t nbytes;                    /* set by the reader; the writer computes it from the shape */
} rt_st_tensor;

/* One "__metadata__" entry. */
typedef struct {
    const char *key, *value;
} rt_st_kv;

typedef struct rt_st_file rt_st_file;

/* rt_st_dtype_name returns "F32", "I64" or "U8", or NULL for another value. */
const char *rt_st_dtype_name(rt_st_dtype dtype);
/* rt_st_dtype_size returns the element size in bytes (4, 8, 1), or 0 for another value. */
size_t rt_st_dtype_size(rt_st_dtype dtype);

/* rt_st_write writes nt tensors (t[i].data read, all stays the caller's; t[i].nbytes ignored) and nmeta
 * metadata entries to DIR/name atomically, replacing an existing file. Returns 0, DMOE_EINVAL (bad name,
 * duplicate name or key, bad dtype, ndim or dim, NULL data with bytes to write), DMOE_ETOOBIG (size
 * overflow or a header over RT_ST_MAX_HEADER), DMOE_ENOMEM, or DMOE_EIO (create, write, fsync, rename
 * failed; nothing is left behind). err (errlen bytes) gets the human message. */
int rt_st_write(const char *dir, const char *name, const rt_st_tensor *t, size_t nt, const rt_st_kv *meta,
                size_t nmeta, char *err, size_t errlen);

/* rt_st_open reads and validates the file at path. On success returns 0 and sets *out (free it with
 * rt_st_close). Returns DMOE_ENOTFOUND (no such file), DMOE_EIO (read error), DMOE_EPROTO (truncated
 * file, header length beyond the file, header not '{', malformed JSON, duplicate key, missing field,
 * offsets reversed, beyond the buffer, overlapping or leaving a hole), DMOE_ETOOBIG (header over
 * RT_ST_MAX_HEADER, more than RT_ST_MAX_NDIM dims, size overflow), DMOE_EINVAL (a dtype other than
 * F32, I64, U8), DMOE_ESHAPE (a shape whose byte size differs from its data_offsets) or DMOE_ENOMEM;
 * err gets a message naming the tensor and the problem. *out is untouched on failure. */
int rt_st_open(const char *path, rt_st_file **out, char *err, size_t errlen);
/* rt_st_read_meta reads only the header of the file at path (not its tensors: cheap for a big file) and
 * copies the "__metadata__" value of key into out (outlen bytes, truncated). Returns 0, DMOE_ENOTFOUND
 * (no such file, or no such key), DMOE_EIO, DMOE_EPROTO (not a safetensors header) or DMOE_ENOMEM;
 * err gets the message. */
int rt_st_read_meta(const char *path, const char *key, char *out, size_t outlen, char *err, size_t errlen);
/* rt_st_close frees f and everything it handed out; rt_st_close(NULL) does nothing. */
void rt_st_close(rt_st_file *f);
/* rt_st_count returns the number of tensors in f. */
size_t rt_st_count(const rt_st_file *f);
/* rt_st_at returns tensor i (0 <= i < count) in header order, owned by f, or NULL when out of range. */
const rt_st_tensor *rt_st_at(const rt_st_file *f, size_t i);
/* rt_st_find returns the tensor called name, owned by f, or NULL. */
const rt_st_tensor *rt_st_find(const rt_st_file *f, const char *name);
/* rt_st_meta returns the "__metadata__" value for key, owned by f, or NULL. */
const char *rt_st_meta(const rt_st_file *f, const char *key);
/* rt_st_meta_count returns the number of metadata entries; rt_st_meta_at returns entry i (owned by f)
 * or NULL when out of range. */
size_t rt_st_meta_count(const rt_st_file *f);
const rt_st_kv *rt_st_meta_at(const rt_st_file *f, size_t i);
/* rt_st_copy copies tensor name into dst (dst_bytes long) after checking that it has dtype and the
 * ndim dims in shape. Returns 0, DMOE_ENOTFOUND (no such tensor), DMOE_ESHAPE (other dtype or shape) or
 * DMOE_EINVAL (dst_bytes differs from the tensor's size); err gets the message. */
int rt_st_copy(const rt_st_file *f, const char *name, rt_st_dtype dtype, int ndim, const int64_t *shape,
               void *dst, size_t dst_bytes, char *err, size_t errlen);

/* rt_ckpt_path writes "DIR/PREFIX<step>.safetensors" into buf (len bytes). Returns 0, DMOE_EINVAL
 * (negative step) or DMOE_ETOOBIG (does not fit). */
int rt_ckpt_path(const char *dir, const char *prefix, int64_t step, char *buf, size_t len);
/* rt_ckpt_list finds the files DIR/PREFIX<N>.safetensors (N decimal digits without leading zeros, up
 * to INT64_MAX) and writes the first min(cap, found) values of N, largest first, to steps[]. Sets
 * *count to the number found (which may exceed cap). Other files are ignored. Returns 0,
 * DMOE_ENOTFOUND (no such folder), DMOE_EIO or DMOE_ENOMEM. */
int rt_ckpt_list(const char *dir, const char *prefix, int64_t *steps, size_t cap, size_t *count);
/* rt_ckpt_prune deletes every DIR/PREFIX<N>.safetensors except the keep with the largest N and sets
 * *removed (may be NULL) to the number deleted. With ours (may be NULL: every file is), only the files
 * for which ours(path, arg) returns nonzero are counted and deleted; the others are left alone. Returns 0, DMOE_ENOTFOUND, DMOE_EIO (a listing or an
 * unlink failed; the others are still tried) or DMOE_ENOMEM. */
int rt_ckpt_prune(const char *dir, const char *prefix, size_t keep, int (*ours)(const char *path, void *arg),
                  void *arg, size_t *removed);

#endif
