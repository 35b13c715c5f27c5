/* rt_mem.h -- the process's heap policy: keep big buffers in the heap while busy, give them back idle.
 *
 * glibc's defaults map every block over its (dynamic, at most 32 MiB) mmap threshold freshly from the
 * kernel and return it on free, and hand the heap's top back once 128 KiB of it is free. A node's
 * buffers are big and short-lived (frames, batch work and result blocks, saved activations: a batch of
 * 1,024 rows of the 512-wide ffn is tens of MiB), so each request paid a page fault per 4 KiB it
 * touched -- more loop-thread time than its copies (make bench: 1,880 us per MiB on 2 cores). With
 * rt_mem_tune such blocks come from the heap and are reused; rt_mem_trim, called when the process has
 * been idle a while (the node: its worker pool idle for NODE_TRIM_IDLE_MS), returns the free pages.
 * What the heap can hold stays bounded by what the node admits (its pending-bytes budget).
 *
 * Programs call rt_mem_tune first thing in main; a process embedding the library keeps its own policy.
 */
#ifndef DMOE_RT_MEM_H
#define DMOE_RT_MEM_H

/* rt_mem_tune sets the heap policy above (glibc's mallopt). Returns 0, or DMOE_EINTERNAL when the C
 * library refused a setting (the defaults then stay; nothing else changes). */
int rt_mem_tune(void);
/* rt_mem_trim returns the heap's free pages to the kernel (malloc_trim). Returns 1 when some were. */
int rt_mem_trim(void);

#endif
