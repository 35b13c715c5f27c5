/* test_cli.c -- every message a user of the programs sees (issue 14, the command-line half): one exit
 * status rule (0 ok, 1 remote or network failure, 2 bad usage or bad local input) with a message that
 * names the cause; --version and --help on every program, help that names each value (no bare V) and
 * says each default once; dmoe-call's command list, per-command help and typo suggestion; local input
 * checked before anything is sent; a port that speaks another protocol named as such.
 *
 * The programs run from $DMOE_BUILD (th_run captures their output); nodes and the fake HTTP server run
 * on loopback with ports from the OS, and everything started here is stopped here. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runtime/rt_version.h"
#include "test/integration/harness.h"

static const char *const programs[] = {"dmoe-node", "dmoe-call", "dmoe-train", "dmoe-bench"};

/* help_is_tidy asserts what every --help text must hold: the exit-status rule, a metavar for each
 * value (never the old bare V, never the VALUE fallback) and at most one default per flag. */
static void help_is_tidy(const char *what, const char *out)
{
    cr_assert(strstr(out, "usage: ") == out, "%s: %s", what, out);
    cr_assert(strstr(out, "exit status: 0 success, 1 a remote or network failure, 2 bad usage or bad local input"),
              "%s states the exit statuses: %s", what, out);
    const char *line = out;
    while (line && *line) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char l[1024];
        snprintf(l, sizeof l, "%.*s", (int)(len < sizeof l ? len : sizeof l - 1), line);
        if (strncmp(l, "  --", 4) == 0) {
            size_t n = strlen(l);
            cr_assert(!(n > 2 && strcmp(l + n - 2, " V") == 0) && !strstr(l, " V ") && !strstr(l, " VALUE"),
                      "%s: a flag without a meaningful metavar: '%s'", what, l);
        }
        const char *d = strstr(l, "(default");
        cr_assert(!d || !strstr(d + 1, "(default"), "%s: a default said twice: '%s'", what, l);
        line = end ? end + 1 : NULL;
    }
}

Test(cli, every_program_has_version_and_tidy_help, .timeout = 60)
{
    static char out[65536];
    for (size_t i = 0; i < sizeof programs / sizeof programs[0]; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s %s\n", programs[i], DMOE_VERSION);
        cr_assert_eq(th_run(programs[i], (const char *const[]){"--version", NULL}, out, sizeof out, 20), 0, "%s", out);
        cr_assert_str_eq(out, want);
        cr_assert_eq(th_run(programs[i], (const char *const[]){"--help", NULL}, out, sizeof out, 20), 0, "%s", out);
        help_is_tidy(programs[i], out);
        cr_assert_eq(th_run(programs[i], (const char *const[]){"--no_such_flag", "1", NULL}, out, sizeof out, 20), 2,
                     "%s: an unknown flag is bad usage: %s", programs[i], out);
        cr_assert(strstr(out, "unknown flag --no_such_flag"), "%s", out);
    }
}

Test(cli, dmoe_call_lists_its_commands_and_shows_each_ones_flags, .timeout = 60)
{
    static char out[65536];
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--help", NULL}, out, sizeof out, 20), 0, "%s", out);
    const char *cmds[] = {"ping", "info", "forward", "backward", "find", "dht", "load", "moe"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char item[32];
        snprintf(item, sizeof item, "\n  %s ", cmds[i]);
        cr_assert(strstr(out, item), "dmoe-call --help lists %s: %s", cmds[i], out);
    }
    cr_assert(strstr(out, "dmoe-call COMMAND --help"), "%s", out);
    /* each command's own flags, in either order of the words */
    struct { const char *cmd, *flag; } own[] = {
        {"forward", "--input PATH"}, {"backward", "--grad_output PATH"}, {"info", "--all"}, {"dht", "--expiration S"},
        {"load", "--mix F"}, {"load", "--clients N"}, {"moe", "--grid_size N"}, {"moe", "--input PATH"},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        cr_assert_eq(th_run("dmoe-call", (const char *const[]){own[i].cmd, "--help", NULL}, out, sizeof out, 20), 0);
        help_is_tidy(own[i].cmd, out);
        cr_assert(strstr(out, own[i].flag), "dmoe-call %s --help shows %s: %s", own[i].cmd, own[i].flag, out);
        cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--help", own[i].cmd, NULL}, out, sizeof out, 20), 0);
        cr_assert(strstr(out, own[i].flag), "dmoe-call --help %s shows %s: %s", own[i].cmd, own[i].flag, out);
    }
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"ping", "--help", NULL}, out, sizeof out, 20), 0);
    cr_assert(!strstr(out, "--grad_output"), "ping's help shows only what ping reads: %s", out);
}

Test(cli, a_mistyped_command_is_named_with_a_suggestion, .timeout = 30)
{
    char out[4096];
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", "127.0.0.1:9", "froward", "expert.0", NULL}, out,
                        sizeof out, 20), 2, "%s", out);
    cr_assert(strstr(out, "unknown command 'froward'; did you mean 'forward'?"), "%s", out);
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", "127.0.0.1:9", "xyzzy", NULL}, out, sizeof out, 20), 2);
    cr_assert(strstr(out, "unknown command 'xyzzy'") && !strstr(out, "did you mean"), "%s", out);
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", "127.0.0.1:9", NULL}, out, sizeof out, 20), 2);
    cr_assert(strstr(out, "no command given"), "%s", out);
}

Test(cli, bad_local_input_is_status_2_with_the_cause, .timeout = 90)
{
    char out[8192], txt[] = "/tmp/dmoe-cli-txt-XXXXXX";
    int fd = mkstemp(txt);
    cr_assert(fd >= 0);
    cr_assert(write(fd, "not numpy\n", 10) == 10);
    close(fd);
    /* nothing listens on port 9 of loopback: a status 2 here proves nothing was attempted */
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", "127.0.0.1:9", "forward", "expert.0", "--input", txt,
                                                         NULL}, out, sizeof out, 20), 2, "%s", out);
    cr_assert(strstr(out, txt) && strstr(out, "not an .npy file"), "%s", out);
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", "127.0.0.1:9", "forward", "expert.0", "--random",
                                                         "2x16", "--output", "/nonexistent/y.npy", NULL}, out, sizeof out,
                        20), 2, "%s", out);
    cr_assert(strstr(out, "cannot write /nonexistent/y.npy: the folder /nonexistent does not exist"), "%s", out);
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--initial_peers", "127.0.0.1:9", "moe", "--grid_size", "4", "--input",
                                                         txt, NULL}, out, sizeof out, 20), 2, "%s", out);
    cr_assert(strstr(out, txt), "%s", out);
    unlink(txt);

    cr_assert_eq(th_run("dmoe-node", (const char *const[]){"--expert_cls", "fnn", NULL}, out, sizeof out, 20), 2, "%s", out);
    cr_assert(strstr(out, "dmoe-node: --expert_cls fnn is not a known class (known: ffn,"), "%s", out);
    cr_assert_eq(th_run("dmoe-node", (const char *const[]){"--expert_pattern", "expert.[0:", "--num_experts", "2", NULL},
                        out, sizeof out, 20), 2, "%s", out);
    cr_assert(strstr(out, "--expert_pattern expert.[0:"), "%s", out);
    cr_assert_eq(th_run("dmoe-node", (const char *const[]){"--trusted_keys", "/nonexistent/keys", NULL}, out, sizeof out,
                        20), 2, "%s", out);
    cr_assert(strstr(out, "/nonexistent/keys"), "%s", out);
    cr_assert_eq(th_run("dmoe-node", (const char *const[]){"--checkpoint_dir", "/nonexistent/ckpt", NULL}, out, sizeof out,
                        20), 2, "%s", out);
    cr_assert(strstr(out, "the folder /nonexistent does not exist"), "%s", out);
    cr_assert_eq(th_run("dmoe-train", (const char *const[]){"--initial_peers", "127.0.0.1:9", "--trusted_keys",
                                                          "/nonexistent/keys", NULL}, out, sizeof out, 20), 2, "%s", out);
    cr_assert(strstr(out, "/nonexistent/keys"), "%s", out);
    cr_assert_eq(th_run("dmoe-bench", (const char *const[]){"--out", "/nonexistent/r.json", NULL}, out, sizeof out, 20), 2,
                 "%s", out);
    cr_assert(strstr(out, "/nonexistent/r.json"), "%s", out);
    /* and a remote failure is 1: nobody listens */
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", "127.0.0.1:9", "ping", NULL}, out, sizeof out, 20), 1,
                 "%s", out);
    cr_assert(strstr(out, "127.0.0.1:9"), "%s", out);
}

Test(cli, an_unwritable_output_stops_a_backward_before_it_steps_the_expert, .timeout = 90)
{
    th_node n;
    cr_assert_eq(th_node_start(&n, (const char *const[]){"--expert_cls", "ffn", "--hidden_dim", "16", "--expert_uids",
                                                         "cli.0", "--num_workers", "1", NULL}), 0);
    char out[16384];
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", n.maddr, "backward", "cli.0", "--random", "2x16",
                                                         "--output", "/nonexistent/gx.npy", NULL}, out, sizeof out, 30), 2,
                 "%s", out);
    cr_assert(strstr(out, "/nonexistent/gx.npy"), "%s", out);
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", n.maddr, "info", "cli.0", "--json", NULL}, out,
                        sizeof out, 30), 0, "%s", out);
    cr_assert(strstr(out, "\"backward_calls\": 0"), "the expert never saw the backward: %s", out);
    /* the same call with a good path goes through */
    char gx[] = "/tmp/dmoe-cli-gx-XXXXXX.npy";
    int fd = mkstemps(gx, 4);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", n.maddr, "backward", "cli.0", "--random", "2x16",
                                                         "--output", gx, NULL}, out, sizeof out, 30), 0, "%s", out);
    float *g = th_read_npy(gx, 2, 16);
    cr_assert(g, "%s", out);
    free(g);
    unlink(gx);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
}

/* ---- a port that is not a dmoe node ---- */

typedef struct {
    int lfd, port, served;
} http_srv;

/* Answers each of (at most) two connections as a web server answers bytes it cannot parse, then closes
 * it; ends when no client comes within 20 s. */
static void *http_serve(void *arg)
{
    http_srv *s = arg;
    for (int i = 0; i < 2; i++) {
        struct pollfd p = {s->lfd, POLLIN, 0};
        if (poll(&p, 1, 20000) != 1) break;
        int c = accept(s->lfd, NULL, NULL);
        if (c < 0) break;
        struct pollfd q = {c, POLLIN, 0};
        char buf[512];
        if (poll(&q, 1, 5000) == 1 && read(c, buf, sizeof buf) > 0) {
            const char *r = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            if (write(c, r, strlen(r)) > 0) s->served++;
        }
        close(c);
    }
    return NULL;
}

Test(cli, a_port_that_speaks_http_is_named_not_a_dmoe_node, .timeout = 60)
{
    http_srv s = {0};
    s.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    cr_assert(bind(s.lfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(s.lfd, 4) == 0);
    cr_assert(getsockname(s.lfd, (struct sockaddr *)&a, &al) == 0);
    s.port = ntohs(a.sin_port);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, http_serve, &s), 0);
    char peer[64], out[4096], want[128];
    snprintf(peer, sizeof peer, "127.0.0.1:%d", s.port);
    snprintf(want, sizeof want, "127.0.0.1:%d is not a dmoe node (it answered \"HTTP/1.1 400 Bad Request\")", s.port);
    /* a long --timeout: the answer must come from the bytes, not from waiting */
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", peer, "--timeout", "60", "ping", NULL}, out, sizeof out,
                        30), 1, "%s", out);
    cr_assert(strstr(out, want), "%s", out);
    cr_assert(!strstr(out, "timed out") && !strstr(out, "WARN"), "one line naming the cause: %s", out);
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--peer", peer, "--timeout", "60", "info", NULL}, out, sizeof out,
                        30), 1, "%s", out);
    cr_assert(strstr(out, want), "%s", out);
    pthread_join(t, NULL);
    close(s.lfd);
    cr_assert_eq(s.served, 2);
}

/* dmoe-call moe reads its rows from --input and saves the layer's output to --output, as forward does;
 * --input with --random is bad usage. One node is the whole DHT here (its experts cli.0 .. cli.3). */
Test(cli, moe_takes_input_and_output_files, .timeout = 90)
{
    th_node n;
    cr_assert_eq(th_node_start(&n, (const char *const[]){"--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "4",
                                                         "--expert_pattern", "cli.[0:4]", "--num_workers", "1", NULL}), 0);
    char xp[] = "/tmp/dmoe-cli-x-XXXXXX.npy", yp[] = "/tmp/dmoe-cli-y-XXXXXX.npy";
    int fx = mkstemps(xp, 4), fy = mkstemps(yp, 4);
    cr_assert(fx >= 0 && fy >= 0);
    close(fx);
    close(fy);
    unlink(yp);   /* written by the call */
    float x[3 * 16];
    th_fill_normal(x, 3 * 16, 11);
    cr_assert_eq(th_write_npy(xp, x, 3, 16), 0);
    char out[8192];
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--initial_peers", n.dht_maddr, "moe", "--uid_prefix", "cli.",
                                                         "--grid_size", "4", "--input", xp, "--random", "3x16", NULL},
                        out, sizeof out, 30), 2, "%s", out);
    cr_assert(strstr(out, "--input or --random, not both"), "%s", out);
    cr_assert_eq(th_run("dmoe-call", (const char *const[]){"--initial_peers", n.dht_maddr, "moe", "--uid_prefix", "cli.",
                                                         "--grid_size", "4", "--input", xp, "--output", yp, NULL},
                        out, sizeof out, 60), 0, "%s", out);
    cr_assert(strstr(out, "output shape [3, 16]"), "%s", out);
    float *y = th_read_npy(yp, 3, 16);
    cr_assert(y, "the output file holds float32 [3, 16]: %s", out);
    float norm = 0;
    for (int i = 0; i < 3 * 16; i++) norm += y[i] * y[i];
    cr_assert(norm > 0, "the experts' combined answer is not all zeros");
    free(y);
    unlink(xp);
    unlink(yp);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
}
