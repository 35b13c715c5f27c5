/* kern_classes.h -- the registry of expert architectures (ffn, det_dropout, nop, nop_delay, transformer):
 * find a class by its --expert_cls name, list the names. The interface a class implements is
 * kern_expert.h; the classes themselves are kernels/experts/. Read-only tables: any thread.
 */
#ifndef DMOE_KERN_CLASSES_H
#define DMOE_KERN_CLASSES_H

#include "kernels/kern_expert.h"

/* kern_expert_find returns the class registered under name, or NULL (also for NULL). */
const kern_class *kern_expert_find(const char *name);
/* kern_expert_names returns a static, comma-separated list of the registered class names. */
const char *kern_expert_names(void);

#endif
