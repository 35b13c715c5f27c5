/* rt_strbuf.c -- the growable text buffer (see rt_strbuf.h). */
#include "runtime/text/rt_strbuf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void rt_strbuf_put(rt_strbuf *b, const void *s, size_t n)
{
    if (b->failed) return;
    if (n > SIZE_MAX - b->len - 1) { b->failed = true; return; }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) { b->failed = true; return; }
            cap *= 2;
        }
        char *q = realloc(b->p, cap);
        if (!q) { b->failed = true; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void rt_strbuf_str(rt_strbuf *b, const char *s) { rt_strbuf_put(b, s, strlen(s)); }
