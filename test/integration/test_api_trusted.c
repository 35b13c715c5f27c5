/* test_api_trusted.c -- a private swarm through the public C interface (dmoe_dht_join_trusted): an honest
 * dmoe-node with --identity_path and --trusted_keys (its own public key in the file) and an impostor node
 * with another key declaring the same uid and one more of the same grid. A client-mode and a full-mode
 * handle holding the trusted keys find, beam-search and call only the honest node's expert; the MoE layer
 * made from the trusted handle never routes to the impostor; an open handle sees the impostor and an
 * unsigned value the impostor keeps, which the trusted handles never use; a bad keys file fails the join with a message naming it.
 * Loopback only; key files in a fresh temporary directory; every node is stopped here. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/api/dmoe.h"
#include "test/integration/harness.h"

#define H 16

static char dir[64], honest_key[128], impostor_key[128], trusted[128], bad[128];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/dmoe-apitrust-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(honest_key, sizeof honest_key, "%s/honest.key", dir);
    snprintf(impostor_key, sizeof impostor_key, "%s/impostor.key", dir);
    snprintf(trusted, sizeof trusted, "%s/trusted_keys", dir);
    snprintf(bad, sizeof bad, "%s/bad_keys", dir);
}

static void teardown(void)
{
    unlink(honest_key);
    unlink(impostor_key);
    unlink(trusted);
    unlink(bad);
    rmdir(dir);
}

/* expert_port looks uid up through d: the port of the host found, 0 when not found. */
static int expert_port(dmoe_dht *d, const char *uid)
{
    dmoe_expert *e = NULL;
    char err[512], maddr[256];
    cr_assert_eq(dmoe_get_experts(d, &uid, 1, &e, err, sizeof err), 0, "%s", err);
    if (!e) return 0;
    dmoe_expert_maddr(e, maddr, sizeof maddr);
    dmoe_expert_free(e);
    const char *t = strstr(maddr, "/tcp/");
    cr_assert_not_null(t, "%s", maddr);
    return atoi(t + 5);
}

/* wait_port polls expert_port until it is nonzero (<= 10 s). */
static int wait_port(dmoe_dht *d, const char *uid)
{
    int port = 0;
    for (int i = 0; i < 40 && !(port = expert_port(d, uid)); i++) usleep(250000);
    return port;
}

/* only_honest checks that a trusted handle d finds expert.0 at port, never expert.1, and that a beam
 * search whose scores favour expert.1 returns expert.0 alone. */
static void only_honest(dmoe_dht *d, int port)
{
    cr_assert_eq(wait_port(d, "expert.0"), port, "the trusted handle takes the honest node");
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(expert_port(d, "expert.0"), port);
        cr_expect_eq(expert_port(d, "expert.1"), 0, "the impostor's own expert is not found");
        usleep(200000);
    }
    int grid[1] = { 2 };
    float scores[2] = { 0, 5 };
    dmoe_beam *b = NULL;
    char err[512], maddr[256];
    cr_assert_eq(dmoe_beam_search(d, "expert.", grid, 1, scores, 1, 2, &b, err, sizeof err), 0, "%s", err);
    cr_expect_eq(dmoe_beam_count(b, 0), 1);
    const char *uid = dmoe_beam_expert(b, 0, 0, maddr, sizeof maddr, NULL);
    cr_expect(uid && strcmp(uid, "expert.0") == 0, "%s", uid ? uid : "(none)");
    const char *t = strstr(maddr, "/tcp/");
    cr_expect(t && atoi(t + 5) == port, "%s", maddr);
    dmoe_beam_free(b);
}

Test(api_trusted, a_private_swarm_uses_only_trusted_records, .init = setup, .fini = teardown, .timeout = 150)
{
    char pk[65], ipk[65], text[256];
    cr_assert_eq(th_key_file(honest_key, 1, pk), 0);
    cr_assert_eq(th_key_file(impostor_key, 2, ipk), 0);
    snprintf(text, sizeof text, "# the lab\n%s  # honest node\n", pk);
    cr_assert_eq(th_write_file(trusted, text, 0644), 0);

    th_node a, b;
    const char *args[] = { "--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "1", "--expert_pattern",
                           "expert.[0:1]", "--update_period", "0.5", "--expiration", "3", "--num_workers", "1",
                           "--optimizer", "none", "--identity_path", honest_key, "--trusted_keys", trusted, NULL };
    cr_assert_eq(th_node_start(&a, args), 0);
    const char *imp[] = { "--expert_cls", "ffn", "--hidden_dim", "16", "--num_experts", "2", "--expert_pattern",
                          "expert.[0:2]", "--update_period", "0.5", "--expiration", "3", "--num_workers", "1",
                          "--optimizer", "none", "--identity_path", impostor_key, "--initial_peers", a.dht_maddr,
                          NULL };
    cr_assert_eq(th_node_start(&b, imp), 0);

    dmoe_ctx *ctx;
    char err[512];
    cr_assert_eq(dmoe_ctx_new(&ctx, err, sizeof err), 0, "%s", err);
    const char *peers[1] = { a.dht_maddr };
    dmoe_dht *open = NULL, *cli = NULL, *full = NULL;
    cr_assert_eq(dmoe_dht_join(ctx, peers, 1, 1, NULL, &open, err, sizeof err), 0, "%s", err);
    cr_assert_eq(wait_port(open, "expert.1"), b.port, "an open handle sees the impostor's records");

    cr_assert_eq(dmoe_dht_join_trusted(ctx, peers, 1, 1, NULL, trusted, &cli, err, sizeof err), 0, "%s", err);
    only_honest(cli, a.port);
    cr_assert_eq(dmoe_dht_join_trusted(ctx, peers, 1, 0, NULL, trusted, &full, err, sizeof err), 0, "%s", err);
    only_honest(full, a.port);
    /* an unsigned value (the impostor, an open node, may keep it): the open handle reads it back, the
     * trusted handles never use it */
    uint8_t key[8] = { 0xa4, 'n', 'o', 't', 'e' }, val[8] = { 0xa2, 'h', 'i' };
    int rc = dmoe_dht_store(open, key, 5, NULL, 0, val, 3, dmoe_dht_time() + 30, err, sizeof err);
    cr_assert_eq(rc, 0, "the impostor keeps unsigned values: %s", err);
    dmoe_value *v = NULL;
    cr_assert_eq(dmoe_dht_get(open, key, 5, 1, &v, err, sizeof err), 0, "%s", err);
    cr_expect_eq(dmoe_value_kind(v), 1, "the open handle finds the unsigned value");
    dmoe_value_free(v);
    dmoe_dht *mine[2] = { cli, full };
    for (int i = 0; i < 2; i++) {
        v = NULL;
        cr_assert_eq(dmoe_dht_get(mine[i], key, 5, 1, &v, err, sizeof err), 0, "%s", err);
        cr_expect_eq(dmoe_value_kind(v), 0, "a trusted handle (%s) used an unsigned value", i ? "full" : "client");
        dmoe_value_free(v);
    }

    /* a layer on the trusted handle: scores may favour expert.1, the impostor is never asked */
    dmoe_moe_config c;
    dmoe_moe_config_init(&c, 0);
    c.in_features = H;
    c.ndim = 1;
    c.grid_size[0] = 2;
    c.k_best = 2;
    c.forward_timeout = 10;
    c.backward_timeout = 10;
    c.seed = 5;
    dmoe_moe *m = NULL;
    cr_assert_eq(dmoe_moe_new(cli, &c, &m, err, sizeof err), 0, "%s", err);
    size_t np = dmoe_moe_nparams(m);
    float *p = malloc(np * sizeof *p), x[8 * H];
    cr_assert_eq(dmoe_moe_get_params(m, p, np), 0);
    th_fill_normal(x, 8 * H, 11);
    dmoe_moe_fwd *f = NULL;
    cr_assert_eq(dmoe_moe_forward(m, p, x, 8, NULL, 0, &f, err, sizeof err), 0, "%s", err);
    int chosen, answered;
    dmoe_moe_fwd_stats(f, &chosen, &answered);
    cr_expect(chosen >= 1 && answered == chosen, "%d chosen, %d answered", chosen, answered);
    for (int s = 0; s < 8; s++) {
        cr_expect_float_eq(dmoe_moe_fwd_expert_weight(f, s, "expert.1"), 0.0f, 1e-9, "sample %d", s);
        cr_expect_float_eq(dmoe_moe_fwd_expert_weight(f, s, "expert.0"), 1.0f, 1e-5, "sample %d", s);
    }
    dmoe_moe_fwd_free(f);
    dmoe_moe_free(m);
    free(p);
    dmoe_dht_free(cli);

    dmoe_dht_free(full);
    dmoe_dht_free(open);
    dmoe_ctx_free(ctx);
    cr_assert_eq(th_node_stop(&b, SIGTERM), 0);
    cr_assert_eq(th_node_stop(&a, SIGTERM), 0);
}

Test(api_trusted, a_bad_keys_file_fails_the_join, .init = setup, .fini = teardown, .timeout = 30)
{
    dmoe_ctx *ctx;
    char err[512];
    cr_assert_eq(dmoe_ctx_new(&ctx, err, sizeof err), 0, "%s", err);
    dmoe_dht *d = NULL;
    cr_assert_eq(dmoe_dht_join_trusted(ctx, NULL, 0, 0, NULL, bad, &d, err, sizeof err), DMOE_EIO);
    cr_expect(strstr(err, bad), "%s", err);
    cr_assert_eq(th_write_file(bad, "# keys\nnot-a-key\n", 0644), 0);
    cr_assert_eq(dmoe_dht_join_trusted(ctx, NULL, 0, 0, NULL, bad, &d, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, ":2:") && strstr(err, "64 hex digits"), "%s", err);
    cr_assert_eq(th_write_file(bad, "# nobody\n", 0644), 0);
    cr_assert_eq(dmoe_dht_join_trusted(ctx, NULL, 0, 0, NULL, bad, &d, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, "no key"), "%s", err);
    cr_assert_null(d);
    /* no keys at all: an open swarm, as dmoe_dht_join */
    cr_assert_eq(dmoe_dht_join_trusted(ctx, NULL, 0, 0, NULL, NULL, &d, err, sizeof err), 0, "%s", err);
    dmoe_dht_free(d);
    dmoe_ctx_free(ctx);
}
