/* ckpt.c -- writing and loading expert checkpoints (see ckpt.h). */
#include "actors/node/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actors/grid/uid.h"
#include "kernels/kern_ops.h"
#include "runtime/rt_actor.h"
#include "runtime/rt_err.h"
#include "runtime/rt_log.h"
#include "runtime/files/rt_outfile.h"
#include "runtime/files/rt_safetensors.h"

#define CKPT_MAX_FILES 64      /* files per expert considered when loading */
#define CKPT_MAX_TENSORS (3 * KERN_MAX_PARAMS + 2)

int ckpt_uid_ok(const char *uid)
{
    return uid_is_valid(uid) && !strchr(uid, '/') && strcmp(uid, ".") != 0 && strcmp(uid, "..") != 0;
}

static int uses_moments(const kern_optim *o)
{
    return o->m && o->v && (o->cfg.kind == KERN_OPT_ADAM || o->cfg.kind == KERN_OPT_LAMB);
}

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return DMOE_EIO;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return DMOE_EIO;
    return 0;
}

int ckpt_dir_check(const char *root, char *err, size_t errlen)
{
    if (mkdir_p(root) != 0) {
        snprintf(err, errlen, "cannot create the checkpoint folder %s: %s", root, strerror(errno));
        return DMOE_EIO;
    }
    int e = rt_dir_probe(root);
    if (e) {
        snprintf(err, errlen, "cannot write to the checkpoint folder %s: %s", root, strerror(e));
        return DMOE_EIO;
    }
    return 0;
}

/* ckpt_owner returns 1 when dmoe wrote the file at path for uid, 0 when its header is readable and says
 * otherwise (a user's file), -1 when the header cannot be read (missing, truncated, corrupt). */
static int ckpt_owner(const char *path, const char *uid)
{
    char who[256], ignore[128];
    int rc = rt_st_read_meta(path, "dmoe.uid", who, sizeof who, ignore, sizeof ignore);
    if (rc == 0) return strcmp(who, uid) == 0;
    return rc == DMOE_ENOTFOUND && access(path, F_OK) == 0 ? 0 : -1;
}

int ckpt_is_ours(const char *path, const char *uid) { return ckpt_owner(path, uid) == 1; }

/* The retention predicate of rt_ckpt_prune: a file dmoe wrote for this expert (arg: the uid). */
static int prune_ours(const char *path, void *arg) { return ckpt_is_ours(path, arg); }

/* ---- writing, on a worker ---- */

void ckpt_run(rt_job *job)
{
    ckpt_job *j = (ckpt_job *)job;
    const kern_model *m = j->model;
    uint64_t t0 = rt_clock_us();
    j->bytes = 0;
    j->removed = 0;
    j->rc = mkdir_p(j->dir);
    if (j->rc) { snprintf(j->err, sizeof j->err, "cannot create %.160s: %s", j->dir, strerror(errno)); return; }

    rt_st_tensor t[CKPT_MAX_TENSORS];
    char names[CKPT_MAX_TENSORS][96];
    size_t nt = 0;
    int moments = uses_moments(j->opt);
    for (int k = 0; k < (moments ? 3 : 1); k++) {
        const float *base = k == 0 ? j->params : k == 1 ? j->opt->m : j->opt->v;
        for (int i = 0; i < m->n_params; i++) {
            const kern_param_info *p = &m->params[i];
            snprintf(names[nt], sizeof names[nt], "%s%s", k == 0 ? "" : k == 1 ? "optimizer.exp_avg." : "optimizer.exp_avg_sq.",
                     p->name);
            t[nt] = (rt_st_tensor){.name = names[nt], .dtype = RT_ST_F32, .ndim = p->ndim,
                                   .shape = {p->shape[0], p->shape[1]}, .data = base + p->offset};
            nt++;
        }
    }
    int64_t step = j->step, samples = (int64_t)j->samples_seen;
    t[nt++] = (rt_st_tensor){.name = "optimizer.step", .dtype = RT_ST_I64, .ndim = 1, .shape = {1}, .data = &step};
    t[nt++] = (rt_st_tensor){.name = "optimizer.samples_seen", .dtype = RT_ST_I64, .ndim = 1, .shape = {1}, .data = &samples};

    char hidden[24], steps[24], seen[24], lr[32], warm[24], total[24];
    snprintf(hidden, sizeof hidden, "%d", m->cfg.hidden_dim);
    snprintf(steps, sizeof steps, "%" PRId64, step);
    snprintf(seen, sizeof seen, "%" PRIu64, j->samples_seen);
    snprintf(lr, sizeof lr, "%.9g", j->base_lr);
    snprintf(warm, sizeof warm, "%" PRId64, j->sched.num_warmup_steps);
    snprintf(total, sizeof total, "%" PRId64, j->sched.num_total_steps);
    rt_st_kv meta[] = {
        {"format", "pt"},
        {"dmoe.uid", j->uid},
        {"dmoe.expert_cls", m->cls->name},
        {"dmoe.module", m->cls->module_name},
        {"dmoe.hidden_dim", hidden},
        {"dmoe.optimizer", kern_optim_name(j->opt->cfg.kind)},
        {"dmoe.lr", lr},
        {"dmoe.scheduler", kern_sched_name(j->sched.kind)},
        {"dmoe.num_warmup_steps", warm},
        {"dmoe.num_training_steps", total},
        {"dmoe.step", steps},
        {"dmoe.samples_seen", seen},
    };
    char name[64];
    snprintf(name, sizeof name, CKPT_PREFIX "%" PRId64 ".safetensors", step);
    snprintf(j->path, sizeof j->path, "%s/%s", j->dir, name);
    struct stat st;
    if (stat(j->path, &st) == 0 && !ckpt_is_ours(j->path, j->uid)) {   /* e.g. a seed the user put there */
        snprintf(j->err, sizeof j->err, "%.200s exists and was not written by dmoe for %.64s: left as it is", j->path,
                 j->uid);
        j->rc = DMOE_EIO;
        return;
    }
    j->rc = rt_st_write(j->dir, name, t, nt, meta, sizeof meta / sizeof meta[0], j->err, sizeof j->err);
    if (j->rc) return;
    if (stat(j->path, &st) == 0) j->bytes = (uint64_t)st.st_size;
    if (j->keep > 0) rt_ckpt_prune(j->dir, CKPT_PREFIX, (size_t)j->keep, prune_ours, j->uid, &j->removed);
    j->write_us = rt_clock_us() - t0;
}

/* ---- loading, at start ---- */

static int load_file(const char *path, const kern_model *m, float *params, kern_optim *opt, ckpt_loaded *info,
                     char *err, size_t errlen)
{
    rt_st_file *f;
    int rc = rt_st_open(path, &f, err, errlen);
    if (rc) return rc;
    float *tmp = malloc((m->n_floats ? m->n_floats : 1) * sizeof(float));
    if (!tmp) { rt_st_close(f); snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    for (int i = 0; i < m->n_params && rc == 0; i++) {
        const kern_param_info *p = &m->params[i];
        rc = rt_st_copy(f, p->name, RT_ST_F32, p->ndim, p->shape, tmp + p->offset, p->numel * sizeof(float), err, errlen);
    }
    if (rc == 0 && !kern_all_finite(tmp, m->n_floats)) {
        snprintf(err, errlen, "weights contain NaN or Inf");
        rc = DMOE_ENONFINITE;
    }
    if (rc) { free(tmp); rt_st_close(f); return rc; }

    int64_t step = 0, samples = 0;
    int64_t one[1] = {1};
    char ignore[64];
    rt_st_copy(f, "optimizer.step", RT_ST_I64, 1, one, &step, sizeof step, ignore, sizeof ignore);
    rt_st_copy(f, "optimizer.samples_seen", RT_ST_I64, 1, one, &samples, sizeof samples, ignore, sizeof ignore);
    if (step < 0) step = 0;
    if (samples < 0) samples = 0;

    /* moments: only all of them, of the right shapes, for an optimizer that has them */
    int has_opt = 0;
    if (uses_moments(opt)) {
        float *mm = malloc((m->n_floats ? m->n_floats : 1) * sizeof(float));
        float *vv = malloc((m->n_floats ? m->n_floats : 1) * sizeof(float));
        int ok = mm && vv;
        for (int i = 0; i < m->n_params && ok; i++) {
            const kern_param_info *p = &m->params[i];
            char nm[96];
            snprintf(nm, sizeof nm, "optimizer.exp_avg.%s", p->name);
            ok = rt_st_copy(f, nm, RT_ST_F32, p->ndim, p->shape, mm + p->offset, p->numel * 4, ignore, sizeof ignore) == 0;
            snprintf(nm, sizeof nm, "optimizer.exp_avg_sq.%s", p->name);
            ok = ok && rt_st_copy(f, nm, RT_ST_F32, p->ndim, p->shape, vv + p->offset, p->numel * 4, ignore, sizeof ignore) == 0;
        }
        if (ok) {
            memcpy(opt->m, mm, m->n_floats * sizeof(float));
            memcpy(opt->v, vv, m->n_floats * sizeof(float));
            has_opt = 1;
        }
        free(mm);
        free(vv);
    } else {
        has_opt = rt_st_find(f, "optimizer.step") != NULL;
    }
    memcpy(params, tmp, m->n_floats * sizeof(float));
    free(tmp);
    /* without moments the optimizer starts fresh, step count included (Adam's bias correction needs it) */
    opt->step = has_opt ? step : 0;
    info->step = step;
    info->samples_seen = (uint64_t)samples;
    info->has_optimizer = has_opt;
    snprintf(info->path, sizeof info->path, "%s", path);
    rt_st_close(f);
    return 0;
}

/* Remove the temporary files of writes that never finished (the writer renames a file when it is
 * complete, so a tmp- file is by definition incomplete). */
static void remove_partial(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "tmp-", 4) != 0) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%.3000s/%.255s", dir, de->d_name);
        if (unlink(path) == 0) LOG_INFO("removed %s, left by an interrupted checkpoint", path);
    }
    closedir(d);
}

int ckpt_load(const char *root, const char *uid, const kern_model *m, float *params, kern_optim *opt,
              ckpt_loaded *info, char *err, size_t errlen)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%s", root, uid);
    remove_partial(dir);
    int64_t steps[CKPT_MAX_FILES];
    size_t count = 0;
    int rc = rt_ckpt_list(dir, CKPT_PREFIX, steps, CKPT_MAX_FILES, &count);
    if (rc == DMOE_ENOTFOUND || (rc == 0 && count == 0)) return 0;
    if (rc) { snprintf(err, errlen, "cannot list %s", dir); return rc; }
    if (count > CKPT_MAX_FILES) count = CKPT_MAX_FILES;
    /* dmoe's own files (and unreadable ones, which say so when tried) first, newest first; then the
     * user's seeds: a weights-only seed named step-100 must not shadow the node's later step-3 */
    int64_t order[CKPT_MAX_FILES];
    size_t k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < count; i++) {
            char path[PATH_MAX];
            rt_ckpt_path(dir, CKPT_PREFIX, steps[i], path, sizeof path);
            if ((ckpt_owner(path, uid) == 0) == (pass == 1)) order[k++] = steps[i];
        }
    char failures[512] = "";
    for (size_t i = 0; i < count; i++) {
        char path[PATH_MAX], why[256];
        rt_ckpt_path(dir, CKPT_PREFIX, order[i], path, sizeof path);
        rc = load_file(path, m, params, opt, info, why, sizeof why);
        if (rc == 0) return 1;
        LOG_WARN("checkpoint %s is unusable (%s); trying the next one", path, why);
        size_t off = strlen(failures);
        snprintf(failures + off, sizeof failures - off, "%s%.200s: %.100s", off ? "; " : "", path, why);
    }
    snprintf(err, errlen, "no usable checkpoint for %s: %s", uid, failures);
    return DMOE_EPROTO;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

char **ckpt_list_uids(const char *root, char *err, size_t errlen)
{
    if (mkdir_p(root) != 0) { snprintf(err, errlen, "cannot create %s: %s", root, strerror(errno)); return NULL; }
    DIR *d = opendir(root);
    if (!d) { snprintf(err, errlen, "cannot read %s: %s", root, strerror(errno)); return NULL; }
    size_t n = 0, cap = 16;
    char **uids = calloc(cap + 1, sizeof *uids);
    struct dirent *de;
    while (uids && (de = readdir(d))) {
        if (!ckpt_uid_ok(de->d_name)) continue;
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/%s", root, de->d_name);
        int64_t step;
        size_t count = 0;
        if (rt_ckpt_list(dir, CKPT_PREFIX, &step, 1, &count) != 0 || count == 0) continue;
        if (n == cap) {
            char **grown = realloc(uids, (cap * 2 + 1) * sizeof *uids);
            if (!grown) break;
            uids = grown;
            cap *= 2;
        }
        uids[n++] = strdup(de->d_name);
        uids[n] = NULL;
    }
    closedir(d);
    if (!uids) { snprintf(err, errlen, "out of memory"); return NULL; }
    qsort(uids, n, sizeof *uids, cmp_str);
    return uids;
}
