/* moe_cmd.h -- dmoe-call's one-off `moe` command:
 *
 *   dmoe-call moe --initial_peers MADDR... --uid_prefix expert. --grid_size 15 --k_best 2 --random 3x512
 *   dmoe-call moe --initial_peers MADDR... --grid_size 15 --input x.npy --output y.npy
 *
 * runs one forward of the layer on seeded random input (or the rows of --input) and prints the output's
 * shape, mean and std, how many experts were chosen and answered, and the elapsed time (or one JSON
 * object with --json); --output saves the output rows as .npy.
 */
#ifndef DMOE_CMD_CALL_MOE_CMD_H
#define DMOE_CMD_CALL_MOE_CMD_H

/* moe_call_main runs `dmoe-call moe` with dmoe-call's argv (the word "moe" among the positionals).
 * Returns the exit status: 0 success, 1 a failed call, 2 bad usage or bad local input (--input, --output,
 * --trusted_keys). */
int moe_call_main(int argc, char **argv);

#endif
