/* wire_json.c -- msgpack to JSON (see wire_json.h). */
#include "wire/codec/wire_json.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "runtime/rt_err.h"

void wire_json_string(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (c < 0x20) fprintf(f, "\\u%04x", c);
            else fputc(c, f);
        }
    }
    fputc('"', f);
}

static void print_double(FILE *f, double d)
{
    if (!isfinite(d)) fputs("null", f);
    else fprintf(f, "%.9g", d);
}

void wire_json_print(FILE *f, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: fputs("null", f); break;
    case MSGPACK_OBJECT_BOOLEAN: fputs(o->via.boolean ? "true" : "false", f); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: fprintf(f, "%" PRIu64, o->via.u64); break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: fprintf(f, "%" PRId64, o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
        if (!isfinite(o->via.f64)) fputs("null", f);
        else fprintf(f, "%.7g", o->via.f64);
        break;
    case MSGPACK_OBJECT_FLOAT64: print_double(f, o->via.f64); break;
    case MSGPACK_OBJECT_STR: wire_json_string(f, o->via.str.ptr, o->via.str.size); break;
    case MSGPACK_OBJECT_BIN: fprintf(f, "{\"bin\": %" PRIu32 "}", o->via.bin.size); break;
    case MSGPACK_OBJECT_ARRAY:
        fputc('[', f);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i) fputs(", ", f);
            wire_json_print(f, &o->via.array.ptr[i]);
        }
        fputc(']', f);
        break;
    case MSGPACK_OBJECT_MAP:
        fputc('{', f);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (i) fputs(", ", f);
            if (k->type == MSGPACK_OBJECT_STR) {
                wire_json_string(f, k->via.str.ptr, k->via.str.size);
            } else if (k->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                fprintf(f, "\"%" PRIu64 "\"", k->via.u64);
            } else if (k->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
                fprintf(f, "\"%" PRId64 "\"", k->via.i64);
            } else {
                fputs("\"?\"", f);
            }
            fputs(": ", f);
            wire_json_print(f, &o->via.map.ptr[i].val);
        }
        fputc('}', f);
        break;
    default: fputs("null", f); break;
    }
}

void wire_json_error(int json, const char *prog, int code, const char *msg)
{
    if (!msg) msg = "";
    if (json) {
        printf("{\"ok\": false, \"code\": %d, \"error\": ", code < 0 ? -code : code);
        wire_json_string(stdout, msg, strlen(msg));
        printf("}\n");
    } else {
        fprintf(stderr, "%s: %s: %s\n", prog, dmoe_strerror(code), msg);
    }
}
