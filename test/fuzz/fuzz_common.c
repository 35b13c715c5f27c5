/* fuzz_common.c -- the harnesses' shared helpers (see fuzz_common.h). */
#include "test/fuzz/fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_log.h"

void fuzz_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "fuzz: invariant failed at %s:%d: %s\n", file, line, what);
    abort();
}

void fuzz_quiet(void) { rt_log_set_level(RT_LOG_OFF); }

uint8_t *fuzz_dup(const uint8_t *p, size_t n)
{
    uint8_t *b = malloc(n ? n : 1);
    if (!b) fuzz_fail("malloc of the input copy", __FILE__, __LINE__);
    if (n) memcpy(b, p, n);
    return b;
}

void fuzz_decode_out(wire_out *o, wire_msg *m)
{
    uint8_t *buf;
    size_t len;
    char err[256];
    FUZZ_CHECK(o != NULL);
    FUZZ_CHECK(wire_out_flatten(o, &buf, &len) == 0);
    FUZZ_CHECK(wire_msg_decode(buf, len, m, err, sizeof err) == 0);
}

uint32_t fuzz_be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

uint32_t fuzz_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
