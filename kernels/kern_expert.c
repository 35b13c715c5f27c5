/* kern_expert.c -- the registry of expert architectures and kern_model helpers (see kern_expert.h).
 * To add an architecture: define a `const kern_class kern_<name>_class` in its own file and list it here. */
#include "kernels/kern_expert.h"

#include <stdio.h>
#include <string.h>

#include "runtime/rt_err.h"

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

const kern_param_info *kern_model_param(const kern_model *m, const char *name)
{
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

int kern_model_add_param(kern_model *m, const char *name, int64_t d0, int64_t d1)
{
    if (m->n_params >= KERN_MAX_PARAMS || strlen(name) >= sizeof m->params[0].name) return DMOE_EINVAL;
    kern_param_info *p = &m->params[m->n_params++];
    memset(p, 0, sizeof *p);
    strcpy(p->name, name);
    p->ndim = d1 ? 2 : 1;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->numel = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    p->offset = m->n_floats;
    m->n_floats += p->numel;
    return 0;
}

void kern_io_set(kern_io_info *io, const char *name, kern_dtype dtype, int64_t d0, int64_t d1)
{
    memset(io, 0, sizeof *io);
    snprintf(io->name, sizeof io->name, "%s", name);
    io->dtype = dtype;
    io->ndim = d1 ? 2 : 1;
    io->dims[0] = d0;
    io->dims[1] = d1;
}
