/* wan-link -- one emulated wide-area link (test/integration/wan/wan_link.h) as a program, for tests and
 * scripts (scripts/loadtest.sh wan). Test-only: built as build/test/wan-link, not installed.
 *
 *   wan-link --listen 127.0.0.12:0 --target 127.0.0.2:7000 --delay_ms 25 [--jitter_ms 2] [--rate_kib_s 1000]
 *            [--partition hold|drop]
 *
 * It prints "wan-link listening on HOST:PORT -> TARGET" once it listens (port 0: the one the OS chose),
 * then relays until SIGTERM or SIGINT (exit 0). Signals drive it at run time: SIGUSR1 starts a
 * partition (--partition: hold, the default, holds every byte and connection until healed; drop resets
 * every connection and refuses new ones), SIGUSR2 heals it, SIGHUP resets every connection once.
 * Exit status 2: bad flags or an address it cannot listen on.
 */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/text/rt_args.h"
#include "test/integration/wan/wan_link.h"
#include "wire/wire_maddr.h"

typedef struct {
    struct event_base *base;
    wan_link *link;
    int mode;
} app;

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    app *a = arg;
    if (sig == SIGUSR1) wan_link_partition(a->link, a->mode);
    else if (sig == SIGUSR2) wan_link_partition(a->link, WAN_OPEN);
    else if (sig == SIGHUP) wan_link_reset(a->link);
    else event_base_loopbreak(a->base);
}

int main(int argc, char **argv)
{
    const char *listen = NULL, *target = NULL, *partition = "hold";
    wan_link_cfg cfg = {0};
    rt_arg flags[] = {
        {"listen", ARG_STR, &listen, "HOST:PORT to listen on (port 0: any)", "Link", NULL},
        {"target", ARG_STR, &target, "HOST:PORT to relay to", "Link", NULL},
        {"delay_ms", ARG_F64, &cfg.delay_ms, "one-way delay, each direction (RTT = 2 x delay)", "Link", NULL},
        {"jitter_ms", ARG_F64, &cfg.jitter_ms, "plus uniform random [0, jitter] per chunk, order kept", "Link", NULL},
        {"rate_kib_s", ARG_F64, &cfg.rate_kib_s, "KiB/s per direction, all connections together (0: unlimited)",
         "Link", NULL},
        {"partition", ARG_STR, &partition, "what SIGUSR1 does: hold (blackhole, nothing lost) or drop (reset)",
         "Link", NULL},
    };
    int nflags = (int)(sizeof flags / sizeof flags[0]), npos = 0;
    char err[256];
    int rc = rt_args_parse(argc, argv, flags, nflags, NULL, 0, &npos, err, sizeof err);
    if (rc == 1) {
        rt_args_usage(stdout, "wan-link --listen HOST:PORT --target HOST:PORT [flags]", flags, nflags);
        return 0;
    }
    wire_maddr la, ta;
    struct sockaddr_storage ls, ts;
    socklen_t ll, tl;
    if (rc == 0 && (!listen || !target)) { snprintf(err, sizeof err, "--listen and --target are required"); rc = 1; }
    if (rc == 0 && (wire_maddr_parse_listen(listen, &la, err, sizeof err) != 0 || wire_maddr_sockaddr(&la, &ls, &ll) != 0))
        rc = 1;
    if (rc == 0 && (wire_maddr_parse(target, &ta, err, sizeof err) != 0 || wire_maddr_sockaddr(&ta, &ts, &tl) != 0))
        rc = 1;
    if (rc == 0 && (cfg.delay_ms < 0 || cfg.jitter_ms < 0 || cfg.rate_kib_s < 0)) {
        snprintf(err, sizeof err, "delay, jitter and rate must be >= 0");
        rc = 1;
    }
    app a = { .mode = strcmp(partition, "drop") == 0 ? WAN_DROP : WAN_HOLD };
    if (rc == 0 && strcmp(partition, "hold") != 0 && strcmp(partition, "drop") != 0) {
        snprintf(err, sizeof err, "--partition is hold or drop");
        rc = 1;
    }
    if (rc != 0) {
        fprintf(stderr, "wan-link: %s\n", err[0] ? err : "bad flags");
        rt_args_free(flags, nflags);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    a.base = event_base_new();
    a.link = a.base ? wan_link_new(a.base, (struct sockaddr *)&ls, ll, (struct sockaddr *)&ts, tl, &cfg, err, sizeof err)
                    : NULL;
    if (!a.link) {
        fprintf(stderr, "wan-link: %s\n", a.base ? err : "out of memory");
        if (a.base) event_base_free(a.base);
        rt_args_free(flags, nflags);
        return 2;
    }
    const int sigs[] = { SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT };
    struct event *ev[5];
    for (int i = 0; i < 5; i++) {
        ev[i] = evsignal_new(a.base, sigs[i], on_signal, &a);
        event_add(ev[i], NULL);
    }
    printf("wan-link listening on %s:%d -> %s\n", la.host, wan_link_port(a.link), target);
    fflush(stdout);
    event_base_dispatch(a.base);
    for (int i = 0; i < 5; i++) event_free(ev[i]);
    wan_link_free(a.link);
    event_base_free(a.base);
    rt_args_free(flags, nflags);
    return 0;
}
