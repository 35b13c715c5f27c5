/* rt_json.h -- a strict cursor over a small subset of JSON: the subset safetensors headers use.
 *
 * What it parses: objects (walked member by member through a callback, so the caller decides what each
 * value must be), strings with every JSON escape (\uXXXX with surrogate pairs, decoded to UTF-8;
 * \u0000 refused, because the results are C strings), non-negative integers without sign, fraction or
 * exponent, and arrays of such integers. Whitespace is the four JSON whitespace bytes. Nothing else:
 * floats, negative numbers, true/false/null, nested arrays and arrays of strings are refused, and the
 * caller refuses unknown keys and duplicates. rt_json_utf8_ok checks a whole text first (JSON text is
 * UTF-8; the cursor itself copies bytes >= 0x80 through unchecked).
 *
 * Nothing recurses on its own: rt_json_members calls back for each value, so the depth is the depth of
 * the caller's own structure and a hostile text cannot exhaust the stack.
 *
 * Order: rt_json_init over [text, text + n) -> rt_json_members / rt_json_string / rt_json_uint ... ->
 * rt_json_ws and compare j->p with j->end to refuse trailing bytes. Every failure returns a negative
 * DMOE_* code and writes "header byte N: <what>" into the caller's err (N counted from text; the
 * wording is the safetensors reader's, its one user); the cursor is not usable after a failure.
 *
 * No I/O, no global state; a cursor belongs to one thread.
 */
#ifndef DMOE_RT_JSON_H
#define DMOE_RT_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The cursor over [start, end): p is the next byte; failures are described in err (errlen bytes, may be
 * NULL). */
typedef struct {
    const char *p, *end, *start;
    char *err;
    size_t errlen;
} rt_json_cur;

/* rt_json_init points j at the n bytes at text (which stay the caller's and must outlive j); messages
 * go to err. */
void rt_json_init(rt_json_cur *j, const char *text, size_t n, char *err, size_t errlen);

/* rt_json_utf8_ok returns whether s[0..n) is well-formed UTF-8 (no overlongs, surrogates or code points
 * over U+10FFFF). */
bool rt_json_utf8_ok(const uint8_t *s, size_t n);

/* rt_json_fail writes "header byte N: " and the formatted message to j's err (N is the cursor's offset)
 * and returns code. For callbacks that refuse a value the grammar accepts. */
int rt_json_fail(rt_json_cur *j, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* rt_json_ws skips whitespace. */
void rt_json_ws(rt_json_cur *j);

/* rt_json_peek skips whitespace and returns the next byte without taking it, or 0 at the end. */
char rt_json_peek(rt_json_cur *j);

/* rt_json_expect skips whitespace and takes the byte c; returns 0 or DMOE_EPROTO. */
int rt_json_expect(rt_json_cur *j, char c);

/* rt_json_string parses a string literal into a malloc'd, NUL-terminated UTF-8 copy: returns 0 and sets
 * *out (the caller frees it), or DMOE_EPROTO (not a string, bad escape, control character, lone
 * surrogate, \u0000, unterminated) or DMOE_ENOMEM, with *out untouched. */
int rt_json_string(rt_json_cur *j, char **out);

/* rt_json_uint parses a non-negative integer of at most max into *v. Returns 0, DMOE_EPROTO (a sign, a
 * leading zero, a fraction or exponent, not a number) or DMOE_ETOOBIG (over max). */
int rt_json_uint(rt_json_cur *j, uint64_t max, uint64_t *v);

/* rt_json_uints parses an array of at most max integers, each at most lim, into v[] and sets *n to
 * their count. what names the array in messages. Returns 0, or DMOE_ETOOBIG (too many entries, an entry
 * over lim) or DMOE_EPROTO. */
int rt_json_uints(rt_json_cur *j, uint64_t *v, int max, uint64_t lim, int *n, const char *what);

/* rt_json_members walks an object: after each "key": it calls member(j, key, ctx), which must parse
 * the value (and may refuse it by returning a code, which ends the walk and is returned). key is freed
 * after the call; nothing else changes hands. Returns 0 after the closing '}', or the first code. */
int rt_json_members(rt_json_cur *j, int (*member)(rt_json_cur *j, const char *key, void *ctx), void *ctx);

#endif
