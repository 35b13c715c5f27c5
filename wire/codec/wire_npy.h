/* wire_npy.h -- NumPy .npy files: how Python users hand tensors to the dmoe tools and get them back.
 *
 * Reads format versions 1.0, 2.0 (and 3.0, which differs only in the header's text encoding) of
 * C-order arrays with up to WIRE_MAX_NDIM dims and dtype '<f4' (float32), '<f8' (converted to
 * float32), '|u1' or '|b1' (both as uint8). Writes version 1.0 (the header of an array of at most
 * WIRE_MAX_NDIM dims always fits) of float32 ('<f4') or uint8 ('|u1') arrays, as numpy.save does, so
 * numpy.load reads them back.
 * Rejects, with a message in err: fortran_order True, big-endian dtypes, other dtypes, malformed
 * headers, and files whose data part is shorter or longer than the header's shape says.
 * Plain blocking file I/O: call from a tool's main thread or a worker, never from the event loop.
 */
#ifndef DMOE_WIRE_NPY_H
#define DMOE_WIRE_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "wire/wire_msg.h"

/* wire_npy_read loads the array in path. On success returns 0 and sets *dtype (WIRE_DT_F32 or
 * WIRE_DT_U8), *ndim, shape[0..ndim) (shape must hold WIRE_MAX_NDIM entries), *data (malloc'd, owned
 * by the caller, free() it; never NULL, even for zero elements) and *nbytes (numel * element size).
 * Returns DMOE_ENOTFOUND (no such file), DMOE_EIO (read error), DMOE_EPROTO (not an .npy file or a
 * malformed header), DMOE_EINVAL (fortran order, big-endian or unsupported dtype), DMOE_ETOOBIG (more
 * than WIRE_MAX_NDIM dims or a size overflow), DMOE_ESHAPE (data length differs from the shape) or
 * DMOE_ENOMEM; err (errlen bytes) gets the human message. Outputs are untouched on failure. */
int wire_npy_read(const char *path, wire_dtype *dtype, int *ndim, int64_t *shape, void **data,
                  size_t *nbytes, char *err, size_t errlen);

/* wire_npy_write saves a C-order array of dtype WIRE_DT_F32 or WIRE_DT_U8 with ndim dims
 * (0..WIRE_MAX_NDIM, each >= 0) from data (numel * element size bytes, read only, stays the caller's)
 * to path, replacing it. Returns 0, DMOE_EINVAL (bad dtype, ndim or dim), DMOE_ETOOBIG (size overflow)
 * or DMOE_EIO (cannot create or write; a partial file is removed); err gets the message. */
int wire_npy_write(const char *path, wire_dtype dtype, int ndim, const int64_t *shape, const void *data,
                   char *err, size_t errlen);

#endif
