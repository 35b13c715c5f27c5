/* kern_expert.c -- the kern_model helpers every expert architecture's setup uses (see kern_expert.h):
 * named parameters at their offsets in the flat buffer, input and output descriptions, the common start
 * of a setup and PyTorch's Linear initialisation. The list of
 * architectures is kern_classes.c. */
#include "kernels/kern_expert.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "runtime/rt_err.h"

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

void kern_model_start(kern_model *m, const kern_class *cls, const kern_config *cfg, int64_t d0, int64_t d1)
{
    memset(m, 0, sizeof *m);
    m->cls = cls;
    m->cfg = *cfg;
    m->n_in = 1;
    kern_io_set(&m->in[0], "x", KERN_F32, d0, d1);
    m->n_out = 1;
    kern_io_set(&m->out[0], "output", KERN_F32, d0, d1);
}

void kern_init_linear(const kern_model *m, float *params, int w, kern_rng *r)
{
    const kern_param_info *pw = &m->params[w], *pb = &m->params[w + 1];
    float bound = 1.0f / sqrtf((float)pw->shape[1]);
    kern_init_uniform(params + pw->offset, pw->numel, bound, r);
    kern_init_uniform(params + pb->offset, pb->numel, bound, r);
}
