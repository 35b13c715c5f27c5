/* rt_json.c -- the strict JSON-subset cursor (see rt_json.h for the subset and the call order).
 *
 * Design notes. The cursor is a pair of pointers over the caller's text; every function skips the
 * whitespace before its token itself (callers call rt_json_ws only to check for trailing bytes). A string
 * is first scanned for its closing quote, then decoded into a buffer as long as the raw literal (an
 * escape never expands: \n is 2 bytes for 1, \uXXXX 6 bytes for at most 3, a surrogate pair 12 for 4),
 * so no reallocation happens mid-string. Integers are checked against their bound digit by digit
 * before any overflow. Objects are walked by rt_json_members with a callback per member: the
 * caller's structure (not this file) decides the nesting, which keeps the parser itself free of recursion.
 *
 * Every failure goes through rt_json_fail, which prefixes the byte offset of the cursor. Used by
 * rt_safetensors.c for the safetensors header; no global state, no I/O.
 */
#include "runtime/text/rt_json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"

void rt_json_init(rt_json_cur *j, const char *text, size_t n, char *err, size_t errlen)
{
    j->p = text;
    j->end = text + n;
    j->start = text;
    j->err = err;
    j->errlen = errlen;
}

/* rt_json_utf8_ok returns whether s[0..n) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
bool rt_json_utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= k) return false;
        for (size_t m = 1; m <= k; m++) {
            if ((s[i + m] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (s[i + m] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += k + 1;
    }
    return true;
}

int rt_json_fail(rt_json_cur *j, int code, const char *fmt, ...)
{
    if (j->err && j->errlen) {
        int n = snprintf(j->err, j->errlen, "header byte %zu: ", (size_t)(j->p - j->start));
        if (n >= 0 && (size_t)n < j->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(j->err + n, j->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return code;
}

void rt_json_ws(rt_json_cur *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* rt_json_peek skips whitespace and returns the next byte, or 0 at the end. */
char rt_json_peek(rt_json_cur *j)
{
    rt_json_ws(j);
    return j->p < j->end ? *j->p : 0;
}

int rt_json_expect(rt_json_cur *j, char c)
{
    if (rt_json_peek(j) != c) return rt_json_fail(j, DMOE_EPROTO, "bad JSON: expected '%c'", c);
    j->p++;
    return 0;
}

static int json_hex4(rt_json_cur *j, unsigned *v)
{
    if (j->end - j->p < 4) return rt_json_fail(j, DMOE_EPROTO, "bad JSON: short \\u escape");
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = *j->p++;
        unsigned d = (c >= '0' && c <= '9') ? (unsigned)(c - '0')
                   : (c >= 'a' && c <= 'f') ? (unsigned)(c - 'a' + 10)
                   : (c >= 'A' && c <= 'F') ? (unsigned)(c - 'A' + 10) : 16u;
        if (d == 16) return rt_json_fail(j, DMOE_EPROTO, "bad JSON: bad hex digit in \\u escape");
        *v = *v << 4 | d;
    }
    return 0;
}

/* rt_json_string parses a string literal into a malloc'd, NUL-terminated UTF-8 copy (*out, caller frees). */
int rt_json_string(rt_json_cur *j, char **out)
{
    if (rt_json_peek(j) != '"') return rt_json_fail(j, DMOE_EPROTO, "bad JSON: expected a string");
    j->p++;
    const char *q = j->p;
    while (q < j->end && *q != '"') q += (*q == '\\' && q + 1 < j->end) ? 2 : 1;
    char *s = malloc((size_t)(q - j->p) + 1);   /* escapes never expand */
    if (!s) return rt_json_fail(j, DMOE_ENOMEM, "out of memory");
    size_t n = 0;
    int rc = 0;
    for (;;) {
        if (j->p >= j->end) {
            rc = rt_json_fail(j, DMOE_EPROTO, "bad JSON: unterminated string");
            break;
        }
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') break;
        if (c < 0x20) {
            rc = rt_json_fail(j, DMOE_EPROTO, "bad JSON: control character in a string");
            break;
        }
        if (c != '\\') {
            s[n++] = (char)c;
            continue;
        }
        if (j->p >= j->end) {
            rc = rt_json_fail(j, DMOE_EPROTO, "bad JSON: unterminated escape");
            break;
        }
        static const char esc[] = "\"\\/bfnrt", repl[] = "\"\\/\b\f\n\r\t";
        char e = *j->p++;
        const char *simple = e ? strchr(esc, e) : NULL;
        if (simple) {
            s[n++] = repl[simple - esc];
            continue;
        }
        if (e != 'u') {
            rc = rt_json_fail(j, DMOE_EPROTO, "bad JSON: unknown escape");
            break;
        }
        unsigned cp, lo;
        if ((rc = json_hex4(j, &cp))) break;
        if (cp >= 0xdc00 && cp <= 0xdfff) {
            rc = rt_json_fail(j, DMOE_EPROTO, "bad JSON: lone low surrogate");
            break;
        }
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
                rc = rt_json_fail(j, DMOE_EPROTO, "bad JSON: lone high surrogate");
                break;
            }
            j->p += 2;
            if ((rc = json_hex4(j, &lo))) break;
            if (lo < 0xdc00 || lo > 0xdfff) {
                rc = rt_json_fail(j, DMOE_EPROTO, "bad JSON: bad surrogate pair");
                break;
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp == 0) {
            rc = rt_json_fail(j, DMOE_EPROTO, "bad JSON: \\u0000 in a string");
            break;
        }
        /* an escape of 6 (or 12) bytes becomes at most 3 (or 4) bytes of UTF-8 */
        if (cp < 0x80) {
            s[n++] = (char)cp;
        } else if (cp < 0x800) {
            s[n++] = (char)(0xc0 | cp >> 6);
            s[n++] = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            s[n++] = (char)(0xe0 | cp >> 12);
            s[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            s[n++] = (char)(0x80 | (cp & 0x3f));
        } else {
            s[n++] = (char)(0xf0 | cp >> 18);
            s[n++] = (char)(0x80 | ((cp >> 12) & 0x3f));
            s[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            s[n++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    if (rc) {
        free(s);
        return rc;
    }
    s[n] = 0;
    *out = s;
    return 0;
}

/* rt_json_uint parses a non-negative JSON integer up to max. */
int rt_json_uint(rt_json_cur *j, uint64_t max, uint64_t *v)
{
    char c = rt_json_peek(j);
    if (c == '-') return rt_json_fail(j, DMOE_EPROTO, "bad header: negative number");
    if (c < '0' || c > '9') return rt_json_fail(j, DMOE_EPROTO, "bad JSON: expected an integer");
    if (c == '0' && j->p + 1 < j->end && j->p[1] >= '0' && j->p[1] <= '9')
        return rt_json_fail(j, DMOE_EPROTO, "bad JSON: leading zero");
    uint64_t x = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        unsigned d = (unsigned)(*j->p - '0');
        if (x > (max - d) / 10) return rt_json_fail(j, DMOE_ETOOBIG, "bad header: number too large");
        x = x * 10 + d;
        j->p++;
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return rt_json_fail(j, DMOE_EPROTO, "bad header: not an integer");
    *v = x;
    return 0;
}

/* rt_json_uints parses an array of at most max integers (each <= lim) into v; sets *n. */
int rt_json_uints(rt_json_cur *j, uint64_t *v, int max, uint64_t lim, int *n, const char *what)
{
    int rc = rt_json_expect(j, '[');
    if (rc) return rc;
    *n = 0;
    if (rt_json_peek(j) == ']') {
        j->p++;
        return 0;
    }
    for (;;) {
        if (*n == max) return rt_json_fail(j, DMOE_ETOOBIG, "%s has more than %d entries", what, max);
        if ((rc = rt_json_uint(j, lim, &v[(*n)++]))) return rc;
        char c = rt_json_peek(j);
        j->p++;
        if (c == ']') return 0;
        if (c != ',') return rt_json_fail(j, DMOE_EPROTO, "bad JSON: expected ',' or ']' in %s", what);
    }
}

/* rt_json_members walks an object's members: calls member(j, key, ctx) after each "key":, which parses the
 * value. Takes ownership of nothing; key is freed after the call. */
int rt_json_members(rt_json_cur *j, int (*member)(rt_json_cur *, const char *, void *), void *ctx)
{
    int rc = rt_json_expect(j, '{');
    if (rc) return rc;
    if (rt_json_peek(j) == '}') {
        j->p++;
        return 0;
    }
    for (;;) {
        char *key;
        if ((rc = rt_json_string(j, &key))) return rc;
        rc = rt_json_expect(j, ':');
        if (!rc) rc = member(j, key, ctx);
        free(key);
        if (rc) return rc;
        char c = rt_json_peek(j);
        j->p++;
        if (c == '}') return 0;
        if (c != ',') return rt_json_fail(j, DMOE_EPROTO, "bad JSON: expected ',' or '}'");
    }
}
