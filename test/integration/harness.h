/* harness.h -- black-box helpers for the integration tests: start the cmd/ programs on loopback, talk
 * to a node over raw TCP with blocking sockets, stop everything the test started.
 *
 * The programs are found in $DMOE_BUILD (set by `make test`, default "build"). A node is started with
 * --host_maddrs /ip4/127.0.0.1/tcp/0 and its port and DHT address are read from its start-up lines
 * (actors/node/node_banner.h); its log goes to a temporary file that th_node_log returns. Every wait is
 * bounded in time, and every process a test starts is stopped when the test ends, also when an
 * assertion fails half-way.
 */
#ifndef DMOE_TEST_HARNESS_H
#define DMOE_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "wire/wire_msg.h"

typedef struct {
    pid_t pid;
    int port;
    char log_path[256];
    char maddr[96];
    char dht_maddr[256];   /* from its "Running DHT node on ['...']" line ("client mode" in client mode) */
} th_node;

/* th_node_start runs dmoe-node with the NULL-terminated extra args and waits (<= 20 s) for its port.
 * Returns 0, or -1 (the node is killed, its log printed to stderr). */
int th_node_start(th_node *n, const char *const *args);
/* th_node_start_fails is th_node_start for a test that expects the node not to start: returns 1 when it
 * did not (printing nothing: an expected failure stays out of a passing run), 0 when it started (it is
 * stopped, and that is said on stderr). */
int th_node_start_fails(th_node *n, const char *const *args);
/* th_node_stop sends sig (SIGTERM/SIGINT/SIGKILL) and waits (<= 20 s, then SIGKILL); returns the exit
 * status as from waitpid's WEXITSTATUS, 128+signal when killed by one, or -1. */
int th_node_stop(th_node *n, int sig);
/* th_node_alive returns whether the process still runs. */
int th_node_alive(const th_node *n);
/* th_node_log reads the node's log into a malloc'd string. */
char *th_node_log(const th_node *n);

/* th_run runs a program from $DMOE_BUILD with args (NULL-terminated), stdout and stderr captured into out
 * (cap bytes, NUL-terminated), with a time limit. Returns the exit status, or -1. */
int th_run(const char *prog, const char *const *args, char *out, size_t cap, int timeout_s);

/* th_spawn starts a program from $DMOE_BUILD with args in the background, stdout and stderr to out_path;
 * it dies with the test. Returns its pid or -1. th_wait waits (<= timeout_s, then SIGKILL) and returns
 * its exit status as th_node_stop does. */
pid_t th_spawn(const char *prog, const char *const *args, const char *out_path);
int th_wait(pid_t pid, int timeout_s);
/* th_file returns a file's whole text (malloc'd, "" when missing). */
char *th_file(const char *path);

/* th_write_file writes text to path and gives it mode. Returns 0 or -1. */
int th_write_file(const char *path, const char *text, mode_t mode);
/* th_key_file writes a node identity file (--identity_path) whose Ed25519 seed is 32 bytes b, mode 0600,
 * and writes its public key as 64 hex digits (a --trusted_keys line) into pk_hex. Returns 0 or -1. */
int th_key_file(const char *path, uint8_t b, char pk_hex[65]);
/* th_connect opens a blocking TCP connection to 127.0.0.1:port with 10 s receive timeouts; -1 on error. */
int th_connect(int port);
/* th_send_all writes n bytes; returns 0 or -1. */
int th_send_all(int fd, const void *p, size_t n);
/* th_send_frame writes a 4-byte big-endian length and the body. */
int th_send_frame(int fd, const void *body, size_t n);
/* th_send_out sends a wire_out (consumed) as one frame. */
int th_send_out(int fd, wire_out *o);
/* th_recv_msg reads one frame and decodes it into *m (wire_msg_free it). Returns 0, -1 on EOF/timeout,
 * or a negative DMOE code when the frame does not decode. */
int th_recv_msg(int fd, wire_msg *m);
/* th_peer_closed returns 1 when the peer closed the connection within timeout_ms (reads and discards). */
int th_peer_closed(int fd, int timeout_ms);

/* th_http_get sends GET path over HTTP/1.0 to 127.0.0.1:port and returns the whole response, headers
 * included (malloc'd, NUL-terminated; at most 64 KiB), or NULL when it cannot connect. */
char *th_http_get(int port, const char *path);

/* th_expert_stat reads one counter of expert uid's stats from the node (`dmoe-call info UID --json`).
 * Returns it, or -1 when the call failed or the stats have no such key. */
long th_expert_stat(const th_node *n, const char *uid, const char *key);

/* th_ping checks that the node at port answers a ping on a fresh connection. */
int th_ping(int port);

/* th_request builds a forward (gout == NULL) or backward request of float32 [B, H] tensors. */
wire_out *th_request(uint64_t id, const char *uid, const float *x, int64_t B, int64_t H, const float *gout);
/* th_result_f32 copies the first tensor of the result array key into out (B*H floats). Returns 0 when
 * the reply is a success with a float32 [B, H] tensor. */
int th_result_f32(const wire_msg *m, const char *key, int64_t B, int64_t H, float *out);

/* th_write_npy writes x as a float32 [rows, cols] .npy file; returns 0 or -1 (message on stderr). */
int th_write_npy(const char *path, const float *x, int64_t rows, int64_t cols);
/* th_read_npy reads a float32 [rows, cols] .npy file into a malloc'd array; NULL (message on stderr) when
 * it cannot, or when the dtype or shape differs. */
float *th_read_npy(const char *path, int64_t rows, int64_t cols);

/* th_fill_normal fills x[n] with seeded normal values. */
void th_fill_normal(float *x, size_t n, uint64_t seed);
/* th_max_abs_diff returns max |a - b| over n floats. */
float th_max_abs_diff(const float *a, const float *b, size_t n);

#endif
