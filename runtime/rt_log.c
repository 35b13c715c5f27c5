/* rt_log.c -- hivemind-format log lines (see rt_log.h). The level is a process-wide atomic. */
#include "runtime/rt_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = -1;   /* -1: not yet decided, read DMOE_LOG on first use */

int rt_log_parse_level(const char *s)
{
    static const struct { const char *name; int level; } table[] = {
        {"DEBUG", RT_LOG_DEBUG}, {"INFO", RT_LOG_INFO}, {"WARN", RT_LOG_WARN}, {"WARNING", RT_LOG_WARN},
        {"ERROR", RT_LOG_ERROR}, {"OFF", RT_LOG_OFF},
    };
    if (!s) return -1;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcasecmp(s, table[i].name) == 0) return table[i].level;
    return -1;
}

void rt_log_set_level(int level) { atomic_store(&log_level, level); }

int rt_log_enabled(int level)
{
    int cur = atomic_load(&log_level);
    if (cur < 0) {
        cur = rt_log_parse_level(getenv("DMOE_LOG"));
        if (cur < 0) cur = RT_LOG_INFO;
        atomic_store(&log_level, cur);
    }
    return level >= cur;
}

void rt_log_write(int level, const char *file, const char *func, int line, const char *fmt, ...)
{
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    char buf[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);

    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    int modlen = (int)strcspn(base, ".");

    int n = snprintf(buf, sizeof buf, "[%04d/%02d/%02d %02d:%02d:%02d.%03d][%s][%.*s.%s:%d] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), names[level < 0 ? 0 : level > 3 ? 3 : level],
                     modlen, base, func, line);
    if (n < 0) return;
    if ((size_t)n < sizeof buf) {
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
        va_end(ap);
        if (m > 0) n += m;
    }
    if ((size_t)n >= sizeof buf - 1) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
    (void)w;
}
