/* wire_compress.h -- hivemind's wire compression schemes for float32 tensors.
 *
 * Turns n float32 values into the bytes of a tensor's "data" field and back, with the same byte layout
 * as hivemind's runtime_pb2.Tensor.buffer for each CompressionType, so the numbers below are hivemind's
 * enum values. Pure functions: no I/O, no allocation, no global state (BLOCKWISE_8BIT's code table is
 * rebuilt on the stack per call, which costs far less than one block); safe from any thread.
 *
 * Call order: wire_compress_bound (exact output size) -> wire_compress into a buffer of that size; on the
 * receiving side wire_decompress with the element count taken from the tensor's shape. The *_rows forms
 * carry MEANSTD_16BIT's per-row statistics: hivemind normalises over the LAST axis, so a tensor of shape
 * [d0, ..., dk] has rows = d0*...*d(k-1) (1 for a 1-D tensor) rows of dk values. The plain forms treat
 * the array as one row (a 1-D tensor). All other schemes ignore rows.
 *
 * Byte layouts (all multi-byte numbers little-endian; f16 = IEEE binary16, f32 = IEEE binary32):
 *
 *   NONE (0)           n x f32, the values as they are.
 *
 *   MEANSTD_16BIT (1)  n x f16 body, then rows x f32 means, then rows x f32 stds (2n + 8*rows bytes; the
 *                      f32 arrays are not aligned when n is odd). Per row r of length L = n/rows:
 *                      mean_r = sum(x)/L; c = x - mean_r; std_r = max(sqrt(sum(c^2)/L), FLT_EPSILON)
 *                      (the biased std, clamped as hivemind does); body = f16(clamp(c/std_r, +-65504)).
 *                      Decoding: x = f16 * std_r + mean_r. Means and stds must be finite, stds > 0.
 *                      With n = 0 the rows are empty: we write mean 0 and std FLT_EPSILON (hivemind
 *                      would write NaN) and a decoder does not read them.
 *
 *   FLOAT16 (2)        n x f16. Values are clamped to [-65504, 65504] first (hivemind clamps to
 *                      torch.finfo(float16).min/max), so +-Inf becomes +-65504 rather than infinity;
 *                      then rounded to nearest, ties to even (subnormal halves included). NaN stays NaN.
 *
 *   UNIFORM_8BIT (4)   i64 codebook size K (256 when we write), K x f32 codebook, n x u8 indices
 *                      (8 + 4K + n bytes). hivemind's Uniform8BitQuantization: mean m, c = x - m,
 *                      std_unbiased = |c|_2 / sqrt(n-1), scale = 6*std_unbiased/256,
 *                      index = clamp(round_half_even(c/scale) + 128, 0, 255); codebook[k] = the average of
 *                      the original x over the values with index k (0 for empty bins). n < 2 or a zero
 *                      spread puts every value in bin 128. Decoding: x = codebook[index]; every index
 *                      must be < K, 1 <= K <= 256, and the codebook must be finite.
 *
 *   BLOCKWISE_8BIT (5) i64 block count B = ceil(n/4096), i64 code size (256), B x f32 absmax, 256 x f32
 *                      code, n x u8 indices (16 + 4B + 1024 + n bytes). bitsandbytes' quantize_blockwise
 *                      with its default block size 4096 and its signed dynamic code
 *                      (create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), built here
 *                      from its definition): for each block absmax = max|x|, index = the code entry
 *                      nearest to x/absmax (an all-zero block maps to the code's 0). Decoding:
 *                      x = code[index] * absmax[block]. B must match n, the code must have 256 finite
 *                      entries and the absmax values must be finite and >= 0.
 *
 * Schemes with statistics (MEANSTD_16BIT, UNIFORM_8BIT, BLOCKWISE_8BIT) refuse NaN/Inf inputs with
 * DMOE_ENONFINITE (they would poison the statistics for the whole row or block); NONE and FLOAT16 carry
 * them (FLOAT16 clamps Inf as above). Decoders never read outside [in, in+len) and never index outside a
 * codebook, whatever the bytes.
 */
#ifndef DMOE_WIRE_COMPRESS_H
#define DMOE_WIRE_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

/* hivemind's runtime_pb2.CompressionType numbers; QUANTILE_8BIT (3) is not supported. */
typedef enum {
    WIRE_SCHEME_NONE = 0,
    WIRE_SCHEME_MEANSTD_16BIT = 1,
    WIRE_SCHEME_FLOAT16 = 2,
    WIRE_SCHEME_UNIFORM_8BIT = 4,
    WIRE_SCHEME_BLOCKWISE_8BIT = 5
} wire_scheme;

#define WIRE_BLOCKWISE_BLOCK 4096   /* bitsandbytes' default block size, which hivemind relies on */

/* wire_compress_name returns the static name of scheme ("NONE", "FLOAT16", "MEANSTD_16BIT",
 * "UNIFORM_8BIT", "BLOCKWISE_8BIT") or NULL for a value that is not a supported scheme. */
const char *wire_compress_name(wire_scheme scheme);
/* wire_compress_parse sets *scheme from its exact name (as wire_compress_name spells it). Returns 0 or
 * DMOE_EINVAL (unknown name; *scheme untouched). */
int wire_compress_parse(const char *name, wire_scheme *scheme);

/* wire_compress_bound returns the exact number of bytes wire_compress writes for numel values (one row),
 * or SIZE_MAX for an unsupported scheme or a size that overflows. */
size_t wire_compress_bound(wire_scheme scheme, size_t numel);
/* wire_compress_bound_rows is wire_compress_bound for numel values in rows rows (MEANSTD_16BIT stores two
 * floats per row). Returns SIZE_MAX also when rows does not divide numel (rows may be 0 only if numel is
 * 0, and numel 0 allows any rows). */
size_t wire_compress_bound_rows(wire_scheme scheme, size_t numel, size_t rows);

/* wire_compress encodes x[0..n) (read only, stays the caller's) as one row into out, which must hold
 * wire_compress_bound(scheme, n) bytes, and sets *out_len to the bytes written. Returns 0, DMOE_EINVAL
 * (unsupported scheme, NULL pointer with n > 0), DMOE_ETOOBIG (size overflow) or DMOE_ENONFINITE (NaN/Inf
 * input to a scheme with statistics). *out_len is set only on success. */
int wire_compress(wire_scheme scheme, const float *x, size_t n, uint8_t *out, size_t *out_len);
/* wire_compress_rows is wire_compress with rows rows (see the header comment); out must hold
 * wire_compress_bound_rows(scheme, n, rows) bytes. Same returns, plus DMOE_EINVAL for rows that do not
 * divide n. */
int wire_compress_rows(wire_scheme scheme, const float *x, size_t n, size_t rows, uint8_t *out,
                       size_t *out_len);

/* wire_decompress decodes len bytes at in (read only) into out[0..n) for a one-row tensor of n values.
 * Returns 0, DMOE_EINVAL (unsupported scheme, NULL pointer), DMOE_EPROTO (length or header counts do not
 * match n, index outside the codebook, bad codebook size) or DMOE_ENONFINITE (NaN/Inf or negative scale
 * in a header). out may be partly written on failure. */
int wire_decompress(wire_scheme scheme, const uint8_t *in, size_t len, size_t n, float *out);
/* wire_compress_len_ok returns whether len bytes can be scheme's encoding of n values in rows rows, the
 * check to make BEFORE allocating the n floats a header claims: for every scheme a valid encoding holds
 * at least one byte per value, so a few bytes cannot claim gigabytes. It reads
 * no data (UNIFORM_8BIT's codebook size is allowed in 1..256). */
int wire_compress_len_ok(wire_scheme scheme, size_t len, size_t n, size_t rows);
/* wire_decompress_rows is wire_decompress for n values in rows rows (MEANSTD_16BIT); DMOE_EINVAL also
 * when rows does not divide n. */
int wire_decompress_rows(wire_scheme scheme, const uint8_t *in, size_t len, size_t n, size_t rows,
                         float *out);

/* wire_f32_to_f16 returns the IEEE binary16 bits nearest to f (ties to even; overflow to Inf, NaN kept).
 * wire_f16_to_f32 returns the float32 value of the binary16 bits h (exact). */
uint16_t wire_f32_to_f16(float f);
float wire_f16_to_f32(uint16_t h);

#endif
