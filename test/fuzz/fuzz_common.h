/* fuzz_common.h -- what the libFuzzer harnesses of test/fuzz/ share (README "Fuzzing").
 *
 * Each harness test/fuzz/fuzz_<name>.c is one program (make fuzz links it with libFuzzer, ASan and UBSan
 * against build-fuzz/libdmoe.a) defining LLVMFuzzerTestOneInput; this file gives them the oracle (an
 * invariant that must hold whatever the input: its failure is a finding, like a sanitizer report), a
 * copy of the input as a malloc'd frame, and quiet logs. Single-threaded, as libFuzzer calls them.
 */
#ifndef DMOE_TEST_FUZZ_COMMON_H
#define DMOE_TEST_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "wire/wire_msg.h"
#include "wire/wire_out.h"

/* LLVMFuzzerTestOneInput is the entry point libFuzzer calls once per input: each harness defines it,
 * returns 0, and frees everything the input made. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* FUZZ_CHECK aborts with the condition's text and location when cond is false: libFuzzer then saves the
 * input as a crash-* finding. */
#define FUZZ_CHECK(cond) ((cond) ? (void)0 : fuzz_fail(#cond, __FILE__, __LINE__))

/* fuzz_fail prints what failed and aborts; it does not return. */
void fuzz_fail(const char *what, const char *file, int line) __attribute__((noreturn));

/* fuzz_quiet turns the library's logging off (a hostile input may log on every call); idempotent. */
void fuzz_quiet(void);

/* fuzz_dup returns a malloc'd copy of p[n] (at least one byte allocated, so n 0 is not NULL), as the
 * frame reader hands frames over; the caller owns it. Aborts when out of memory. */
uint8_t *fuzz_dup(const uint8_t *p, size_t n);

/* fuzz_decode_out flattens o (consumed; NULL fails) and decodes it into *m, which the caller frees with
 * wire_msg_free: what the library encodes must decode, so a failure of either is a finding. */
void fuzz_decode_out(wire_out *o, wire_msg *m);

/* fuzz_be16 / fuzz_be32 read a big-endian number at p. */
uint32_t fuzz_be16(const uint8_t *p);
uint32_t fuzz_be32(const uint8_t *p);

#endif
