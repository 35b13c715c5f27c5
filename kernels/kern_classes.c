/* kern_classes.c -- the registry of expert architectures: the list of classes and the lookup by their
 * --expert_cls name (see kern_classes.h). It sits above the classes (kernels/experts/), which use only
 * kern_expert.c's helpers. To add an architecture: define a `const kern_class kern_<name>_class` in its
 * own file under kernels/experts/ and list it here. */
#include "kernels/kern_classes.h"

#include <stdio.h>
#include <string.h>

extern const kern_class kern_ffn_class;
extern const kern_class kern_det_dropout_class;
extern const kern_class kern_nop_class;
extern const kern_class kern_nop_delay_class;
extern const kern_class kern_transformer_class;

static const kern_class *const registry[] = {
    &kern_ffn_class,
    &kern_det_dropout_class,
    &kern_nop_class,
    &kern_nop_delay_class,
    &kern_transformer_class,
};

const kern_class *kern_expert_find(const char *name)
{
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
        if (strcmp(registry[i]->name, name) == 0) return registry[i];
    return NULL;
}

const char *kern_expert_names(void)
{
    static char names[256];
    if (!names[0]) {
        size_t off = 0;
        for (size_t i = 0; i < sizeof registry / sizeof registry[0] && off < sizeof names; i++)
            off += (size_t)snprintf(names + off, sizeof names - off, "%s%s", i ? ", " : "", registry[i]->name);
    }
    return names;
}
