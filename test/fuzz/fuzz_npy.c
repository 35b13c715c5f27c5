/* fuzz_npy.c -- libFuzzer harness: the .npy reader (wire/codec/wire_npy) on hostile files.
 *
 * The input is the file: it is written to an in-memory file (memfd) that wire_npy_read opens by its
 * /proc/self/fd path, so nothing touches the disk. A file the reader accepts must hold exactly
 * numel * itemsize bytes of data, and written back with wire_npy_write (to a second memfd) it must read
 * again as the same dtype, shape and bytes. Everything is freed (LeakSanitizer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "test/fuzz/fuzz_common.h"
#include "wire/codec/wire_npy.h"

/* memfd_path makes an empty in-memory file, writes its /proc/self/fd path into path and returns its fd. */
static int memfd_path(const char *name, char *path, size_t cap)
{
    int fd = memfd_create(name, 0);
    FUZZ_CHECK(fd >= 0);
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int in_fd = -1;   /* both memfds stay open for the process's life (wire_npy_write truncates) */
    static char in_path[64], out_path[64];
    if (in_fd < 0) {
        in_fd = memfd_path("fuzz-npy-in", in_path, sizeof in_path);
        (void)memfd_path("fuzz-npy-out", out_path, sizeof out_path);
    }
    FUZZ_CHECK(ftruncate(in_fd, 0) == 0);
    FUZZ_CHECK(pwrite(in_fd, data, size, 0) == (ssize_t)size);

    wire_dtype dt;
    int ndim;
    int64_t shape[WIRE_MAX_NDIM];
    void *buf = NULL;
    size_t nbytes;
    char err[512];
    if (wire_npy_read(in_path, &dt, &ndim, shape, &buf, &nbytes, err, sizeof err) != 0) return 0;
    FUZZ_CHECK(buf != NULL && ndim >= 0 && ndim <= WIRE_MAX_NDIM);
    FUZZ_CHECK(dt == WIRE_DT_F32 || dt == WIRE_DT_U8);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        FUZZ_CHECK(shape[i] >= 0);
        numel *= (size_t)shape[i];
    }
    FUZZ_CHECK(nbytes == numel * wire_dtype_size(dt));

    FUZZ_CHECK(wire_npy_write(out_path, dt, ndim, shape, buf, err, sizeof err) == 0);
    wire_dtype dt2;
    int ndim2;
    int64_t shape2[WIRE_MAX_NDIM];
    void *buf2 = NULL;
    size_t nbytes2;
    FUZZ_CHECK(wire_npy_read(out_path, &dt2, &ndim2, shape2, &buf2, &nbytes2, err, sizeof err) == 0);
    FUZZ_CHECK(dt2 == dt && ndim2 == ndim && nbytes2 == nbytes);
    FUZZ_CHECK(memcmp(shape2, shape, sizeof(int64_t) * (size_t)ndim) == 0);
    FUZZ_CHECK(nbytes == 0 || memcmp(buf2, buf, nbytes) == 0);
    free(buf2);
    free(buf);
    return 0;
}
