/* test_node_addrs.c -- which addresses a node announces (actors/node/node_addrs.c): never a wildcard,
 * interface addresses of the bound family, loopback only when nothing else exists. */
#include <criterion/criterion.h>
#include <string.h>

#include "actors/node/node_addrs.h"

static wire_maddr A(const char *text)
{
    wire_maddr a;
    cr_assert_eq(wire_maddr_parse_listen(text, &a, NULL, 0), 0, "%s", text);
    return a;
}

static void expect(const wire_maddr *got, int n, const char *const *want)
{
    int i = 0;
    for (; want[i]; i++) {
        cr_assert(i < n, "missing %s", want[i]);
        char text[WIRE_MADDR_TEXT];
        wire_maddr_format(&got[i], text, sizeof text);
        cr_assert_str_eq(text, want[i]);
    }
    cr_assert_eq(n, i, "%d addresses, want %d", n, i);
}

Test(node_addrs, wildcards_become_interface_addresses, .timeout = 30)
{
    wire_maddr ifs[] = {A("/ip4/127.0.0.1/tcp/0"), A("/ip6/::1/tcp/0"), A("/ip4/10.1.2.3/tcp/0"),
                        A("/ip6/fe80::1/tcp/0"), A("/ip6/2001:db8::5/tcp/0"), A("/ip4/192.168.0.9/tcp/0"),
                        A("/ip4/10.1.2.3/tcp/0")};
    wire_maddr out[8];
    wire_maddr bound[] = {A("/ip4/0.0.0.0/tcp/7000"), A("/ip6/::/tcp/7001"), A("/ip4/127.0.0.2/tcp/7002")};
    int n = node_addrs_choose(bound, 3, ifs, 7, out, 8);
    expect(out, n, (const char *const[]){"/ip4/10.1.2.3/tcp/7000", "/ip4/192.168.0.9/tcp/7000",
                                         "/ip6/2001:db8::5/tcp/7001", "/ip4/127.0.0.2/tcp/7002", NULL});
    for (int i = 0; i < n; i++) cr_assert(!wire_maddr_is_wildcard(&out[i]));

    /* a loopback-only machine: the loopback address, still reachable from the machine itself */
    n = node_addrs_choose(bound, 2, ifs, 2, out, 8);
    expect(out, n, (const char *const[]){"/ip4/127.0.0.1/tcp/7000", "/ip6/::1/tcp/7001", NULL});
    /* no interface listed at all */
    n = node_addrs_choose(bound, 2, NULL, 0, out, 8);
    expect(out, n, (const char *const[]){"/ip4/127.0.0.1/tcp/7000", "/ip6/::1/tcp/7001", NULL});
    /* the cap holds */
    n = node_addrs_choose(bound, 3, ifs, 7, out, 2);
    cr_assert_eq(n, 2);
}

Test(node_addrs, this_machine_has_addresses, .timeout = 30)
{
    wire_maddr ifs[16];
    int n = node_addrs_interfaces(ifs, 16);
    cr_assert(n >= 1, "getifaddrs lists at least the loopback interface");
    for (int i = 0; i < n; i++) cr_assert(ifs[i].family == AF_INET || ifs[i].family == AF_INET6);
}
