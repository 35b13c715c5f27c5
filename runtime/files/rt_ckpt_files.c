/* rt_ckpt_files.c -- checkpoint folders: the files DIR/PREFIX<N>.safetensors, listed and pruned.
 *
 * A checkpointing expert saves step N as DIR/PREFIX<N>.safetensors (rt_ckpt_path names it; rt_st_write
 * writes it atomically, so a listed file is always complete). rt_ckpt_list reads the folder and returns
 * the steps newest (largest N) first; rt_ckpt_prune deletes all but the newest K. A name counts only
 * when N is canonical decimal (digits, no sign, no leading zero, at most INT64_MAX): other files,
 * temporary files of a write in progress included, are never listed nor deleted.
 *
 * The interface is declared in rt_safetensors.h (its "checkpoint folders" part), which every user
 * already includes. Plain blocking directory I/O: call from a worker thread or a tool's main thread,
 * never from the event loop. No global state.
 */
#include "runtime/files/rt_safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/rt_err.h"

#define CK_SUFFIX ".safetensors"

int rt_ckpt_path(const char *dir, const char *prefix, int64_t step, char *buf, size_t len)
{
    if (!dir || !prefix || !buf || step < 0) return DMOE_EINVAL;
    int n = snprintf(buf, len, "%s/%s%lld" CK_SUFFIX, dir, prefix, (long long)step);
    return n < 0 || (size_t)n >= len ? DMOE_ETOOBIG : 0;
}

/* ck_step returns whether name is PREFIX<N>.safetensors with canonical N, and sets *step. */
static bool ck_step(const char *name, const char *prefix, int64_t *step)
{
    size_t pl = strlen(prefix), sl = strlen(CK_SUFFIX), nl = strlen(name);
    if (nl <= pl + sl || strncmp(name, prefix, pl) != 0 || strcmp(name + nl - sl, CK_SUFFIX) != 0) return false;
    const char *d = name + pl, *e = name + nl - sl;
    if (e - d > 1 && d[0] == '0') return false;
    int64_t v = 0;
    for (; d < e; d++) {
        if (*d < '0' || *d > '9') return false;
        if (v > (INT64_MAX - (*d - '0')) / 10) return false;
        v = v * 10 + (*d - '0');
    }
    *step = v;
    return true;
}

static int ck_cmp_desc(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

/* ck_scan returns all steps in dir, sorted largest first, in a malloc'd array (*steps, *n). */
static int ck_scan(const char *dir, const char *prefix, int64_t **steps, size_t *n)
{
    if (!dir || !prefix) return DMOE_EINVAL;
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? DMOE_ENOTFOUND : DMOE_EIO;
    int64_t *v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        int64_t s;
        if (!ck_step(de->d_name, prefix, &s)) continue;
        if (cnt == cap) {
            size_t nc = cap ? 2 * cap : 16;
            int64_t *nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                rc = DMOE_ENOMEM;
                break;
            }
            v = nv;
            cap = nc;
        }
        v[cnt++] = s;
        errno = 0;
    }
    if (!rc && errno != 0) rc = DMOE_EIO;
    closedir(d);
    if (rc) {
        free(v);
        return rc;
    }
    if (cnt) qsort(v, cnt, sizeof *v, ck_cmp_desc);
    *steps = v;
    *n = cnt;
    return 0;
}

int rt_ckpt_list(const char *dir, const char *prefix, int64_t *steps, size_t cap, size_t *count)
{
    if (!count || (cap && !steps)) return DMOE_EINVAL;
    int64_t *all = NULL;
    size_t n = 0;
    int rc = ck_scan(dir, prefix, &all, &n);
    if (rc) return rc;
    for (size_t i = 0; i < n && i < cap; i++) steps[i] = all[i];
    free(all);
    *count = n;
    return 0;
}

int rt_ckpt_prune(const char *dir, const char *prefix, size_t keep, int (*ours)(const char *path, void *arg),
                  void *arg, size_t *removed)
{
    int64_t *all = NULL;
    size_t n = 0, gone = 0, kept = 0;
    int rc = ck_scan(dir, prefix, &all, &n);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        if (rt_ckpt_path(dir, prefix, all[i], path, sizeof path)) {
            rc = DMOE_EIO;
            continue;
        }
        if (ours && !ours(path, arg)) continue;   /* not the writer's: neither counted nor deleted */
        if (kept < keep) {
            kept++;
            continue;
        }
        if (unlink(path) != 0) {
            rc = DMOE_EIO;
            continue;
        }
        gone++;
    }
    free(all);
    if (removed) *removed = gone;
    return rc;
}
