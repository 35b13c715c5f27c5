/* ckpt.h -- expert checkpoints: DIR/<uid>/step-<N>.safetensors, written atomically on a worker thread,
 * loaded at start with a fall-back to older files.
 *
 * A checkpoint holds the expert's weights under PyTorch's state_dict names of the hivemind module
 * ("ffn.weight" [4H, H], ...), so `module.load_state_dict(safetensors.torch.load_file(f), strict=False)`
 * works; the optimizer's tensors under "optimizer.exp_avg.<name>" and "optimizer.exp_avg_sq.<name>"
 * (Adam, LAMB); the counters as int64 tensors "optimizer.step" and "optimizer.samples_seen"; and, in the
 * header's __metadata__, "format": "pt" plus dmoe.* entries (uid, class, hidden_dim, optimizer, lr,
 * scheduler, step, samples_seen). N is the optimizer step count. After a write, all but the newest
 * keep files dmoe wrote for this expert are deleted (hivemind keeps every one and fills disks).
 *
 * Retention rule: a file is dmoe's own when its header's metadata carries dmoe.uid equal to the
 * expert's uid -- every checkpoint ckpt_run writes does, in this run or an earlier one; PyTorch's
 * save_file, or any other tool, does not. Only those files count against keep and only those are ever
 * deleted, or overwritten: a file the user put in DIR/<uid>/ to seed the expert (weights only, any step
 * number) stays, whatever its name. A dmoe checkpoint copied in from elsewhere for the same uid counts
 * as dmoe's own.
 *
 * Loading takes the newest file that opens and has every weight with the right shape, dmoe's own files
 * before the user's (so that a seed with a high step number never shadows what the node saved after
 * it); a corrupt or truncated file is reported by name and the next one is tried. A file with weights only (written
 * by PyTorch) loads too: the optimizer starts fresh.
 *
 * ckpt_run is a pool job (blocking file I/O, never on the loop); it reads the expert's buffers, which
 * the expert guarantees no backward writes meanwhile. ckpt_load and ckpt_list_uids are blocking too and
 * run at start-up, before the loop.
 */
#ifndef DMOE_CKPT_H
#define DMOE_CKPT_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kern_expert.h"
#include "kernels/kern_optim.h"
#include "kernels/kern_sched.h"
#include "runtime/rt_pool.h"

#define CKPT_PREFIX "step-"

typedef struct {
    rt_job job;
    char dir[PATH_MAX - 64];     /* DIR/<uid> */
    char uid[256];
    char path[PATH_MAX + 64];    /* set by ckpt_run: the file written */
    const kern_model *model;
    const float *params;
    const kern_optim *opt;
    kern_sched_cfg sched;
    float base_lr;
    int64_t step;
    uint64_t samples_seen;
    int keep;
    int rc;
    char err[256];
    uint64_t bytes;              /* set by ckpt_run: the file's size */
    uint64_t write_us;           /* set by ckpt_run: writing, syncing and pruning */
    size_t removed;              /* set by ckpt_run: older files of dmoe's deleted */
} ckpt_job;

/* ckpt_run writes one checkpoint as described above (rt_job run function). Sets job->rc and err. */
void ckpt_run(rt_job *job);

typedef struct {
    int64_t step;
    uint64_t samples_seen;
    int has_optimizer;           /* moments were found and loaded */
    char path[PATH_MAX];
} ckpt_loaded;

/* ckpt_load loads the newest usable checkpoint of uid from root into params (m->n_floats) and, when
 * present and of the right kind, opt's moments and step. Returns 1 with *info filled when one was
 * loaded, 0 when there is none (params untouched), or a negative code when files exist but none is
 * usable (err names them). */
int ckpt_load(const char *root, const char *uid, const kern_model *m, float *params, kern_optim *opt,
              ckpt_loaded *info, char *err, size_t errlen);
/* ckpt_list_uids returns the NULL-terminated, sorted list of valid expert uids that have at least one
 * checkpoint file under root (free with uid_list_free), or NULL with err when root cannot be read.
 * A missing root is created and gives an empty list. */
char **ckpt_list_uids(const char *root, char *err, size_t errlen);
/* ckpt_dir_check makes sure root exists (created if absent) and a file can be created in it (a temporary
 * one, removed at once). Returns 0, or DMOE_EIO with err naming the folder and the reason. Blocking:
 * start-up only. */
int ckpt_dir_check(const char *root, char *err, size_t errlen);
/* ckpt_is_ours returns whether the checkpoint file at path was written by dmoe for uid (its metadata's
 * dmoe.uid; only the header is read). Blocking. */
int ckpt_is_ours(const char *path, const char *uid);
/* ckpt_uid_ok returns whether uid can name a checkpoint folder (no '/', not "." or ".."). */
int ckpt_uid_ok(const char *uid);

#endif
