/* rt_version.h -- the one place that names dmoe's version.
 *
 * Every program prints it for --version (rt_args_version), and a node reports "dmoe DMOE_VERSION" in
 * its info reply. Raise it here only: nothing else spells the number.
 */
#ifndef DMOE_RT_VERSION_H
#define DMOE_RT_VERSION_H

#define DMOE_VERSION "0.1.0"

#endif
