/* test_api_sigpipe.c -- libdmoe and SIGPIPE (dmoe.h, "Signals"): the library leaves the program's SIGPIPE
 * disposition as it found it, its loop thread (the one that writes sockets) runs with SIGPIPE blocked,
 * and in a program that keeps the default disposition (terminate) a peer that closes the connection
 * while the library is still writing a request to it fails the call (DMOE_ECONN), not the program. The
 * peer is a plain socket in a thread of the test that reads a little and closes. Only the public header
 * is used, and /proc to read the threads' signal masks. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/api/dmoe.h"

/* A request far larger than the loopback socket buffers, so the library is mid-write when the peer goes. */
#define ROWS 4096
#define COLS 1024

typedef struct {
    int lfd;
    size_t got;   /* bytes read before closing */
} closer;

/* closer_main accepts one connection, reads 64 KiB of the request, then ends its side (FIN), drains what
 * already arrived and closes: the library's next write meets a closed socket (EPIPE, SIGPIPE). */
static void *closer_main(void *arg)
{
    closer *c = arg;
    int fd = accept(c->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    char buf[4096];
    while (c->got < 65536) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) break;
        c->got += (size_t)r;
    }
    shutdown(fd, SHUT_WR);
    usleep(100 * 1000);   /* the library's side is now in CLOSE_WAIT, still writing */
    while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {}
    close(fd);
    return NULL;
}

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(fd, 4), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* threads_blocking_sigpipe counts this process's threads whose signal mask holds SIGPIPE (/proc). */
static int threads_blocking_sigpipe(void)
{
    char path[64], line[256];
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/task", (int)getpid());
    DIR *dir = opendir(path);
    cr_assert(dir);
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.') continue;
        char st[320];
        snprintf(st, sizeof st, "%s/%s/status", path, de->d_name);
        FILE *f = fopen(st, "r");
        if (!f) continue;   /* a thread that just ended */
        while (fgets(line, sizeof line, f)) {
            unsigned long long mask;
            if (sscanf(line, "SigBlk: %llx", &mask) == 1 && (mask & (1ull << (SIGPIPE - 1)))) n++;
        }
        fclose(f);
    }
    closedir(dir);
    return n;
}

static void on_sigpipe(int sig) { (void)sig; }

Test(api_sigpipe, peer_closing_mid_request_fails_the_call_not_the_program, .timeout = 60)
{
    /* a program's own handler survives the library's start */
    struct sigaction mine = {.sa_handler = on_sigpipe}, now;
    sigemptyset(&mine.sa_mask);
    cr_assert_eq(sigaction(SIGPIPE, &mine, NULL), 0);
    int before = threads_blocking_sigpipe();   /* the test runner's own threads may block it too */
    dmoe_ctx *ctx;
    char err[512];
    cr_assert_eq(dmoe_ctx_new(&ctx, err, sizeof err), 0, "%s", err);
    cr_assert_eq(threads_blocking_sigpipe(), before + 1, "the loop thread, and only it, blocks SIGPIPE");
    sigset_t mask;
    cr_assert_eq(pthread_sigmask(SIG_BLOCK, NULL, &mask), 0);
    cr_assert_not(sigismember(&mask, SIGPIPE), "dmoe_ctx_new changed the caller's signal mask");
    cr_assert_eq(sigaction(SIGPIPE, NULL, &now), 0);
    cr_assert(now.sa_handler == on_sigpipe, "dmoe_ctx_new replaced the program's SIGPIPE handler");
    /* and with the default disposition (terminate), a broken connection must not end the program */
    signal(SIGPIPE, SIG_DFL);

    dmoe_dht *d = NULL;
    cr_assert_eq(dmoe_dht_join(ctx, NULL, 0, 0, NULL, &d, err, sizeof err), 0, "%s", err);
    float *x = calloc((size_t)ROWS * COLS, sizeof *x);
    cr_assert(x);
    dmoe_tensor in = {.dtype = DMOE_FLOAT32, .ndim = 2, .shape = {ROWS, COLS}, .data = x};
    for (int round = 0; round < 3; round++) {   /* a fresh connection each round: the pool drops a broken one */
        closer c = {.got = 0};
        int port;
        c.lfd = listen_any(&port);
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, closer_main, &c), 0);
        char maddr[128];
        snprintf(maddr, sizeof maddr, "/ip4/127.0.0.1/tcp/%d", port);
        dmoe_expert *e = NULL;
        cr_assert_eq(dmoe_expert_new(d, "expert.0", maddr, &e, err, sizeof err), 0, "%s", err);
        dmoe_tensors *out = NULL;
        int rc = dmoe_expert_forward(e, &in, 1, 20, &out, err, sizeof err);
        cr_assert_eq(rc, DMOE_ECONN, "round %d: %s (%s)", round, dmoe_strerror(rc), err);
        cr_assert_null(out);
        pthread_join(t, NULL);
        cr_assert(c.got >= 65536, "the peer closed before reading: %zu bytes", c.got);
        close(c.lfd);
        dmoe_expert_free(e);
    }
    free(x);
    dmoe_dht_free(d);
    dmoe_ctx_free(ctx);
}
