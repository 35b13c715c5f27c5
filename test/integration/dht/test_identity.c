/* test_identity.c -- a node's identity over real processes (dmoe-node --identity_path): the key file is
 * created private and the node keeps its /p2p/ id across a restart, so a second node joins through the
 * address saved before the restart; a key file others may read, or a malformed one, stops the node at
 * start with a message that says why; the restarted node's loop never ran late by more than
 * NODE_LAG_MAX_MS (node_lag.h). Loopback only; ports from the OS (the restart reuses the port
 * the OS gave the first run); every process is stopped by the test. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test/integration/dht/node_lag.h"
#include "test/integration/harness.h"

static char dir[64];
static char key_path[128];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/dmoe-identity-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(key_path, sizeof key_path, "%s/node.key", dir);
}

static void teardown(void)
{
    unlink(key_path);
    rmdir(dir);
}

Test(identity, a_node_keeps_its_id_across_a_restart, .init = setup, .fini = teardown, .timeout = 120)
{
    th_node a, b;
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "1", "--identity_path",
                          key_path, NULL};
    cr_assert_eq(th_node_start(&a, args), 0);
    char saved[256];
    snprintf(saved, sizeof saved, "%s", a.dht_maddr);
    cr_assert(strstr(saved, "/p2p/"), "%s", saved);
    struct stat st;
    cr_assert_eq(stat(key_path, &st), 0, "the key file was created");
    cr_expect_eq(st.st_mode & 0777, 0600, "mode %o", (unsigned)(st.st_mode & 0777));
    int port = a.port;
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);

    /* The same key on the same port: the same multiaddr, /p2p/ID included. */
    char listen[64];
    snprintf(listen, sizeof listen, "/ip4/127.0.0.1/tcp/%d", port);
    const char *again[] = {"--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "1", "--identity_path",
                           key_path, "--host_maddrs", listen, "--metrics_port", "0", NULL};
    cr_assert_eq(th_node_start(&a, again), 0);
    cr_expect_str_eq(a.dht_maddr, saved, "the restarted node has the address saved before");

    /* A second node joins through the saved address: its bootstrap checks the /p2p/ id. */
    const char *join[] = {"--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "1", "--expert_pattern",
                          "expert.[7:8]", "--initial_peers", saved, NULL};
    cr_assert_eq(th_node_start(&b, join), 0, "a node joins through the saved address");
    char out[8192];
    const char *find[] = {"--initial_peers", saved, "find", "expert.7", "--json", NULL};
    int found = 0;
    for (int i = 0; i < 40 && !found; i++) {   /* B declares within its first update period */
        cr_assert_eq(th_run("dmoe-call", find, out, sizeof out, 30), 0, "%s", out);
        found = strstr(out, "\"expert.7\": \"/ip4/") != NULL;
        if (!found) usleep(250000);
    }
    cr_expect(found, "a client that knows the saved address finds the joined node's expert: %s", out);
    double lag = th_node_loop_lag_ms(&a);
    cr_expect(lag <= NODE_LAG_MAX_MS, "the restarted node's loop ran %.1f ms late", lag);
    cr_assert_eq(th_node_stop(&b, SIGTERM), 0);
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);

    /* Without --identity_path each start draws a new key: another id on the same port. */
    const char *fresh[] = {"--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "1", "--host_maddrs",
                           listen, NULL};
    cr_assert_eq(th_node_start(&a, fresh), 0);
    cr_expect_str_neq(a.dht_maddr, saved, "a new id without the key file");
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
}

/* refused runs dmoe-node on the key file and expects it to stop at start, saying `why`. */
static void refused(const char *why)
{
    char out[8192];
    const char *args[] = {"--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--expert_cls", "ffn", "--hidden_dim", "16",
                          "--num_experts", "1", "--identity_path", key_path, NULL};
    int rc = th_run("dmoe-node", args, out, sizeof out, 30);
    cr_expect(rc > 0 && rc < 128, "the node exits with an error (status %d): %s", rc, out);
    cr_expect(strstr(out, "identity file") && strstr(out, why), "the message says why (%s): %s", why, out);
    cr_expect(!strstr(out, "Running DHT node"), "the node never joined: %s", out);
}

static void write_key(const char *text, mode_t mode)
{
    int fd = open(key_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cr_assert_eq(chmod(key_path, mode), 0);
}

Test(identity, a_key_file_others_can_read_is_refused, .init = setup, .fini = teardown, .timeout = 60)
{
    write_key("dmoe-ed25519 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n", 0644);
    refused("mode 0644");
    struct stat st;
    cr_assert_eq(stat(key_path, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0644, "the file is left as it was");
}

Test(identity, a_malformed_key_file_is_refused, .init = setup, .fini = teardown, .timeout = 60)
{
    write_key("not a key\n", 0600);
    refused("malformed");
}
