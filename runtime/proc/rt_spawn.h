/* rt_spawn.h -- child processes for the programs and the tests: start one that dies with its parent,
 * wait for it with a bound, stop it (a signal, a bounded wait, then SIGKILL).
 *
 * Order: rt_spawn -> (rt_spawn_alive)* -> rt_spawn_stop, or rt_spawn_wait until it has exited. Every
 * wait is bounded in time and polls waitpid every 10 ms, so these block the calling thread: they are for
 * the cmd/ programs and the tests, never for a loop thread. A child is reaped by the first of
 * rt_spawn_alive (when it finds it exited), rt_spawn_wait (when it returns an exit status) and
 * rt_spawn_stop; a wait after that returns DMOE_EIO.
 */
#ifndef DMOE_RT_SPAWN_H
#define DMOE_RT_SPAWN_H

#include <sys/types.h>

#define RT_SPAWN_INHERIT (-1)   /* an fd argument: the child keeps the parent's descriptor */
#define RT_SPAWN_DEVNULL (-2)   /* an fd argument: the child gets /dev/null */

/* rt_spawn starts the program at path with argv (NULL-terminated, argv[0] included) in a child that the
 * kernel kills when its parent dies (PR_SET_PDEATHSIG SIGKILL), with its stdin, stdout and stderr
 * redirected to in_fd, out_fd and err_fd (a descriptor of the caller's, or RT_SPAWN_INHERIT, or
 * RT_SPAWN_DEVNULL). The caller's descriptors stay open and its own. A program that cannot be executed
 * exits with status 127. Returns the child's pid, or DMOE_EIO when fork fails. */
pid_t rt_spawn(const char *path, const char *const *argv, int in_fd, int out_fd, int err_fd);

/* rt_spawn_alive returns 1 while pid runs, 0 once it has exited (it is then reaped, its status lost). */
int rt_spawn_alive(pid_t pid);

/* rt_spawn_wait waits up to timeout_s for pid to exit and reaps it. Returns its exit status, 128 + the
 * signal when a signal ended it, DMOE_ETIMEDOUT when it still runs at the deadline (not reaped), or
 * DMOE_EIO when waitpid fails (not our child, reaped already). */
int rt_spawn_wait(pid_t pid, double timeout_s);

/* rt_spawn_stop sends sig to pid and waits up to timeout_s for it to exit; past that it sends SIGKILL
 * and waits up to 5 s more. Returns the exit status as rt_spawn_wait does, DMOE_ETIMEDOUT when it had
 * to be killed, or DMOE_EIO. The child is reaped in every case but a failing waitpid. */
int rt_spawn_stop(pid_t pid, int sig, double timeout_s);

#endif
