/* test_netq.c -- the node's network quotas (actors/net/netq.c): a connection may hold a quarter of the
 * pending budget and an address half of it, unless nothing else is pending; nothing passes the budget
 * itself; releases wake the waiters; address accounts come and go with their connections. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <string.h>

#include "actors/net/netq.h"

static struct sockaddr_in addr_of(const char *ip)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static int woken;
static void wake(rt_budget_waiter *w) { woken++; }

Test(netq, shares_of_the_budget, .timeout = 10)
{
    netq q;
    netq_init(&q, 1000, 0);
    struct sockaddr_in s1 = addr_of("10.0.0.1"), s2 = addr_of("10.0.0.2");
    netq_addr *a1 = netq_addr_get(&q, (struct sockaddr *)&s1);
    netq_addr *a1b = netq_addr_get(&q, (struct sockaddr *)&s1);
    netq_addr *a2 = netq_addr_get(&q, (struct sockaddr *)&s2);
    cr_assert_eq(a1, a1b, "one account per address");
    cr_assert_eq(a1->conns, 2);
    size_t c1 = 0, c2 = 0, c3 = 0, c4 = 0;
    /* alone, a connection may pass its share (not the budget) */
    cr_assert(netq_try(&q, &c1, a1, 600, 0));
    cr_assert_not(netq_try(&q, &c1, a1, 401, 0), "nothing passes the budget");
    netq_release(&q, &c1, a1, 600);
    /* with others pending: a quarter per connection, a half per address */
    cr_assert(netq_try(&q, &c3, a2, 10, 0));
    cr_assert(netq_try(&q, &c1, a1, 250, 0));
    cr_assert_not(netq_try(&q, &c1, a1, 1, 0), "over the connection's quarter");
    cr_assert(netq_try(&q, &c2, a1, 250, 0));
    cr_assert_not(netq_try(&q, &c4, a1, 1, 0), "over the address's half");
    cr_assert(netq_try(&q, &c3, a2, 240, 0), "another address still has room");
    cr_assert(netq_try(&q, &c4, a1, 10, 1), "lifted shares: the budget alone decides");
    cr_assert_not(netq_try(&q, &c4, a1, 241, 1), "... and nothing passes it");
    netq_release(&q, &c4, a1, 10);
    cr_assert_eq(q.pending.used, 750);
    /* a release wakes a waiter */
    rt_budget_waiter w = {.wake = wake};
    rt_budget_wait(&q.pending, &w);
    netq_release(&q, &c2, a1, 250);
    cr_assert_eq(woken, 1);
    cr_assert_eq(c2, 0);
    cr_assert_eq(a1->charged, 250);
    netq_release(&q, &c1, a1, 250);
    netq_release(&q, &c3, a2, 250);
    cr_assert_eq(q.pending.used, 0);
    netq_addr_put(&q, a1);
    netq_addr_put(&q, a1b);
    netq_addr_put(&q, a2);
    cr_assert_eq(rt_map_count(&q.addrs), 0, "accounts go with their last connection");
    netq_deinit(&q);
}

Test(netq, reply_bytes_counted, .timeout = 10)
{
    netq q;
    netq_init(&q, 0, 100);
    netq_out_add(&q, 70);
    netq_out_add(&q, 50);
    netq_out_sub(&q, 100);
    cr_assert_eq(q.out_bytes, 20);
    cr_assert_eq(q.out_peak, 120);
    size_t c = 0;
    cr_assert(netq_try(&q, &c, NULL, (size_t)1 << 40, 0), "max_pending 0: no limit");
    netq_deinit(&q);
}
