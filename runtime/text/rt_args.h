/* rt_args.h -- command-line flags for the programs in cmd/, in hivemind's style.
 *
 * A program declares a table of flags (name, kind, destination, help, group). rt_args_parse reads
 * `--name value`, `--name=value`, boolean `--name`, and list flags that take every following word up to
 * the next `--flag` (hivemind's nargs='+'); words that are not flags are returned as positionals in
 * order. Numbers are checked whole (no trailing junk, no overflow). rt_args_usage prints the table
 * grouped, with each default as it stands in the destination before parsing.
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
} rt_arg;

/* rt_args_is_maddr accepts words that look like addresses -- multiaddrs ("/ip4/..."), "[v6]:PORT" and
 * "HOST:PORT" -- so that a list of addresses stops before a subcommand: `--initial_peers /ip4/... find
 * expert.1`. A shape check only: wire_maddr_parse says whether the address is valid. */
int rt_args_is_maddr(const char *word);

/* rt_args_parse parses argv[1..argc) (argv[0] is the program). Positional words go to pos (at most
 * max_pos; *n_pos is set). Returns 0, 1 when --help was given, or DMOE_EINVAL with err filled.
 * List destinations must be freed with rt_args_free. */
int rt_args_parse(int argc, char **argv, const rt_arg *table, int n, char **pos, int max_pos, int *n_pos,
                  char *err, size_t errlen);
/* rt_args_free frees the arrays that list flags allocated. */
void rt_args_free(const rt_arg *table, int n);
/* rt_args_usage prints "usage: synopsis" and the flags grouped, with their current values as defaults. */
void rt_args_usage(FILE *f, const char *synopsis, const rt_arg *table, int n);
/* rt_args_size parses a batch shape like "3x512" or "2x5x32" into dims; returns the number of dims
 * (1..max) or DMOE_EINVAL. */
int rt_args_shape(const char *s, int64_t *dims, int max);

#endif
