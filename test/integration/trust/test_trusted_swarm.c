/* test_trusted_swarm.c -- signed expert records over real processes (issue 10, items 2 and 3): an
 * attacker with dmoe-call stores an unsigned value under a live expert's uid, living 22 h, and the
 * honest node's declaration survives it: the store is refused, and dmoe-call still finds and calls the
 * honest expert. A private swarm (dmoe-node --trusted_keys) refuses an unsigned value with a message
 * saying why; an impostor node declaring the same uid with its own key is ignored by a client holding
 * the trusted keys (dmoe-call --trusted_keys), which finds and calls the honest node every time.
 * Loopback only, ports from the OS; key files in a fresh temporary directory; every process is stopped
 * by the test. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test/integration/harness.h"

static char dir[64], honest_key[128], impostor_key[128], trusted[128];

/* write_file writes text to path with mode. */
static void write_file(const char *path, const char *text, mode_t mode)
{
    cr_assert_eq(th_write_file(path, text, mode), 0, "%s", path);
}

/* key_file writes a key file for the seed made of byte b; pk_hex gets its public key. */
static void key_file(const char *path, uint8_t b, char pk_hex[65])
{
    cr_assert_eq(th_key_file(path, b, pk_hex), 0, "%s", path);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/dmoe-trusted-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(honest_key, sizeof honest_key, "%s/honest.key", dir);
    snprintf(impostor_key, sizeof impostor_key, "%s/impostor.key", dir);
    snprintf(trusted, sizeof trusted, "%s/trusted_keys", dir);
}

static void teardown(void)
{
    unlink(honest_key);
    unlink(impostor_key);
    unlink(trusted);
    rmdir(dir);
}

/* find_port runs dmoe-call find uid through peer (with --trusted_keys tk when not NULL) until it finds
 * it (<= 10 s); returns the port it names, or 0. */
static int find_port(const char *peer, const char *uid, const char *tk)
{
    char out[8192];
    const char *args[8] = { "--initial_peers", peer, "find", uid };
    int k = 4;
    if (tk) {
        args[k++] = "--trusted_keys";
        args[k++] = tk;
    }
    args[k] = NULL;
    for (int i = 0; i < 40; i++) {
        cr_assert_eq(th_run("dmoe-call", args, out, sizeof out, 30), 0, "%s", out);
        const char *t = strstr(out, "/tcp/");
        if (t) return atoi(t + 5);
        usleep(250000);
    }
    return 0;
}

/* forward calls uid through the DHT (trusted keys tk, or NULL); returns dmoe-call's status. */
static int forward(const char *peer, const char *uid, const char *tk, char *out, size_t cap)
{
    const char *args[12] = { "--initial_peers", peer, "forward", uid, "--random", "2x16" };
    int k = 6;
    if (tk) {
        args[k++] = "--trusted_keys";
        args[k++] = tk;
    }
    args[k] = NULL;
    return th_run("dmoe-call", args, out, cap, 30);
}

Test(trusted_swarm, an_unsigned_store_cannot_hijack_a_live_expert, .init = setup, .fini = teardown, .timeout = 120)
{
    th_node a;
    char pk[65];
    key_file(honest_key, 1, pk);
    const char *args[] = { "--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "1", "--identity_path",
                           honest_key, NULL };
    cr_assert_eq(th_node_start(&a, args), 0);
    cr_assert_eq(find_port(a.dht_maddr, "expert.0", NULL), a.port);

    char out[8192];
    const char *evil[] = { "--initial_peers", a.dht_maddr, "dht", "store", "expert.0", "/ip4/127.0.0.1/tcp/1",
                           "--expiration", "80000", NULL };
    int rc = th_run("dmoe-call", evil, out, sizeof out, 30);
    cr_expect(rc != 0, "the unsigned store over the live expert was accepted: %s", out);
    const char *evil_sub[] = { "--initial_peers", a.dht_maddr, "dht", "store", "expert.0", "/ip4/127.0.0.1/tcp/1",
                               "--subkey", "7", "--expiration", "80000", NULL };
    rc = th_run("dmoe-call", evil_sub, out, sizeof out, 30);
    cr_expect(rc != 0, "an unsigned entry joined the live expert's record: %s", out);

    cr_expect_eq(find_port(a.dht_maddr, "expert.0", NULL), a.port, "the client still finds the honest node");
    cr_expect_eq(forward(a.dht_maddr, "expert.0", NULL, out, sizeof out), 0, "and calls it: %s", out);
    /* plain values under other keys still work */
    const char *plain[] = { "--initial_peers", a.dht_maddr, "dht", "store", "note", "hello", "--expiration", "60",
                            NULL };
    cr_expect_eq(th_run("dmoe-call", plain, out, sizeof out, 30), 0, "%s", out);
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
}

Test(trusted_swarm, an_impostor_outside_the_trusted_keys_is_not_used, .init = setup, .fini = teardown,
     .timeout = 150)
{
    char pk[65], ipk[65], text[256];
    key_file(honest_key, 1, pk);
    key_file(impostor_key, 2, ipk);
    snprintf(text, sizeof text, "# the lab\n%s  # honest node\n", pk);
    write_file(trusted, text, 0644);

    th_node a, b;
    const char *args[] = { "--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "1", "--identity_path",
                           honest_key, "--trusted_keys", trusted, NULL };
    cr_assert_eq(th_node_start(&a, args), 0);
    char *log = th_node_log(&a);
    cr_expect(log && strstr(log, pk), "the node logs its public key");
    free(log);
    cr_assert_eq(find_port(a.dht_maddr, "expert.0", trusted), a.port);

    char out[8192];
    const char *plain[] = { "--initial_peers", a.dht_maddr, "dht", "store", "note", "hello", "--expiration", "60",
                            NULL };
    cr_expect_neq(th_run("dmoe-call", plain, out, sizeof out, 30), 0, "a private node stored an unsigned value");
    cr_expect(strstr(out, "private"), "and says why: %s", out);

    /* the impostor: an open node with its own key, declaring the same uid and another one */
    const char *imp[] = { "--expert_cls", "ffn", "--hidden_dim", "16", "--expert_pattern", "expert.[0:2]",
                          "--num_experts", "2", "--identity_path", impostor_key, "--initial_peers", a.dht_maddr,
                          NULL };
    cr_assert_eq(th_node_start(&b, imp), 0);
    cr_assert(find_port(a.dht_maddr, "expert.1", NULL) == b.port, "an open client sees the impostor's records");
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(find_port(a.dht_maddr, "expert.0", trusted), a.port, "the trusting client takes the honest node");
        usleep(300000);
    }
    const char *find1[] = { "--initial_peers", a.dht_maddr, "--trusted_keys", trusted, "find", "expert.1", NULL };
    cr_expect_eq(th_run("dmoe-call", find1, out, sizeof out, 30), 1, "%s", out);
    cr_expect(strstr(out, "not found"), "the impostor's own expert is not used: %s", out);
    cr_expect_eq(forward(a.dht_maddr, "expert.0", trusted, out, sizeof out), 0, "%s", out);
    cr_assert_eq(th_node_stop(&b, SIGTERM), 0);
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
}
