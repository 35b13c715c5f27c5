/* rt_outfile.h -- "can this output file be written?", asked before the work that produces it.
 *
 * A program that writes a result at the end (dmoe-call --output, dmoe-bench --out) asks first, so that a
 * typo in the path fails at once as bad local input -- before a backward has stepped an expert or a
 * benchmark has run for minutes; a node checks its checkpoint folder at start the same way (rt_dir_probe).
 * Plain blocking file-system calls, for a tool's main thread or start-up. No state.
 */
#ifndef DMOE_RT_OUTFILE_H
#define DMOE_RT_OUTFILE_H

#include <stddef.h>

/* rt_outfile_check returns 0 when path can be written: an existing file we may write, or a new name in
 * a folder where we can create a file (tried with a temporary file that is removed at once). Otherwise
 * DMOE_EIO with err saying why ("cannot write /x/y.npy: the folder /x does not exist"). Nothing is left
 * behind either way; an existing file is not touched. */
int rt_outfile_check(const char *path, char *err, size_t errlen);
/* rt_dir_probe returns 0 when a file can be created and written in the existing folder dir (a temporary
 * file with one byte, removed at once), else the errno that stopped it. Nothing is left behind. */
int rt_dir_probe(const char *dir);

#endif
