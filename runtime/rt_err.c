/* rt_err.c -- names of the project-wide error codes (rt_err.h). */
#include "runtime/rt_err.h"

#include <stdarg.h>
#include <stdio.h>

const char *dmoe_strerror(int code)
{
    static const char *names[] = {
        "ok", "out of memory", "protocol error", "too big", "invalid request", "unknown expert",
        "unknown method", "shape mismatch", "non-finite values", "timed out", "connection failed",
        "overloaded", "shutting down", "I/O error", "internal error", "not found",
    };
    if (code > 0) code = -code;
    if (code < DMOE_ERR_MIN) return "unknown error";
    return names[-code];
}

void dmoe_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
