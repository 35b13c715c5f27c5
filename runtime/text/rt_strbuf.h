/* rt_strbuf.h -- a growable text buffer with a sticky allocation error, for building headers and pages.
 *
 * Appends never fail loudly: once an allocation fails, later appends do nothing and `failed` stays set,
 * so a writer builds the whole text and checks once at the end (SQLite's sticky-error style). The text is
 * always NUL-terminated after a successful append. Zero-initialise to start; free(b.p) when done.
 */
#ifndef DMOE_RT_STRBUF_H
#define DMOE_RT_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *p;
    size_t len, cap;
    bool failed;
} rt_strbuf;

/* rt_strbuf_put appends n bytes of s (no-op after a failure). */
void rt_strbuf_put(rt_strbuf *b, const void *s, size_t n);
/* rt_strbuf_str appends the C string s. */
void rt_strbuf_str(rt_strbuf *b, const char *s);

#endif
