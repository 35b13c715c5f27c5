/* req_check.h -- checking the tensors of a forward or backward request against its expert's schema.
 *
 * The server (server.c) routes a request on the loop (method, uid, expert, shutting down: O(1)), then
 * fills a req_check with what the check needs -- the schema, copied, and the request -- and runs
 * req_check_run, inline for small payloads or on a worker for big ones. req_check_run decodes every
 * tensor under "inputs" (and "grad_outputs" for a backward), compares count, dtype, row shape and batch
 * size with the schema, decompresses compressed tensors, scans float32 data for NaN and Inf, checks that
 * a mask input (kern_io_info.mask) holds only 0 and 1 and converts it to the declared dtype when it came
 * as another of float32, uint8, int64, bool (hivemind sends det_dropout's mask as int64, a
 * transformer's as bool), and on
 * success points the request's row pointers into the frame (or into the decompressed copies it owns)
 * and computes the activation-cache hash. On failure it leaves a DMOE_* code and a message in the
 * req_check; the server answers it.
 *
 * req_check_cost and req_payload_bytes are the cheap looks the server takes before that, on the loop:
 * the bytes a request will make the node allocate (charged to its quota before anything is), and the
 * bytes of tensor data (which decide inline or worker).
 *
 * Threads: req_check_run reads the frame and writes only the req_check and its request, so it may run
 * on any thread while nothing else touches them; the rest is called on the loop.
 */
#ifndef DMOE_REQ_CHECK_H
#define DMOE_REQ_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "actors/serve/batch.h"
#include "kernels/kern_expert.h"
#include "runtime/rt_pool.h"
#include "wire/wire_msg.h"

/* A request being checked: what req_check_run needs, copied so that a worker touches nothing else. */
typedef struct req_check {
    rt_job job;                        /* the server's: its completion comes back to the server */
    ex_req *r;                         /* owns the frame, the charge, the conn ref and hold */
    struct expert *e;                  /* the server's, for the completion; never read by the check */
    const char *uid;                   /* the expert's uid (immutable while the expert lives) */
    int n_in, n_out;
    kern_io_info in[KERN_MAX_IO], out[KERN_MAX_IO];
    int64_t max_batch_size;
    int hash;                          /* compute r->in_hash (the expert keeps activations) */
    int rc;                            /* set by req_check_run: 0 or a DMOE_* code */
    char err[384];                     /* its message when rc != 0 */
} req_check;

/* req_check_run checks k->r's tensors against the schema in k; on success fills r's row pointers, rows
 * and hash and sets k->rc = 0, else k->rc and k->err. Decompressed or converted tensors go to r->owned
 * (freed with the request). Any thread (see above). */
void req_check_run(req_check *k);

/* req_check_tensors checks the tensors under key of m against io[0..n) of the expert uid: count, dtype,
 * row dims, at least one row, the common batch size *B (set by the first tensor when *B < 0) within
 * max_batch, decompression, finite float32 values, masks. Sets rows[i] to each tensor's rows and
 * owned[i] to what it allocated for them (the caller frees, also on failure). Returns 0, or a DMOE_*
 * code with err filled: the message names the expert, the tensor, what the schema wants and what came
 * ("expert.0 takes input of shape [B, 16]; got [3, 11]"). */
int req_check_tensors(const wire_msg *m, const char *key, const char *uid, const kern_io_info *io, int n,
                      int64_t max_batch, int64_t *B, const uint8_t **rows, void **owned, char *err, size_t errlen);

/* req_check_cost returns the bytes a request of direction dir (EX_FWD, EX_BWD) will make the node
 * allocate beyond its frame and tree for an expert with max_batch rows per request: the request's own
 * records, its decompressed tensors and its masks converted to the declared dtype (each checked as req_check_tensors will, so a header claiming
 * more rows than max_batch, or more values than its bytes can hold, costs nothing: it is refused before
 * anything is allocated). O(tensors). */
size_t req_check_cost(const wire_msg *m, int dir, int64_t max_batch);

/* req_payload_bytes returns the bytes of tensor data under key (0 for anything malformed: the check
 * reports it). O(tensors). */
size_t req_payload_bytes(const wire_msg *m, const char *key);

#endif
