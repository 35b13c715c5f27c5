/* rt_outfile.c -- checks that an output path is writable before the work that fills it (rt_outfile.h). */
#include "runtime/files/rt_outfile.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/rt_err.h"

int rt_outfile_check(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (!path || !*path) { dmoe_set_err(err, errlen, "an empty output path"); return DMOE_EIO; }
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) { dmoe_set_err(err, errlen, "cannot write %s: it is a folder", path); return DMOE_EIO; }
        if (access(path, W_OK) != 0) {
            dmoe_set_err(err, errlen, "cannot write %s: %s", path, strerror(errno));
            return DMOE_EIO;
        }
        return 0;
    }
    char copy[4096];
    if (strlen(path) >= sizeof copy) { dmoe_set_err(err, errlen, "cannot write %s: the path is too long", path); return DMOE_EIO; }
    snprintf(copy, sizeof copy, "%s", path);
    const char *dir = dirname(copy);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        dmoe_set_err(err, errlen, "cannot write %s: the folder %s does not exist", path, dir);
        return DMOE_EIO;
    }
    int e = rt_dir_probe(dir);
    if (e) {
        dmoe_set_err(err, errlen, "cannot write %s: cannot create a file in %s (%s)", path, dir, strerror(e));
        return DMOE_EIO;
    }
    return 0;
}

int rt_dir_probe(const char *dir)
{
    char probe[4096 + 32];
    if (strlen(dir) >= 4096) return ENAMETOOLONG;
    snprintf(probe, sizeof probe, "%s/.dmoe-write-test-XXXXXX", dir);   /* mkstemp's template */
    int fd = mkstemp(probe);
    if (fd < 0) return errno;
    errno = 0;
    int e = write(fd, "x", 1) == 1 ? 0 : (errno ? errno : EIO);   /* a short write sets no errno */
    close(fd);
    unlink(probe);
    return e;
}
