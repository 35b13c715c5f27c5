/* wire_json.h -- msgpack objects printed as JSON, for dmoe-call's --json output and logs.
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

#endif
