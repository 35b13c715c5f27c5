/* rt_lag.h -- a loop-stall meter: how long the loop was kept from everything else, at most.
 *
 * A single-threaded loop serves its sockets and timers only between handlers, so the longest handler
 * is the longest stall. Two ways to feed a meter:
 *  - spans: rt_lag_begin before a handler's work and rt_lag_end after it (what an in-process test uses,
 *    where many DHT nodes share one loop and one virtual clock: each node meters its own handlers).
 *    A span records its wall time and its thread CPU time: the CPU time is what the handler's own work
 *    cost, the wall time adds whatever the OS ran meanwhile (other processes on a loaded machine), so a
 *    test that asserts a bound on a shared machine asserts the CPU time and reports the wall time;
 *  - a probe (rt_lag_probe): a periodic timer on a loop whose lateness is the loop's lag, for a real
 *    process (dmoe-node), whatever its handlers are.
 * Spans nest: only the outermost one of a meter counts. Loop thread only (the meter is not shared).
 */
#ifndef DMOE_RT_LAG_H
#define DMOE_RT_LAG_H

#include <stdint.h>

#include "runtime/rt_actor.h"

typedef struct {
    uint64_t max_wall_us, max_cpu_us;   /* the longest stall seen */
    uint64_t total_wall_us, count;      /* spans or probe ticks, for a mean */
    int depth;                          /* spans open */
} rt_lag;

/* Where a span started. */
typedef struct {
    uint64_t wall_us, cpu_us;
} rt_lag_mark;

/* rt_lag_begin opens a span on m and returns its start. */
rt_lag_mark rt_lag_begin(rt_lag *m);
/* rt_lag_end closes the span opened at t0, recording it when it is the outermost one. */
void rt_lag_end(rt_lag *m, rt_lag_mark t0);
/* rt_lag_spans_off(1) makes every span of the process record nothing from now on (two clock reads
 * per handler saved), rt_lag_spans_off(0) measures again: for a simulator running a hundred thousand
 * metered nodes whose stalls it does not report. Probes are not affected. */
void rt_lag_spans_off(int off);
/* rt_lag_note records one stall of wall_us (and cpu_us) microseconds. */
void rt_lag_note(rt_lag *m, uint64_t wall_us, uint64_t cpu_us);
/* rt_lag_reset forgets what m recorded (its open spans stay open). */
void rt_lag_reset(rt_lag *m);

/* Lateness probes tick this often: a stall shorter than this may go unseen, one longer cannot. */
#define RT_LAG_PROBE_MS 10

typedef struct rt_lag_probe rt_lag_probe;

/* rt_lag_probe_new starts a probe on l: an actor whose timer should fire every RT_LAG_PROBE_MS; each
 * tick records how late it came (wall time past its due time; cpu_us 0). Returns 0 and *out, or
 * DMOE_ENOMEM. Free it with rt_lag_probe_free before the loop. */
int rt_lag_probe_new(rt_loop *l, rt_lag_probe **out);
/* rt_lag_probe_meter returns the probe's meter (owned by the probe). */
const rt_lag *rt_lag_probe_meter(const rt_lag_probe *p);
/* rt_lag_probe_free stops the probe (its actor is reaped by the loop). NULL is a no-op. */
void rt_lag_probe_free(rt_lag_probe *p);

#endif
