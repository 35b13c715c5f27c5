/* rt_err.h -- the project-wide error codes.
 *
 * Every function that can fail returns 0 or one of these negative codes; the wire protocol carries the
 * same numbers, negated (positive), in an error reply's "code" field (see wire/PROTOCOL.md). Human detail
 * travels beside the code as a message string, never through errno.
 */
#ifndef DMOE_RT_ERR_H
#define DMOE_RT_ERR_H

enum {
    DMOE_OK         = 0,
    DMOE_ENOMEM     = -1,   /* allocation failed, or a size would overflow */
    DMOE_EPROTO     = -2,   /* malformed frame or msgpack: the peer speaks something else */
    DMOE_ETOOBIG    = -3,   /* a frame, tensor or batch over a configured limit */
    DMOE_EINVAL     = -4,   /* well-formed request with a bad field (type, missing key, bad value) */
    DMOE_ENOEXPERT  = -5,   /* no expert with that uid on this node */
    DMOE_ENOMETHOD  = -6,   /* unknown method */
    DMOE_ESHAPE     = -7,   /* tensor shape or dtype does not match the expert's schema */
    DMOE_ENONFINITE = -8,   /* NaN or Inf in a tensor where finite values are required */
    DMOE_ETIMEDOUT  = -9,   /* no reply within the deadline */
    DMOE_ECONN      = -10,  /* connection refused, reset or closed before the reply */
    DMOE_EOVERLOAD  = -11,  /* the node's queues are full: retry later */
    DMOE_ESHUTDOWN  = -12,  /* the node is stopping */
    DMOE_EIO        = -13,  /* file or socket I/O failed */
    DMOE_EINTERNAL  = -14,  /* a bug: an invariant did not hold */
    DMOE_ENOTFOUND  = -15,  /* a key, file or peer that does not exist */
    DMOE_ERR_MIN    = -15
};

/* dmoe_strerror returns a static, human-readable name for an error code (negative or positive). */
const char *dmoe_strerror(int code);

#include <stddef.h>
/* dmoe_set_err formats a human message into the caller's err buffer (errlen bytes); NULL err or a zero
 * errlen is allowed and writes nothing. */
void dmoe_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
