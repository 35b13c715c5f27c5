/* fake_node.h -- a node that lies, for the tests of clients that must not trust answers.
 *
 * fake_node_start listens on 127.0.0.1 (port 0: the kernel picks one) in a thread of the test process
 * and speaks the node protocol (wire/PROTOCOL.md) for a table of experts: `ping`, `info` with a uid
 * (a valid float32 [-1, hidden] -> [-1, hidden] schema) and `forward` / `backward`. An honest expert
 * answers y = scale * x (forward) and scale * grad_output (backward); the others answer with what their
 * mode says: a wrong width, NaN, Inf, float16 data, one row too many, or an error whose code is 0.
 * fake_node_stop closes every socket and joins the thread, so nothing outlives the test.
 *
 * The thread owns the sockets; the test thread only reads the call counters after fake_node_stop.
 */
#ifndef DMOE_TEST_FAKE_NODE_H
#define DMOE_TEST_FAKE_NODE_H

typedef enum {
    FAKE_HONEST,   /* scale * x */
    FAKE_WIDE,     /* [B, hidden + 1] */
    FAKE_NAN,      /* [B, hidden] with one NaN */
    FAKE_INF,      /* [B, hidden] with one +Inf */
    FAKE_F16,      /* dtype "float16", [B, hidden] */
    FAKE_ROWS,     /* [B + 1, hidden] */
    FAKE_ERR0,     /* {"error": {"code": 0, ...}} */
} fake_mode;

typedef struct {
    const char *uid;
    fake_mode mode;
    float scale;
} fake_expert;

typedef struct fake_node fake_node;

/* fake_node_start serves ex[0..n) (copied; at most 16) with rows `hidden` wide. Returns the node, or
 * NULL when the socket or the thread cannot be made. */
fake_node *fake_node_start(const fake_expert *ex, int n, int hidden);
/* fake_node_port returns the port it listens on. */
int fake_node_port(const fake_node *f);
/* fake_node_stop stops the thread, closes every socket and frees f; returns the number of forward and
 * backward requests that reached expert uid (0 when uid is NULL). */
int fake_node_stop(fake_node *f, const char *uid);

#endif
