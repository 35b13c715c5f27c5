/* rt_spawn.c -- child processes with bounded waits (see rt_spawn.h). fork + execv; the child sets
 * PR_SET_PDEATHSIG before it runs the program, so a parent killed by a timeout takes it along. */
#include "runtime/proc/rt_spawn.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/rt_err.h"

#define SPAWN_POLL_MS 10      /* waitpid polling: short against the seconds the callers wait */
#define SPAWN_KILL_WAIT_S 5.0 /* after SIGKILL: the kernel ends the process at once; this is a fence */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* In the child: make fd (or /dev/null, or nothing) the descriptor target. */
static void redirect(int fd, int target)
{
    if (fd == RT_SPAWN_INHERIT) return;
    if (fd == RT_SPAWN_DEVNULL) {
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0 && nul != target) {
            dup2(nul, target);
            close(nul);
        }
        return;
    }
    if (fd != target) dup2(fd, target);
}

pid_t rt_spawn(const char *path, const char *const *argv, int in_fd, int out_fd, int err_fd)
{
    pid_t pid = fork();
    if (pid < 0) return DMOE_EIO;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* the child never outlives its parent */
        redirect(in_fd, 0);
        redirect(out_fd, 1);
        redirect(err_fd, 2);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

int rt_spawn_alive(pid_t pid)
{
    if (pid <= 0) return 0;
    return waitpid(pid, NULL, WNOHANG) == 0;
}

int rt_spawn_wait(pid_t pid, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(st)) return WEXITSTATUS(st);
            if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
            return DMOE_EIO;
        }
        if (r < 0) return DMOE_EIO;
        if (now_s() >= deadline) return DMOE_ETIMEDOUT;
        struct timespec ts = {0, SPAWN_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int rt_spawn_stop(pid_t pid, int sig, double timeout_s)
{
    if (pid <= 0) return DMOE_EIO;
    kill(pid, sig);
    int rc = rt_spawn_wait(pid, timeout_s);
    if (rc != DMOE_ETIMEDOUT) return rc;
    kill(pid, SIGKILL);
    rc = rt_spawn_wait(pid, SPAWN_KILL_WAIT_S);
    return rc >= 0 ? DMOE_ETIMEDOUT : rc;
}
