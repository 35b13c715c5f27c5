/* rt_args.h -- command-line flags for the programs in cmd/, in hivemind's style.
 *
 * A program declares a table of flags (name, kind, destination, help, group). rt_args_parse reads
 * `--name value`, `--name=value`, boolean `--name`, and list flags that take every following word up to
 * the next `--flag` (hivemind's nargs='+'); words that are not flags are returned as positionals in
 * order. Numbers are checked whole (no trailing junk, no overflow). `--help` and `--version` end the parse
 * early (RT_ARGS_HELP, RT_ARGS_VERSION). rt_args_usage prints the table grouped, each value flag with its
 * metavar (`--peer ADDR`) and its default as it stands in the destination before parsing -- unless the
 * help text states the default itself ("(default: the core count)"), so it is said once.
 */
#ifndef DMOE_RT_ARGS_H
#define DMOE_RT_ARGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { ARG_STR, ARG_INT, ARG_I64, ARG_U64, ARG_F64, ARG_FLAG, ARG_LIST, ARG_MULTI } rt_arg_kind;

typedef struct {
    const char *name;     /* without the dashes */
    rt_arg_kind kind;
    void *dst;            /* const char **, int *, int64_t *, uint64_t *, double *, int * (flag),
                           * char *** (LIST: NULL-terminated array into argv, malloc'd; MULTI: the same,
                           * one value per repetition of the flag) */
    const char *help;
    const char *group;    /* heading in --help */
    int (*accept)(const char *word);  /* LIST: takes following words only while this says 1 (NULL: all) */
    const char *meta;     /* the value's name in --help (ADDR, PATH, UID); NULL: N for integers, X for reals
                           * (string, list and repeated flags must name theirs) */
} rt_arg;

/* What rt_args_parse returns besides 0 and errors: the word that ended the parse. */
enum { RT_ARGS_HELP = 1, RT_ARGS_VERSION = 2 };

/* rt_args_is_maddr accepts words that look like addresses -- multiaddrs ("/ip4/..."), "[v6]:PORT" and
 * "HOST:PORT" -- so that a list of addresses stops before a subcommand: `--initial_peers /ip4/... find
 * expert.1`. A shape check only: wire_maddr_parse says whether the address is valid. */
int rt_args_is_maddr(const char *word);

/* rt_args_parse parses argv[1..argc) (argv[0] is the program). Positional words go to pos (at most
 * max_pos; *n_pos is set). Returns 0, RT_ARGS_HELP when --help (or -h) was given, RT_ARGS_VERSION for
 * --version (the positionals before it are in pos), or DMOE_EINVAL with err filled.
 * List destinations must be freed with rt_args_free. */
int rt_args_parse(int argc, char **argv, const rt_arg *table, int n, char **pos, int max_pos, int *n_pos,
                  char *err, size_t errlen);
/* rt_args_free frees the arrays that list flags allocated. */
void rt_args_free(const rt_arg *table, int n);
/* rt_args_usage prints "usage: synopsis" and the flags grouped, with their current values as defaults. */
void rt_args_usage(FILE *f, const char *synopsis, const rt_arg *table, int n);
/* rt_args_version prints "PROG VERSION" (runtime/rt_version.h) for --version. */
void rt_args_version(FILE *f, const char *prog);
/* RT_ARGS_EXIT_HELP is the rule every program's --help states (and README): the exit statuses. */
#define RT_ARGS_EXIT_HELP "exit status: 0 success, 1 a remote or network failure, 2 bad usage or bad local input"
/* rt_args_suggest returns the word of words (NULL-terminated) closest to w when it is a likely typo of
 * it (at most 2 edits, a swap of neighbours counting one, and fewer than the word's length), else NULL. */
const char *rt_args_suggest(const char *w, const char *const *words);
/* rt_args_shape parses a batch shape like "3x512" or "2x5x32" into dims; returns the number of dims
 * (1..max) or DMOE_EINVAL. */
int rt_args_shape(const char *s, int64_t *dims, int max);

#endif
