/* rt_mem.c -- the heap policy (see rt_mem.h). */
#include "runtime/rt_mem.h"

#include <malloc.h>

#include "runtime/rt_err.h"

/* Blocks under 1 GiB come from the heap: the largest a node makes (a max_batch_size batch's work
 * block) is far under it, and one that is not is rare enough to be worth its own mapping. */
#define RT_MEM_MMAP_THRESHOLD (1u << 30)
/* free() never shrinks the heap by itself: the idle trim does, when no request is waiting for it. */
#define RT_MEM_TRIM_THRESHOLD (1u << 30)

int rt_mem_tune(void)
{
    int ok = mallopt(M_MMAP_THRESHOLD, (int)RT_MEM_MMAP_THRESHOLD);
    ok = mallopt(M_TRIM_THRESHOLD, (int)RT_MEM_TRIM_THRESHOLD) && ok;
    return ok ? 0 : DMOE_EINTERNAL;
}

int rt_mem_trim(void) { return malloc_trim(0); }
