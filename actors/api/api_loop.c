/* api_loop.c -- the library's loop thread and its inbox: how calls from any thread reach the loop.
 *
 * dmoe_ctx_new creates an rt_loop and an eventfd watched by a persistent event on it, then starts the
 * loop thread, which runs the loop until dmoe_ctx_free asks it to stop, then frees the loop itself (so
 * no other thread ever touches the event base or a socket). api_post appends an operation to the inbox
 * under a mutex and writes the eventfd only when the inbox was empty (one wake-up per burst, as
 * rt_pool does in the other direction); the loop drains the inbox unlocked, in posting order, running
 * each operation's start function. api_sync waits for the completion on a condition variable.
 *
 * Signals: the loop thread runs with SIGPIPE blocked (see dmoe_ctx_new); nothing process-wide changes.
 *
 * Design notes: an operation's start function only starts asynchronous work (a lookup, a call, a
 * layer forward), so a drained inbox never holds the loop long. Stopping: dmoe_ctx_free appends a stop
 * operation and sets the flag that refuses later posts under one lock, so the stop operation is the
 * last the loop runs; it breaks the loop and the thread ends.
 */
#include "actors/api/api_impl.h"

#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct dmoe_ctx {
    rt_loop *l;
    struct event *ev;
    int efd;
    pthread_t thread;
    pthread_mutex_t mu;          /* guards head, tail, stopping */
    api_op *head, *tail;
    int stopping;
    int running;                 /* loop thread: keep running the loop */
};

int dmoe_api_version(void) { return DMOE_API_VERSION; }

rt_loop *api_loop(dmoe_ctx *ctx) { return ctx->l; }

static void run_inbox(dmoe_ctx *c)
{
    pthread_mutex_lock(&c->mu);
    api_op *op = c->head;
    c->head = c->tail = NULL;
    pthread_mutex_unlock(&c->mu);
    while (op) {
        api_op *next = op->next;
        op->next = NULL;
        op->run(op);
        op = next;
    }
}

static void on_inbox(evutil_socket_t fd, short what, void *arg)
{
    dmoe_ctx *c = arg;
    uint64_t v;
    while (read(fd, &v, sizeof v) < 0 && errno == EINTR) {}
    run_inbox(c);
}

/* The stop operation: the last one the loop runs. */
static void run_stop(api_op *op)
{
    dmoe_ctx *c = op->ctx;
    free(op);
    c->running = 0;
    rt_loop_break(c->l);
}

static void *loop_main(void *arg)
{
    dmoe_ctx *c = arg;
    while (c->running) rt_loop_run(c->l);   /* the inbox event keeps the loop alive until the stop op */
    event_free(c->ev);
    rt_loop_free(c->l);
    return NULL;
}

int dmoe_ctx_new(dmoe_ctx **out, char *err, size_t errlen)
{
    dmoe_ctx *c = calloc(1, sizeof *c);
    if (!c) { dmoe_set_err(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    c->efd = -1;
    pthread_mutex_init(&c->mu, NULL);
    c->l = rt_loop_new();
    if (c->l) c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->efd >= 0) c->ev = event_new(rt_loop_base(c->l), c->efd, EV_READ | EV_PERSIST, on_inbox, c);
    if (!c->ev || event_add(c->ev, NULL) != 0) {
        dmoe_set_err(err, errlen, "cannot create the event loop");
        goto fail;
    }
    /* the library's sockets must not kill the process when a peer goes away */
    /* The loop thread writes every socket of the library, with writev (libevent), which raises SIGPIPE
     * on a connection the peer has closed; a library must not change the process's disposition (a
     * program's handler, or its default), so the loop thread starts with SIGPIPE blocked instead: such
     * a write then just fails with EPIPE, and the signal stays pending on that thread, never delivered. */
    sigset_t pipe_set, old_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);   /* the new thread inherits the caller's mask */
    c->running = 1;
    int started = pthread_create(&c->thread, NULL, loop_main, c);
    pthread_sigmask(SIG_SETMASK, &old_set, NULL);
    if (started != 0) {
        dmoe_set_err(err, errlen, "cannot start the loop thread");
        goto fail;
    }
    *out = c;
    return 0;
fail:
    if (c->ev) event_free(c->ev);
    if (c->efd >= 0) close(c->efd);
    rt_loop_free(c->l);
    pthread_mutex_destroy(&c->mu);
    free(c);
    return DMOE_EINTERNAL;
}

int api_post(dmoe_ctx *c, api_op *op)
{
    op->ctx = c;
    op->next = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->stopping) { pthread_mutex_unlock(&c->mu); return DMOE_ESHUTDOWN; }
    int was_empty = c->head == NULL;
    if (c->tail) c->tail->next = op;
    else c->head = op;
    c->tail = op;
    pthread_mutex_unlock(&c->mu);
    if (was_empty) {
        uint64_t one = 1;
        while (write(c->efd, &one, sizeof one) < 0 && errno == EINTR) {}
    }
    return 0;
}

void dmoe_ctx_free(dmoe_ctx *c)
{
    if (!c) return;
    api_op *stop = calloc(1, sizeof *stop);
    if (!stop) return;   /* without its stop op the loop cannot be told to end: leak rather than free it */
    stop->run = run_stop;
    stop->ctx = c;
    /* the stop op is the inbox's last: appended under the same lock that refuses every later post */
    pthread_mutex_lock(&c->mu);
    int was_empty = c->head == NULL;
    if (c->tail) c->tail->next = stop;
    else c->head = stop;
    c->tail = stop;
    c->stopping = 1;
    pthread_mutex_unlock(&c->mu);
    if (was_empty) {
        uint64_t one = 1;
        while (write(c->efd, &one, sizeof one) < 0 && errno == EINTR) {}
    }
    pthread_join(c->thread, NULL);
    close(c->efd);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void api_done(api_op *op, int err, const char *msg)
{
    if (op->cb) op->cb(op->arg, err, msg ? msg : (err ? dmoe_strerror(err) : ""));
    if (op->free) op->free(op);
    else free(op);
}

/* ---- blocking calls ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, err;
    char msg[512];
} waiter;

static void wake(void *arg, int err, const char *msg)
{
    waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->err = err;
    snprintf(w->msg, sizeof w->msg, "%s", msg ? msg : "");
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void op_release(api_op *op)
{
    if (op->free) op->free(op);
    else free(op);
}

int api_sync(dmoe_ctx *c, api_op *op, char *err, size_t errlen)
{
    if (pthread_equal(pthread_self(), c->thread)) {
        op_release(op);
        dmoe_set_err(err, errlen, "a blocking dmoe call from the library's own thread (a callback) would wait forever");
        return DMOE_EINVAL;
    }
    waiter w = { .done = 0 };
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    op->cb = wake;
    op->arg = &w;
    int rc = api_post(c, op);
    if (rc) {
        op_release(op);
        dmoe_set_err(err, errlen, "the dmoe library is shutting down");
    } else {
        pthread_mutex_lock(&w.mu);
        while (!w.done) pthread_cond_wait(&w.cv, &w.mu);   /* every op completes: see the header */
        pthread_mutex_unlock(&w.mu);
        rc = w.err;
        if (rc) dmoe_set_err(err, errlen, "%s", w.msg[0] ? w.msg : dmoe_strerror(rc));
        else dmoe_set_err(err, errlen, "%s", "");
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return rc;
}

int api_async(dmoe_ctx *c, api_op *op, dmoe_callback cb, void *arg)
{
    op->cb = cb;
    op->arg = arg;
    int rc = api_post(c, op);
    if (rc) op_release(op);
    return rc;
}
