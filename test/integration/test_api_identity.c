/* test_api_identity.c -- a stable DHT identity through the public C interface (dmoe_dht_join_identity):
 * a full node joined with an identity file has the id dmoe-node --identity_path gets from the same file,
 * and the same id again after a restart; a missing file is created (mode 0600) and gives another id; a
 * file others may read fails the join with a message naming it; a client-mode node takes an identity too.
 * Loopback only; key files in a fresh temporary directory; every node is stopped here. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actors/api/dmoe.h"
#include "test/integration/harness.h"

static char dir[64], key_a[128], key_b[128];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/dmoe-apiident-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(key_a, sizeof key_a, "%s/a.key", dir);
    snprintf(key_b, sizeof key_b, "%s/b.key", dir);
}

static void teardown(void)
{
    unlink(key_a);
    unlink(key_b);
    rmdir(dir);
}

/* p2p_id copies the /p2p/ part of maddr into id[cap]. */
static void p2p_id(const char *maddr, char *id, size_t cap)
{
    const char *p = strstr(maddr, "/p2p/");
    cr_assert_not_null(p, "no /p2p/ in '%s'", maddr);
    snprintf(id, cap, "%.*s", (int)strcspn(p + 5, "'/ "), p + 5);
    cr_assert(id[0], "%s", maddr);
}

/* join_full joins a first full node with identity file path (NULL: none) and returns its id in id[cap]. */
static dmoe_dht *join_full(dmoe_ctx *ctx, const char *path, char *id, size_t cap)
{
    dmoe_dht *d = NULL;
    char err[512], maddr[256];
    int rc = dmoe_dht_join_identity(ctx, NULL, 0, 0, NULL, NULL, path, &d, err, sizeof err);
    cr_assert_eq(rc, 0, "join with %s: %s", path ? path : "(no identity)", err);
    dmoe_dht_maddr(d, maddr, sizeof maddr);
    p2p_id(maddr, id, cap);
    return d;
}

Test(api_identity, the_identity_file_keeps_the_node_id, .init = setup, .fini = teardown, .timeout = 60)
{
    th_node n;
    const char *args[] = { "--num_experts", "0", "--identity_path", key_a, NULL };
    cr_assert_eq(th_node_start(&n, args), 0);
    char node_id[128];
    p2p_id(n.dht_maddr, node_id, sizeof node_id);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);

    dmoe_ctx *ctx;
    char err[512], id1[128], id2[128], idb[128], idn[128];
    cr_assert_eq(dmoe_ctx_new(&ctx, err, sizeof err), 0, "%s", err);
    dmoe_dht *d = join_full(ctx, key_a, id1, sizeof id1);
    cr_expect_str_eq(id1, node_id, "the library and dmoe-node read the same key file alike");
    dmoe_dht_free(d);
    d = join_full(ctx, key_a, id2, sizeof id2);
    cr_expect_str_eq(id2, id1, "a restart with the same file keeps the id");

    struct stat st;
    cr_assert_neq(stat(key_b, &st), 0);
    dmoe_dht *b = join_full(ctx, key_b, idb, sizeof idb);
    cr_assert_eq(stat(key_b, &st), 0, "a missing identity file is created");
    cr_expect_eq(st.st_mode & 0777, 0600);
    cr_expect_str_neq(idb, id1);
    dmoe_dht *none = join_full(ctx, NULL, idn, sizeof idn);
    cr_expect_str_neq(idn, id1);

    /* a client-mode node with an identity joins through the others and can store */
    char maddr[256];
    dmoe_dht_maddr(d, maddr, sizeof maddr);
    const char *peers[1] = { maddr };
    dmoe_dht *cli = NULL;
    cr_assert_eq(dmoe_dht_join_identity(ctx, peers, 1, 1, NULL, NULL, key_b, &cli, err, sizeof err), 0, "%s", err);
    uint8_t key[2] = { 0xa1, 'k' }, val[2] = { 0xa1, 'v' };
    cr_expect_eq(dmoe_dht_store(cli, key, 2, NULL, 0, val, 2, dmoe_dht_time() + 30, err, sizeof err), 0, "%s", err);
    dmoe_dht_free(cli);

    /* a key file others may read is refused, named in the message; nothing joins */
    cr_assert_eq(chmod(key_b, 0644), 0);
    cli = NULL;
    cr_expect_eq(dmoe_dht_join_identity(ctx, peers, 1, 1, NULL, NULL, key_b, &cli, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, key_b), "%s", err);
    cr_expect_null(cli);

    dmoe_dht_free(none);
    dmoe_dht_free(b);
    dmoe_dht_free(d);
    dmoe_ctx_free(ctx);
}
