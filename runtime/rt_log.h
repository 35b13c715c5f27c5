/* rt_log.h -- logging in hivemind's format.
 *
 *   [2026/11/26 01:52:01.424][INFO][module.function:line] message
 *
 * module is the source file's name without its extension. The level comes from rt_log_set_level (the
 * programs' --log_level) or, if that was never called, from the DMOE_LOG environment variable
 * (DEBUG, INFO, WARN, ERROR; default INFO). Safe from any thread: each line is one write(2) to stderr.
 */
#ifndef DMOE_RT_LOG_H
#define DMOE_RT_LOG_H

enum { RT_LOG_DEBUG = 0, RT_LOG_INFO = 1, RT_LOG_WARN = 2, RT_LOG_ERROR = 3, RT_LOG_OFF = 4 };

/* rt_log_parse_level returns the level named by s (case-insensitive; WARNING is WARN) or -1. */
int rt_log_parse_level(const char *s);
/* rt_log_set_level sets the threshold; lines below it are dropped. */
void rt_log_set_level(int level);
/* rt_log_enabled returns whether a line at level would be printed. */
int rt_log_enabled(int level);
/* rt_log_write formats and prints one line; use the LOG_* macros instead. */
void rt_log_write(int level, const char *file, const char *func, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define RT_LOG(lvl, ...) \
    do { if (rt_log_enabled(lvl)) rt_log_write(lvl, __FILE__, __func__, __LINE__, __VA_ARGS__); } while (0)
#define LOG_DEBUG(...) RT_LOG(RT_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...)  RT_LOG(RT_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...)  RT_LOG(RT_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) RT_LOG(RT_LOG_ERROR, __VA_ARGS__)

#endif
