/* fuzz_frame.c -- libFuzzer harness: the frame reader (wire/wire_frame) on an arbitrary byte stream.
 *
 * Input: byte 0 picks the reader's max_frame (1 << (b % 17): 1 byte to 64 KiB, so the limit is met
 * often), bytes 1-2 seed the chunk sizes, the rest is the stream a peer sends. The stream is fed twice:
 * all at once (as one big read would bring it), and in chunks of 1 to 64 bytes (as a peer trickling it
 * would). Each way, every frame handed out must be exactly the bytes the stream holds at that place (its
 * header's length, its body), and the reader must stop with the error the next header calls for
 * (DMOE_EPROTO for length 0, DMOE_ETOOBIG over max_frame) or with the stream consumed. Both ways must
 * agree on the frames, the outcome and whether a partial frame is left. The reader is freed each time.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "test/fuzz/fuzz_common.h"
#include "wire/wire_frame.h"

/* How one feed of the stream ended. */
typedef struct {
    size_t frames;     /* frames handed out */
    size_t consumed;   /* bytes the reader took */
    int rc;            /* 0, or the error that stopped it */
    int pending;       /* a partial frame held at the end */
} feed_end;

/* feed runs s[n] through a reader with max_frame, in chunks from the xorshift seed (0: one chunk),
 * checking every frame against the stream. */
static feed_end feed(const uint8_t *s, size_t n, size_t max_frame, uint32_t seed)
{
    wire_frame_reader r;
    wire_frame_reader_init(&r, max_frame);
    feed_end e = {0, 0, 0, 0};
    size_t start = 0;              /* where the current frame's header begins */
    uint32_t x = seed | 1;
    while (e.consumed < n && e.rc == 0) {
        size_t chunk = n - e.consumed;
        if (seed) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            size_t c = 1 + x % 64;
            if (c < chunk) chunk = c;
        }
        size_t off = 0;
        while (off < chunk) {
            size_t used = 0, len = 0;
            uint8_t *frame = NULL;
            int rc = wire_frame_feed(&r, s + e.consumed + off, chunk - off, &used, &frame, &len);
            FUZZ_CHECK(used <= chunk - off);
            off += used;
            if (rc < 0) {
                /* the header at start is complete and says why */
                FUZZ_CHECK(start + WIRE_FRAME_HDR <= e.consumed + off);
                uint32_t want = fuzz_be32(s + start);
                FUZZ_CHECK(rc == (want == 0 ? DMOE_EPROTO : DMOE_ETOOBIG));
                FUZZ_CHECK(want == 0 || want > max_frame);
                FUZZ_CHECK(!wire_frame_pending(&r));
                e.rc = rc;
                break;
            }
            if (rc == 0) {
                FUZZ_CHECK(off == chunk);
                continue;
            }
            FUZZ_CHECK(rc == 1);
            size_t end = e.consumed + off;
            FUZZ_CHECK(end >= start + WIRE_FRAME_HDR);
            FUZZ_CHECK(len == fuzz_be32(s + start));
            FUZZ_CHECK(len >= 1 && len <= max_frame);
            FUZZ_CHECK(end == start + WIRE_FRAME_HDR + len);
            FUZZ_CHECK(memcmp(frame, s + start + WIRE_FRAME_HDR, len) == 0);
            free(frame);
            e.frames++;
            start = end;
        }
        e.consumed += off;
    }
    e.pending = wire_frame_pending(&r);
    FUZZ_CHECK(e.pending == (e.rc == 0 && start < n));
    wire_frame_reader_free(&r);
    return e;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3) return 0;
    size_t max_frame = (size_t)1 << (data[0] % 17);
    uint32_t seed = fuzz_be16(data + 1) + 1;
    const uint8_t *s = data + 3;
    size_t n = size - 3;
    feed_end whole = feed(s, n, max_frame, 0);
    feed_end bits = feed(s, n, max_frame, seed);
    FUZZ_CHECK(whole.frames == bits.frames);
    FUZZ_CHECK(whole.rc == bits.rc);
    FUZZ_CHECK(whole.consumed == bits.consumed);
    FUZZ_CHECK(whole.pending == bits.pending);
    return 0;
}
