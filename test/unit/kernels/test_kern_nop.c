/* test_kern_nop.c -- the "nop" and "nop_delay" experts (kernels/kern_nop.c): identity forward and
 * backward, no parameters, and the registry listing every class this folder defines. */
#include <criterion/criterion.h>
#include <string.h>

#include "kernels/kern_classes.h"
#include "kernels/kern_optim.h"
#include "runtime/rt_err.h"

static void nopt_check(const char *name, const char *module_name)
{
    const kern_class *cls = kern_expert_find(name);
    cr_assert(cls, "%s not registered", name);
    cr_assert_str_eq(cls->module_name, module_name);
    kern_config cfg = {.hidden_dim = 6, .delay_ms = 20};
    kern_model m;
    cr_assert_eq(cls->setup(&m, &cfg), 0);
    cr_assert_eq(m.cls, cls);
    cr_assert_eq(m.n_floats, 0);
    cr_assert_eq(m.n_params, 0);
    cr_assert_eq(m.n_in, 1);
    cr_assert_eq(m.n_out, 1);
    cr_assert_eq(m.cfg.delay_ms, 20);
    cr_assert_eq(cls->forward_ws(&m, 3), 0);
    cr_assert_eq(cls->backward_ws(&m, 3), 0);
    cls->init(&m, NULL, 1);

    float x[18], y[18], gy[18], gx[18];
    for (int i = 0; i < 18; i++) {
        x[i] = (float)i * 0.5f - 3.0f;
        gy[i] = (float)(i % 5) - 2.0f;
    }
    const void *in[1] = {x};
    float *out[1] = {y};
    cr_assert_eq(cls->forward(&m, NULL, 3, in, out, NULL, 0), 0);
    cr_assert_eq(memcmp(x, y, sizeof x), 0);
    const float *gout[1] = {gy};
    float *gin[1] = {gx};
    cr_assert_eq(cls->backward(&m, NULL, 3, in, gout, gin, NULL, NULL, 0), 0);
    cr_assert_eq(memcmp(gx, gy, sizeof gx), 0);

    /* In place is fine too. */
    out[0] = x;
    cr_assert_eq(cls->forward(&m, NULL, 3, in, out, NULL, 0), 0);
    cr_assert_eq(memcmp(x, y, sizeof x), 0);

    /* An optimizer over zero floats steps without touching anything. */
    kern_optim_cfg oc;
    cr_assert_eq(kern_optim_parse("adam", &oc), 0);
    kern_optim o;
    cr_assert_eq(kern_optim_init(&o, &oc, m.n_floats), 0);
    cr_assert_eq(kern_optim_step(&o, &m, NULL, NULL, 1e-3f), 0.0f);
    kern_optim_free(&o);

    kern_config bad = {.hidden_dim = 0};
    cr_assert_eq(cls->setup(&m, &bad), DMOE_EINVAL);
}

Test(kern_nop, identity, .timeout = 30)
{
    nopt_check("nop", "NopExpert");
}

Test(kern_nop, delay_is_identity_too, .timeout = 30)
{
    nopt_check("nop_delay", "DelayedNopExpert");
}

Test(kern_nop, registry_lists_classes, .timeout = 30)
{
    const char *names = kern_expert_names();
    cr_assert(strstr(names, "ffn"));
    cr_assert(strstr(names, "det_dropout"));
    cr_assert(strstr(names, "nop_delay"));
    cr_assert_null(kern_expert_find("no_such_expert"));
    cr_assert_null(kern_expert_find(NULL));
}
