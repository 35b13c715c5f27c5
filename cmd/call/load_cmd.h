/* load_cmd.h -- `dmoe-call ... load`, the load generator's command line (cmd/call/load_cmd.c). */
#ifndef DMOE_LOAD_CMD_H
#define DMOE_LOAD_CMD_H

/* loadgen_main is `dmoe-call ... load [flags]`: argv is the whole command line (the word "load" and
 * dmoe-call's --peer, --initial_peers, --json, --log_level, --seed, --timeout are accepted). Prints the
 * summary and returns the exit status: 0 all replies arrived without error, 1 errors, lost replies or a
 * failed run, 2 bad usage. */
int loadgen_main(int argc, char **argv);

#endif
