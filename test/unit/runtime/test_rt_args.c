/* test_rt_args.c -- the command-line helpers behind every program's messages: --help and --version end
 * the parse, the usage text names each value and says each default once, a typo finds its word, and an
 * output path is checked without leaving anything behind. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/files/rt_outfile.h"
#include "runtime/rt_err.h"
#include "runtime/text/rt_args.h"

Test(rt_args, help_and_version_end_the_parse)
{
    int n = 3;
    const char *peer = NULL;
    const rt_arg t[] = {{"n", ARG_INT, &n, "a count", "G"}, {"peer", ARG_STR, &peer, "where", "G", NULL, "ADDR"}};
    char *pos[2], err[128];
    int npos;
    char *a1[] = {"p", "forward", "--help", "--bogus"};
    cr_assert_eq(rt_args_parse(4, a1, t, 2, pos, 2, &npos, err, sizeof err), RT_ARGS_HELP);
    cr_assert(npos == 1 && strcmp(pos[0], "forward") == 0, "the words before --help are kept");
    char *a2[] = {"p", "--version"};
    cr_assert_eq(rt_args_parse(2, a2, t, 2, pos, 2, &npos, err, sizeof err), RT_ARGS_VERSION);
    char *a3[] = {"p", "--n", "x"};
    cr_assert_eq(rt_args_parse(3, a3, t, 2, pos, 2, &npos, err, sizeof err), DMOE_EINVAL);
    cr_assert_str_eq(err, "--n: bad value 'x'");
}

Test(rt_args, usage_names_values_and_says_each_default_once)
{
    int n = 3;
    double s = 1.5;
    const char *peer = "127.0.0.1:1", *mode = NULL;
    int workers = 8;
    const rt_arg t[] = {
        {"n", ARG_INT, &n, "a count", "G"},
        {"seconds", ARG_F64, &s, "how long", "G", NULL, "S"},
        {"peer", ARG_STR, &peer, "where", "G", NULL, "ADDR"},
        {"mode", ARG_STR, &mode, "how", "G", NULL, "NAME"},
        {"workers", ARG_INT, &workers, "threads (default: the core count)", "G"},
    };
    char buf[4096] = "";
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    rt_args_usage(f, "p [flags]", t, 5);
    fclose(f);
    cr_assert(strstr(buf, "  --n N\n      a count (default: 3)\n"), "%s", buf);
    cr_assert(strstr(buf, "  --seconds S\n      how long (default: 1.5)\n"), "%s", buf);
    cr_assert(strstr(buf, "  --peer ADDR\n      where (default: 127.0.0.1:1)\n"), "%s", buf);
    cr_assert(strstr(buf, "  --mode NAME\n      how\n"), "no default when there is none: %s", buf);
    cr_assert(strstr(buf, "threads (default: the core count)\n"), "a default the text states is said once: %s", buf);
    cr_assert(strstr(buf, "  --version\n") && strstr(buf, RT_ARGS_EXIT_HELP), "%s", buf);
}

Test(rt_args, a_typo_finds_its_word)
{
    const char *words[] = {"ping", "info", "forward", "backward", "find", "dht", "load", "moe", NULL};
    cr_assert_str_eq(rt_args_suggest("froward", words), "forward");   /* two letters swapped: one edit */
    cr_assert_str_eq(rt_args_suggest("backwrd", words), "backward");
    cr_assert_str_eq(rt_args_suggest("laod", words), "load");
    cr_assert_str_eq(rt_args_suggest("pnig", words), "ping");
    cr_assert_null(rt_args_suggest("xyzzy", words));
    cr_assert_null(rt_args_suggest("ab", words), "a short word is not a typo of a longer one");
}

/* Nothing is left in dir but what was there. */
static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.' || strncmp(e->d_name, ".dmoe", 5) == 0;
    if (d) closedir(d);
    return n;
}

Test(rt_outfile, checks_without_leaving_anything)
{
    char dir[] = "/tmp/dmoe-outfile-XXXXXX", path[128], err[256];
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/y.npy", dir);
    cr_assert_eq(rt_outfile_check(path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(entries(dir), 0, "the probe file is removed");
    cr_assert_eq(rt_outfile_check(dir, err, sizeof err), DMOE_EIO);
    cr_assert(strstr(err, "it is a folder"), "%s", err);
    snprintf(path, sizeof path, "%s/no/y.npy", dir);
    cr_assert_eq(rt_outfile_check(path, err, sizeof err), DMOE_EIO);
    cr_assert(strstr(err, "the folder") && strstr(err, "does not exist"), "%s", err);
    snprintf(path, sizeof path, "%s/kept.npy", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f && fputs("old", f) >= 0 && fclose(f) == 0);
    cr_assert_eq(rt_outfile_check(path, err, sizeof err), 0, "%s", err);
    f = fopen(path, "r");
    char got[8] = "";
    cr_assert(f && fgets(got, sizeof got, f));
    fclose(f);
    cr_assert_str_eq(got, "old", "an existing file is not touched");
    unlink(path);
    rmdir(dir);
}
