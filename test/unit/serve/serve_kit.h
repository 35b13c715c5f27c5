/* serve_kit.h -- helpers for the in-process tests of the serving path (test/unit/serve/): one rt_loop
 * in the test's own thread, driven in short runs; connections over socketpairs whose far end the test
 * reads and writes with plain socket calls; requests built by hand for the expert and its queues.
 *
 * Every wait is bounded: sk_spin runs the loop for a fixed time, sk_recv_msg gives up after max_ms.
 */
#ifndef DMOE_TEST_SERVE_KIT_H
#define DMOE_TEST_SERVE_KIT_H

#include <stddef.h>
#include <stdint.h>

#include "actors/net/conn.h"
#include "actors/serve/expert.h"
#include "actors/serve/batch.h"
#include "runtime/rt_actor.h"
#include "wire/wire_msg.h"

/* sk_spin runs the loop for about ms milliseconds (>= 1). */
void sk_spin(rt_loop *l, int ms);
/* sk_conn_pair makes a socketpair, wraps one end in a conn (ops, arg, lim as for conn_new) and returns
 * it; *far is the other end, blocking, for the test. */
conn *sk_conn_pair(rt_loop *l, const conn_ops *ops, void *arg, const conn_limits *lim, int *far);
/* sk_recv_msg runs the loop until one whole frame can be read from fd and decodes it into *m
 * (wire_msg_free it). Returns 0, or -1 when none came within max_ms. */
int sk_recv_msg(rt_loop *l, int fd, wire_msg *m, int max_ms);
/* sk_expect_error asserts that the next frame on fd (within 2 s) is an error reply to id with code (and,
 * when msg is not NULL, that message). */
void sk_expect_error(rt_loop *l, int fd, uint64_t id, int code, const char *msg);
/* sk_send_out writes o (consumed) to fd as one frame. Returns 0 or -1. */
int sk_send_out(int fd, wire_out *o);
/* sk_result_f32 copies tensor idx of the result array key of a success reply into out (n floats) and
 * returns its rows, or -1 when the reply does not hold a float32 tensor of n elements there. */
int64_t sk_result_f32(const wire_msg *m, const char *key, int idx, float *out, size_t n);
/* sk_req makes a request of dir for c (referenced and held) with id and rows whose input 0 (and, for a
 * backward, grad_output 0) point at x: the caller keeps x alive until the request's batch is built. */
ex_req *sk_req(conn *c, uint64_t id, int dir, int64_t rows, const float *x);
/* The probe classes of the expert tests (y = w x, one parameter): their setup, rows "x" -> "y" of
 * cfg->hidden_dim floats and the parameter "w"; their init, w = 1; their workspace, none. */
int sk_probe_setup(kern_model *m, const kern_config *cfg);
void sk_probe_init(const kern_model *m, float *params, uint64_t seed);
size_t sk_probe_ws(const kern_model *m, int64_t B);
/* sk_probe_expert makes expert uid on l from cfg (class, sizes, pool: the caller's) with what every
 * probe expert shares: SGD at lr 0.5, no wire compression. It asserts the expert was made. */
expert *sk_probe_expert(rt_loop *l, const char *uid, expert_cfg cfg);
/* sk_noop_ops: a conn_ops whose on_msg frees what arrives. */
extern const conn_ops sk_noop_ops;

#endif
