/* test_rt_conf.c -- config files (runtime/text/rt_conf.c): the YAML subset hivemind's config.yml files
 * use, strict refusals naming the line, and the merge in which the command line wins. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/rt_err.h"
#include "runtime/text/rt_args.h"
#include "runtime/text/rt_conf.h"

static const char *s_cls, *s_name;
static int s_num, s_flag;
static double s_lr;
static char **s_peers, **s_multi, **s_uids;

static const rt_arg table[] = {
    {"expert_cls", ARG_STR, &s_cls, "", "g"},
    {"num_experts", ARG_INT, &s_num, "", "g"},
    {"lr", ARG_F64, &s_lr, "", "g"},
    {"client_mode", ARG_FLAG, &s_flag, "", "g"},
    {"initial_peers", ARG_LIST, &s_peers, "", "g", rt_args_is_maddr},
    {"input", ARG_MULTI, &s_multi, "", "g"},
    {"expert_uids", ARG_LIST, &s_uids, "", "g"},
    {"name", ARG_STR, &s_name, "", "g"},
    {"config", ARG_STR, NULL, "", "g"},
};
#define NT ((int)(sizeof table / sizeof table[0]) - 1)   /* the parser's table: without "config" */

static char **words(const char *text)
{
    char **w = NULL, err[256] = "";
    int rc = rt_conf_parse_text(text, "t.yml", table, NT, &w, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    return w;
}

static void free_words(char **w)
{
    for (size_t i = 0; w && w[i]; i++) free(w[i]);
    free(w);
}

static void expect_words(const char *text, const char *const *want)
{
    char **w = words(text);
    size_t i = 0;
    for (; want[i]; i++) {
        cr_assert(w[i] != NULL, "missing word %zu (%s)", i, want[i]);
        cr_assert_str_eq(w[i], want[i]);
    }
    cr_assert_null(w[i], "extra word %s", w[i]);
    free_words(w);
}

Test(rt_conf, scalars_lists_and_flags, .timeout = 30)
{
    expect_words("# a node\n"
                 "---\n"
                 "expert_cls: ffn   # the class\n"
                 "num-experts: 4\n"
                 "lr: -1e-3\n"
                 "name: 'it''s # not a comment'\n"
                 "client_mode: true\n"
                 "initial_peers: [/ip4/10.0.0.1/tcp/7000, \"[::1]:7000\"]\n"
                 "expert_uids:\n"
                 "  - expert.1\n"
                 "  - 'expert.2'\n"
                 "input: [a.npy, b.npy]\r\n",
                 (const char *const[]){"--expert_cls=ffn", "--num_experts=4", "--lr=-1e-3", "--name=it's # not a comment",
                                       "--client_mode", "--initial_peers=/ip4/10.0.0.1/tcp/7000", "[::1]:7000",
                                       "--expert_uids=expert.1", "expert.2", "--input=a.npy", "--input=b.npy", NULL});
    expect_words("client_mode: false\ninitial_peers: []\n\n   \n", (const char *const[]){NULL});
    expect_words("", (const char *const[]){NULL});
    expect_words("name: \"a \\\"b\\\" \\\\ c\"\n", (const char *const[]){"--name=a \"b\" \\ c", NULL});
}

Test(rt_conf, refusals_name_the_line, .timeout = 30)
{
    static const struct { const char *text; int line; const char *what; } bad[] = {
        {"num_experts: 1\nbogus: 2\n", 2, "unknown key 'bogus'"},
        {"num_experts: 1\n\nnum_experts: 2\n", 3, "given twice"},
        {"num_experts: [1, 2]\n", 1, "one value"},
        {"client_mode: yes\n", 1, "true or false"},
        {"name: 'open\n", 1, "unclosed"},
        {"initial_peers: [a:1, b:2\n", 1, "unclosed list"},
        {"initial_peers: [1.2.3.4:5,]\n", 1, "empty list item"},
        {"initial_peers: [expert.1]\n", 1, "not a valid value"},
        {"\tname: x\n", 1, "tab"},
        {"name: x\n  - y\n", 2, "indentation"},
        {"expert_uids:\nname: x\n", 1, "no value"},
        {"expert_uids:\n", 1, "no value"},
        {"- x\n", 1, "key: value"},
        {"name x\n", 1, "key: value"},
        {"name:x\n", 1, "key: value"},
        {"name: &anchor x\n", 1, "YAML"},
        {"name: {a: 1}\n", 1, "YAML"},
        {"config: other.yml\n", 1, "do not nest"},
        {"expert_uids: [--flag]\n", 1, "may not start with --"},
        {"expert_uids:\n  - [a]\n", 2, "nested"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char **w = (char **)0x1, err[256] = "";
        cr_assert_eq(rt_conf_parse_text(bad[i].text, "t.yml", table, NT, &w, err, sizeof err), DMOE_EINVAL,
                     "accepted: %s", bad[i].text);
        cr_assert_eq(w, (char **)0x1, "output untouched on failure");
        char where[32];
        snprintf(where, sizeof where, "t.yml:%d: ", bad[i].line);
        cr_assert(strncmp(err, where, strlen(where)) == 0, "'%s' for %s: want %s", err, bad[i].text, where);
        cr_assert(strstr(err, bad[i].what) != NULL, "'%s' lacks '%s'", err, bad[i].what);
    }
}

Test(rt_conf, merge_command_line_wins, .timeout = 30)
{
    char path[] = "/tmp/dmoe-conf-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    const char *text = "expert_cls: transformer\nnum_experts: 3\nlr: 0.5\n"
                       "initial_peers: [127.0.0.1:1000, 127.0.0.1:1001]\ninput: [c.npy]\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char cfg_flag[64];
    snprintf(cfg_flag, sizeof cfg_flag, "--config=%s", path);
    char *argv[] = {"prog", "--num_experts", "7", cfg_flag, "--initial_peers", "/ip4/10.1.1.1/tcp/9", "--input", "d.npy", NULL};
    rt_conf c;
    char err[256] = "";
    rt_arg full[NT + 1];
    memcpy(full, table, sizeof full);
    const char *cfg_path = NULL;
    full[NT].dst = &cfg_path;
    cr_assert_eq(rt_conf_merge(8, argv, full, NT + 1, &c, err, sizeof err), 0, "%s", err);
    char *pos[1];
    int npos;
    s_num = 0, s_lr = 0, s_cls = NULL;
    cr_assert_eq(rt_args_parse(c.argc, c.argv, full, NT + 1, pos, 0, &npos, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s_num, 7, "the command line wins");
    cr_assert_str_eq(s_cls, "transformer", "the file gives what the command line does not");
    cr_assert_float_eq(s_lr, 0.5, 1e-12);
    cr_assert_str_eq(s_peers[0], "/ip4/10.1.1.1/tcp/9");
    cr_assert_null(s_peers[1], "a list flag on the command line replaces the file's whole list");
    cr_assert_str_eq(s_multi[0], "d.npy");
    cr_assert_null(s_multi[1], "repeated flags too");
    cr_assert_str_eq(cfg_path, path);
    rt_args_free(full, NT + 1);
    rt_conf_free(&c);

    /* without --config: the command line as it is */
    char *plain[] = {"prog", "--num_experts", "2", NULL};
    cr_assert_eq(rt_conf_merge(3, plain, full, NT + 1, &c, err, sizeof err), 0);
    cr_assert_eq(c.argc, 3);
    cr_assert_str_eq(c.argv[2], "2");
    rt_conf_free(&c);

    /* a bad file: the message names the file and the line; a missing file and a missing value fail */
    FILE *f = fopen(path, "w");
    fputs("num_experts: 1\nnum_expert: 2\n", f);
    fclose(f);
    cr_assert_eq(rt_conf_merge(8, argv, full, NT + 1, &c, err, sizeof err), DMOE_EINVAL);
    cr_assert(strstr(err, ":2: unknown key 'num_expert'") != NULL, "%s", err);
    unlink(path);
    cr_assert_eq(rt_conf_merge(8, argv, full, NT + 1, &c, err, sizeof err), DMOE_EIO);
    char *novalue[] = {"prog", "--config", NULL};
    cr_assert_eq(rt_conf_merge(2, novalue, full, NT + 1, &c, err, sizeof err), DMOE_EINVAL);
}

Test(rt_conf, address_shapes_end_lists, .timeout = 30)
{
    cr_assert(rt_args_is_maddr("/ip4/1.2.3.4/tcp/5"));
    cr_assert(rt_args_is_maddr("127.0.0.1:37771"), "HOST:PORT in --initial_peers (issue 13)");
    cr_assert(rt_args_is_maddr("node-1.example.org:7000"));
    cr_assert(rt_args_is_maddr("[::1]:7000"));
    cr_assert(!rt_args_is_maddr("find"));
    cr_assert(!rt_args_is_maddr("expert.1"));
    cr_assert(!rt_args_is_maddr("host:"));
    cr_assert(!rt_args_is_maddr(":80"));
    cr_assert(!rt_args_is_maddr("a:b"));
}
