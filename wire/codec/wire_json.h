/* wire_json.h -- msgpack objects printed as JSON, for dmoe-call's --json output and logs, and the one
 * way a command reports a failure (wire_json_error).
 *
 * Maps, arrays, strings (escaped), integers, floats (NaN and Inf as null, since JSON has neither),
 * booleans and nil map one to one; bins print as {"bin": N} with their length only, so a tensor never
 * floods a terminal. Map keys that are not strings are printed as strings.
 */
#ifndef DMOE_WIRE_JSON_H
#define DMOE_WIRE_JSON_H

#include <msgpack.h>
#include <stdio.h>

/* wire_json_print writes o to f as compact JSON. */
void wire_json_print(FILE *f, const msgpack_object *o);
/* wire_json_string writes s (n bytes) to f as a JSON string literal. */
void wire_json_string(FILE *f, const char *s, size_t n);
/* wire_json_error reports a failed command: with json, the line {"ok": false, "code": N, "error": msg}
 * on stdout (N = |code|, a DMOE_* code); without, "prog: <dmoe_strerror(code)>: msg" on stderr. msg may
 * be NULL (printed as ""). */
void wire_json_error(int json, const char *prog, int code, const char *msg);

#endif
