/* node_addrs.h -- which addresses a node announces (to the DHT, in its declarations, in its log).
 *
 * A node binds its --host_maddrs; others must dial it at an address they can reach. A bound wildcard
 * (0.0.0.0, ::) can be dialled by nobody, so it is never announced: --announce_maddrs replace the bound
 * addresses when given, and otherwise each wildcard becomes the machine's interface addresses of its
 * family (getifaddrs), loopback and IPv6 link-local ones left out, with the bound port. A machine with
 * no other address (a container with loopback only, a test) announces its loopback address, so the
 * node stays reachable from the machine itself.
 *
 * node_addrs_choose is the rule, a pure function a test feeds from a table; node_addrs_interfaces reads
 * the machine's addresses. Any thread; blocking only in getifaddrs (a local call, at start-up).
 */
#ifndef DMOE_NODE_ADDRS_H
#define DMOE_NODE_ADDRS_H

#include "wire/wire_maddr.h"

/* node_addrs_choose writes into out (at most max) the addresses to announce for the bound addresses
 * bound[0..n_bound), given the machine's interface addresses ifs[0..n_ifs) (ports ignored): bound ones
 * as they are, wildcards replaced as the header says, duplicates dropped. Returns the count. */
int node_addrs_choose(const wire_maddr *bound, int n_bound, const wire_maddr *ifs, int n_ifs, wire_maddr *out,
                      int max);
/* node_addrs_interfaces writes the machine's IPv4 and IPv6 interface addresses (port 0) into out (at most
 * max). Returns the count (0 when getifaddrs fails). */
int node_addrs_interfaces(wire_maddr *out, int max);

#endif
