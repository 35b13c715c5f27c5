/* rt_conf.h -- `--config FILE` for the cmd/ programs: the same flags as the command line, from a file.
 *
 * The format is a strict subset of YAML, the one hivemind-server's `-c config.yml` files use for the
 * flags we share, so such a file works here as it is, and the parser needs no new dependency:
 *
 *     # a comment (whole line, or after a space)
 *     num_experts: 4                    a scalar: plain, 'single' or "double" quoted
 *     host_maddrs: [/ip4/0.0.0.0/tcp/7000, "/ip6/::/tcp/7000"]    a list flag, flow style
 *     initial_peers:                    a list flag, block style: indented "- item" lines
 *       - /ip4/10.0.0.1/tcp/7000/p2p/0123...
 *     client_mode: true                 a flag without value: true or false
 *
 * Keys are the flags' names (a '-' reads as '_'), at the start of the line. Parsing is strict: an
 * unknown key, a key given twice, a list for a one-value flag, a tab, an unclosed quote or bracket, any
 * other YAML (nesting, anchors, multi-line strings) is an error naming the file and the line.
 *
 * rt_conf_merge finds `--config FILE` (or `--config=FILE`) on a command line and returns a new argv:
 * the program's name, the file's flags as words, then the command line as given, minus the file's flags
 * that the command line gives too -- so a command-line flag always wins, list flags included. Without
 * --config the argv is the command line's. Any thread; reads one file.
 */
#ifndef DMOE_RT_CONF_H
#define DMOE_RT_CONF_H

#include <stddef.h>

#include "runtime/text/rt_args.h"

#define RT_CONF_MAX_BYTES (1 << 20)   /* a config file is a screenful; this refuses a wrong path early */

/* A merged command line: argv[0..argc) then NULL, with the strings the file gave. */
typedef struct {
    int argc;
    char **argv;     /* malloc'd; its strings are the caller's argv or in words */
    char **words;    /* malloc'd strings from the file, NULL-terminated */
} rt_conf;

/* rt_conf_parse_text parses a config text (name is used in messages) against the flag table into
 * words for rt_args_parse ("--key=value", list items after "--key=first"), written to *out (a
 * NULL-terminated malloc'd list of malloc'd strings) only on success. Returns 0, DMOE_EINVAL with err
 * "name:LINE: what is wrong", or DMOE_ENOMEM. */
int rt_conf_parse_text(const char *text, const char *name, const rt_arg *table, int n, char ***out, char *err,
                       size_t errlen);
/* rt_conf_merge builds *c from argv[0..argc) and the file named by its --config flag, if any (see the
 * header). Returns 0, DMOE_EINVAL (a bad file, or --config without a value) or DMOE_EIO (unreadable),
 * with err filled. Free with rt_conf_free, after the parsed flags are no longer used. */
int rt_conf_merge(int argc, char **argv, const rt_arg *table, int n, rt_conf *c, char *err, size_t errlen);
/* rt_conf_free releases what rt_conf_merge allocated. A zeroed rt_conf is a no-op. */
void rt_conf_free(rt_conf *c);

#endif
