/* test_wire_maddr.c -- node addresses (wire/wire_maddr.c): a table of valid and invalid addresses,
 * canonical formatting, port 0 only when listening, sockaddr conversion. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "wire/wire_maddr.h"

Test(wire_maddr, valid_addresses, .timeout = 30)
{
    static const struct {
        const char *in;
        const char *host;
        unsigned port;
        const char *peer;
        int family;
        const char *formatted;
    } ok[] = {
        { "/ip4/127.0.0.1/tcp/31337", "127.0.0.1", 31337, "", AF_INET, "/ip4/127.0.0.1/tcp/31337" },
        { "/ip4/10.0.0.5/tcp/1/p2p/00112233445566778899aabbccddeeff", "10.0.0.5", 1,
          "00112233445566778899aabbccddeeff", AF_INET,
          "/ip4/10.0.0.5/tcp/1/p2p/00112233445566778899aabbccddeeff" },
        { "/ip4/10.0.0.5/tcp/65535/ipfs/ABCDEF", "10.0.0.5", 65535, "abcdef", AF_INET,
          "/ip4/10.0.0.5/tcp/65535/p2p/abcdef" },
        { "/ip6/::1/tcp/8080", "::1", 8080, "", AF_INET6, "/ip6/::1/tcp/8080" },
        { "/ip6/2001:DB8:0:0:0:0:0:1/tcp/80", "2001:db8::1", 80, "", AF_INET6, "/ip6/2001:db8::1/tcp/80" },
        { "/dns/node-1.example.org/tcp/443", "node-1.example.org", 443, "", AF_UNSPEC,
          "/dns/node-1.example.org/tcp/443" },
        { "/dns4/localhost/tcp/9", "localhost", 9, "", AF_UNSPEC, "/dns/localhost/tcp/9" },
        { "127.0.0.1:5000", "127.0.0.1", 5000, "", AF_INET, "/ip4/127.0.0.1/tcp/5000" },
        { "[::1]:5000", "::1", 5000, "", AF_INET6, "/ip6/::1/tcp/5000" },
        { "localhost:7", "localhost", 7, "", AF_UNSPEC, "/dns/localhost/tcp/7" },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        wire_maddr a, b;
        char err[160] = "";
        cr_assert_eq(wire_maddr_parse(ok[i].in, &a, err, sizeof err), 0, "%s: %s", ok[i].in, err);
        cr_assert_str_eq(a.host, ok[i].host, "%s", ok[i].in);
        cr_assert_eq(a.port, ok[i].port, "%s", ok[i].in);
        cr_assert_str_eq(a.peer_id, ok[i].peer, "%s", ok[i].in);
        cr_assert_eq(a.family, ok[i].family, "%s", ok[i].in);
        char buf[WIRE_MADDR_TEXT];
        wire_maddr_format(&a, buf, sizeof buf);
        cr_assert_str_eq(buf, ok[i].formatted);
        cr_assert_eq(wire_maddr_parse(buf, &b, err, sizeof err), 0, "%s", err);
        cr_assert(memcmp(&a, &b, sizeof a) == 0 || (strcmp(a.host, b.host) == 0 && a.port == b.port &&
                                                   strcmp(a.peer_id, b.peer_id) == 0 && a.family == b.family),
                  "parse(format(a)) == a for %s", ok[i].in);
    }
}

Test(wire_maddr, invalid_addresses, .timeout = 30)
{
    static const char *bad[] = {
        "",
        "/",
        "/ip4",
        "/ip4/127.0.0.1",
        "/ip4/127.0.0.1/tcp",
        "/ip4/127.0.0.1/tcp/",
        "/ip4/127.0.0.1/tcp/0",          /* port 0: listening only */
        "/ip4/127.0.0.1/tcp/65536",
        "/ip4/127.0.0.1/tcp/-1",
        "/ip4/127.0.0.1/tcp/12a",
        "/ip4/127.0.0.1/tcp/123456",
        "/ip4/127.0.0.1/udp/5000",
        "/ip4/256.0.0.1/tcp/5000",
        "/ip4/1.2.3/tcp/5000",
        "/ip4/::1/tcp/5000",
        "/ip6/127.0.0.1/tcp/5000",
        "/ip6/fe80::1%eth0/tcp/5000",
        "/ip4/127.0.0.1/tcp/5000/",
        "/ip4/127.0.0.1/tcp/5000/p2p",
        "/ip4/127.0.0.1/tcp/5000/p2p/",
        "/ip4/127.0.0.1/tcp/5000/p2p/xyz",
        "/ip4/127.0.0.1/tcp/5000/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        "/ip4/127.0.0.1/tcp/5000/p2p/00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0",
        "/ip4/127.0.0.1/tcp/5000/p2p/ab/extra",
        "/ip4/127.0.0.1/tcp/5000/ws",
        "//ip4/127.0.0.1/tcp/5000",
        "/quic/127.0.0.1/tcp/5000",
        "/dns/-bad.example/tcp/1",
        "/dns/bad_name/tcp/1",
        "/dns/1.2.3/tcp/1",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        ":5000",
        "::1:5000",
        "[::1]5000",
        "[::1:5000",
        "[127.0.0.1]:5000",
        "host name:5000",
        "127.0.0.1:5000:6000",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        wire_maddr a;
        memset(&a, 0x5a, sizeof a);
        char err[160] = "";
        cr_assert_eq(wire_maddr_parse(bad[i], &a, err, sizeof err), DMOE_EINVAL, "accepted \"%s\"", bad[i]);
        cr_assert(err[0] != 0, "no message for \"%s\"", bad[i]);
        cr_assert_eq(a.port, 0x5a5a, "output untouched on failure (%s)", bad[i]);
    }
    wire_maddr a;
    cr_assert_eq(wire_maddr_parse(NULL, &a, NULL, 0), DMOE_EINVAL);
}

Test(wire_maddr, listen_allows_port_zero, .timeout = 30)
{
    wire_maddr a;
    char err[128];
    cr_assert_eq(wire_maddr_parse_listen("/ip4/0.0.0.0/tcp/0", &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a.port, 0);
    cr_assert_str_eq(a.host, "0.0.0.0");
    cr_assert_eq(wire_maddr_parse_listen("[::]:0", &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a.family, AF_INET6);
    cr_assert_eq(wire_maddr_parse_listen("/ip4/0.0.0.0/tcp/65536", &a, err, sizeof err), DMOE_EINVAL);
    cr_assert_eq(wire_maddr_parse("/ip4/0.0.0.0/tcp/0", &a, err, sizeof err), DMOE_EINVAL);
    cr_assert(strstr(err, "listening") != NULL, "%s", err);
}

Test(wire_maddr, sockaddr_and_small_buffers, .timeout = 30)
{
    wire_maddr a;
    struct sockaddr_storage ss;
    socklen_t len;
    cr_assert_eq(wire_maddr_parse("/ip4/192.168.1.2/tcp/4242", &a, NULL, 0), 0);
    cr_assert_eq(wire_maddr_sockaddr(&a, &ss, &len), 0);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
    cr_assert_eq(len, sizeof *sin);
    cr_assert_eq(sin->sin_family, AF_INET);
    cr_assert_eq(ntohs(sin->sin_port), 4242);
    cr_assert_eq(ntohl(sin->sin_addr.s_addr), 0xC0A80102u);

    cr_assert_eq(wire_maddr_parse("[::1]:9", &a, NULL, 0), 0);
    cr_assert_eq(wire_maddr_sockaddr(&a, &ss, &len), 0);
    cr_assert_eq(len, sizeof(struct sockaddr_in6));
    cr_assert_eq(((const struct sockaddr_in6 *)&ss)->sin6_port, htons(9));

    cr_assert_eq(wire_maddr_parse("localhost:9", &a, NULL, 0), 0);
    cr_assert_eq(wire_maddr_sockaddr(&a, &ss, &len), DMOE_EINVAL, "names need resolving");

    char small[10];
    cr_assert_eq(wire_maddr_parse("/ip4/192.168.1.2/tcp/4242", &a, NULL, 0), 0);
    wire_maddr_format(&a, small, sizeof small);
    cr_assert_eq(strlen(small), sizeof small - 1, "truncated, terminated");
}

Test(wire_maddr, wildcard_loopback_and_sockaddr_back, .timeout = 30)
{
    static const struct { const char *in; int wildcard, loopback; } t[] = {
        {"/ip4/0.0.0.0/tcp/1", 1, 0},       {"[::]:1", 1, 0},
        {"/ip4/127.0.0.1/tcp/1", 0, 1},     {"127.0.0.3:1", 0, 1},
        {"[::1]:1", 0, 1},                  {"[::ffff:127.0.0.2]:1", 0, 1},
        {"/ip4/10.0.0.1/tcp/1", 0, 0},      {"/ip6/2001:db8::1/tcp/1", 0, 0},
        {"/dns/localhost/tcp/1", 0, 0},     /* a name is neither until resolved */
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        wire_maddr a;
        cr_assert_eq(wire_maddr_parse(t[i].in, &a, NULL, 0), 0, "%s", t[i].in);
        cr_assert_eq(wire_maddr_is_wildcard(&a), t[i].wildcard, "%s", t[i].in);
        cr_assert_eq(wire_maddr_is_loopback(&a), t[i].loopback, "%s", t[i].in);
        struct sockaddr_storage ss;
        socklen_t len;
        wire_maddr back;
        if (a.family == AF_UNSPEC) continue;
        cr_assert_eq(wire_maddr_sockaddr(&a, &ss, &len), 0);
        cr_assert_eq(wire_maddr_from_sockaddr((struct sockaddr *)&ss, &back), 0);
        cr_assert_str_eq(back.host, a.host);
        cr_assert_eq(back.port, a.port);
        cr_assert_eq(back.family, a.family);
    }
    struct sockaddr sa = {.sa_family = AF_UNIX};
    wire_maddr untouched = {.port = 7};
    cr_assert_eq(wire_maddr_from_sockaddr(&sa, &untouched), DMOE_EINVAL);
    cr_assert_eq(untouched.port, 7);
}
