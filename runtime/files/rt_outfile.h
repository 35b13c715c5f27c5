/* rt_outfile.h -- "can this output file be written?", asked before the work that produces it.
 *
 * A program that writes a result at the end (dmoe-call --output, dmoe-bench --out) asks first, so that a
 * typo in the path fails at once as bad local input -- before a backward has stepped an expert or a
 * benchmark has run for minutes. Plain blocking file-system calls, for a tool's main thread. No state.
 */
#ifndef DMOE_RT_OUTFILE_H
#define DMOE_RT_OUTFILE_H

#include <stddef.h>

/* rt_outfile_check returns 0 when path can be written: an existing file we may write, or a new name in
 * a folder where we can create a file (tried with a temporary file that is removed at once). Otherwise
 * DMOE_EIO with err saying why ("cannot write /x/y.npy: the folder /x does not exist"). Nothing is left
 * behind either way; an existing file is not touched. */
int rt_outfile_check(const char *path, char *err, size_t errlen);

#endif
