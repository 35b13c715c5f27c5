/* expert_step.c -- the optimizer step of an expert after a backward (see expert_impl.h): the ranges of
 * its two phases as pool jobs, and the small state machine between them on the loop thread. expert.c
 * starts it once a good backward has answered and hands it each step job that comes back; nothing
 * else of the expert starts while it runs.
 */
#include "actors/serve/expert_impl.h"

#include "runtime/rt_log.h"

/* a step range under 32 K floats (128 KiB of each of params, grads and moments) costs less than the
 * wake-up of another worker */
#define EX_STEP_MIN_FLOATS (8 * KERN_OPTIM_BLOCK)

/* A range of the optimizer step: phase 1 sums and checks its gradients, phase 2 updates its parameters. */
static void step_run(rt_job *j)
{
    ex_step_job *sj = (ex_step_job *)j;
    ex_step *s = sj->s;
    uint64_t t_run = rt_clock_us();
    if (s->phase == EX_STEP_REDUCE)
        sj->finite =
            kern_optim_reduce(s->bufs, s->nbuf, sj->i0, sj->i1, s->opt->cfg.clip_grad_norm > 0 ? s->sumsq : NULL);
    else
        kern_optim_apply(s->opt, s->model, &s->plan, s->params, s->bufs[0], sj->i0, sj->i1);
    sj->run_us = rt_clock_us() - t_run;
}

/* A step job is back: its worker time counts. Returns the jobs of the phase still out. */
static int step_job_back(ex_step *s, const ex_step_job *sj)
{
    s->work_us += sj->run_us;
    return --s->out;
}

/* A step job's completion dropped undelivered (the expert stopped). */
static void step_drop(rt_msg *m)
{
    ((ex_step_job *)m)->s->out--;
}

/* Submit the jobs of the step's current phase, n ranges of whole blocks (n == 1: the whole buffer). */
static void step_submit(expert *e, int n)
{
    ex_step *s = &e->step;
    size_t nf = e->model.n_floats, blocks = (nf + KERN_OPTIM_BLOCK - 1) / KERN_OPTIM_BLOCK;
    s->lost = 0;
    for (int i = 0; i < n; i++) {
        ex_step_job *sj = &s->jobs[i];
        sj->s = s;
        sj->i0 = blocks * (size_t)i / (size_t)n * KERN_OPTIM_BLOCK;
        sj->i1 = i == n - 1 ? nf : blocks * (size_t)(i + 1) / (size_t)n * KERN_OPTIM_BLOCK;
        sj->finite = 0;
        sj->job.run = step_run;
        sj->job.owner = &e->actor;
        sj->job.msg.type = EX_MSG_STEP_DONE;
        sj->job.msg.drop = step_drop;
        if (rt_pool_submit(e->cfg.pool, &sj->job) == 0) s->out++;
        else s->lost = 1;
    }
}

/* The step is over (why: NULL, or why it was skipped): count its time and the waits it caused. */
static void step_end(expert *e, const char *why)
{
    ex_step *s = &e->step;
    if (why) {
        e->stats.errors[EX_BWD]++;
        LOG_WARN("%s: %s", e->uid, why);
    }
    uint64_t now = rt_clock_us();
    e->stats.step_us += now - s->t_start_us;
    e->stats.step_work_us += s->work_us;
    s->work_us = 0;
    for (int dir = 0; dir < 2; dir++) {   /* how long the step held back requests that were waiting */
        uint64_t since = batchq_oldest_us(e->q[dir]);
        if (since) e->stats.step_wait_us += now - (since > s->t_start_us ? since : s->t_start_us);
    }
    s->phase = EX_STEP_IDLE;
}


/* After a good backward whose gradients are in nbuf buffers (the first, e->grads, then grads_extra) and
 * whose reply is out: sum and check them, then step with lr (phase 1). */
void expert_step_start(expert *e, int nbuf, float lr)
{
    ex_step *s = &e->step;
    size_t nf = e->model.n_floats;
    if (nf == 0) return;   /* nothing to step (nop): no step is counted, as before */
    s->nbuf = nbuf;
    for (int k = 0; k < nbuf; k++) s->bufs[k] = k == 0 ? e->grads : e->grads_extra + (size_t)(k - 1) * nf;
    s->lr = lr;
    s->t_start_us = rt_clock_us();
    size_t want = (nf + EX_STEP_MIN_FLOATS - 1) / EX_STEP_MIN_FLOATS;
    s->njobs = want < (size_t)rt_pool_threads(e->cfg.pool) ? (int)want : rt_pool_threads(e->cfg.pool);
    s->phase = EX_STEP_REDUCE;
    step_submit(e, s->njobs);
    if (s->out == 0) step_end(e, "the optimizer step could not start: skipped");
}

/* A step job is back: when its phase is complete, start the next or finish. */
void expert_step_job_done(expert *e, const ex_step_job *sj)
{
    ex_step *s = &e->step;
    if (step_job_back(s, sj) > 0) return;
    if (s->lost) { step_end(e, "the optimizer step could not run on the pool: skipped"); return; }
    if (s->phase == EX_STEP_APPLY) { step_end(e, NULL); return; }
    int finite = 1;
    double sumsq = 0.0;
    for (int i = 0; i < s->njobs; i++) finite &= s->jobs[i].finite;
    if (!finite) { step_end(e, "parameter gradients are not finite: optimizer step skipped"); return; }
    if (e->opt.cfg.clip_grad_norm > 0) {   /* the blocks in order: the norm kern_optim_step computes */
        size_t blocks = (e->model.n_floats + KERN_OPTIM_BLOCK - 1) / KERN_OPTIM_BLOCK;
        for (size_t k = 0; k < blocks; k++) sumsq += s->sumsq[k];
    }
    kern_optim_begin(&e->opt, s->lr, sumsq, &s->plan);
    e->stats.steps = (uint64_t)e->opt.step;
    if (e->opt.cfg.kind == KERN_OPT_NONE) { step_end(e, NULL); return; }   /* counted; clipping would only scale grads */
    s->phase = EX_STEP_APPLY;
    step_submit(e, kern_optim_elementwise(&e->opt) ? s->njobs : 1);
    if (s->out == 0) step_end(e, "the optimizer step could not run on the pool: skipped");
}
