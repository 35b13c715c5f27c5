/* test_checkpoint.c -- checkpoints end to end: PyTorch weights seeded through a checkpoint reproduce the
 * reference vectors through a node over TCP (every expert class), a restart continues bit-identically
 * (weights and optimizer moments), old files are pruned, a corrupt newest file falls back to an older
 * one, and SIGKILL during constant checkpointing never leaves an unloadable state. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actors/node/ckpt.h"
#include "actors/node/node.h"
#include "kernels/kern_classes.h"
#include "kernels/kern_optim.h"
#include "runtime/rt_err.h"
#include "runtime/files/rt_safetensors.h"
#include "test/integration/harness.h"
#include "test/unit/refdata.h"

static void tmpdir(char *buf, size_t cap)
{
    snprintf(buf, cap, "/tmp/dmoe-ckpt-XXXXXX");
    cr_assert_not_null(mkdtemp(buf));
}

static void rmtree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Write the reference file's param.* tensors, as PyTorch would (weights only), for uid under root. */
static void seed_from_reference(const refdata *rd, const char *root, const char *uid)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", root, uid);
    mkdir(dir, 0755);
    rt_st_tensor t[32];
    int nt = 0;
    for (int i = 0; i < refdata_count(rd) && nt < 32; i++) {
        const char *name = refdata_name(rd, i);
        if (strncmp(name, "param.", 6) != 0) continue;
        t[nt].name = name + 6;
        t[nt].dtype = RT_ST_F32;
        t[nt].ndim = refdata_shape(rd, name, t[nt].shape);
        t[nt].data = refdata_f32(rd, name, NULL);
        nt++;
    }
    rt_st_kv meta[] = {{"format", "pt"}};
    char err[256];
    cr_assert_eq(rt_st_write(dir, "step-0.safetensors", t, (size_t)nt, meta, 1, err, sizeof err), 0, "%s", err);
}

/* Pack a reference tensor (f32 or u8) as a wire tensor into the request. */
static void pack_ref(wire_out *o, const refdata *rd, const char *name)
{
    int64_t shape[8];
    int nd = refdata_shape(rd, name, shape);
    size_t n;
    const float *f = refdata_f32(rd, name, &n);
    const uint8_t *u = f ? NULL : refdata_u8(rd, name, &n);
    wire_tensor t = {.dtype = f ? WIRE_DT_F32 : WIRE_DT_U8, .ndim = nd, .numel = n};
    memcpy(t.shape, shape, sizeof(int64_t) * (size_t)nd);
    t.nbytes = n * (f ? 4 : 1);
    t.data = f ? (const uint8_t *)f : u;
    wire_tensor_pack(o, &t, NULL, NULL);
}

static void check_case(const char *file, const char *cls, const char *hidden, const char *seq, float tol)
{
    refdata *rd = refdata_load(file);
    cr_assert_not_null(rd);
    char root[128];
    tmpdir(root, sizeof root);
    seed_from_reference(rd, root, "ref.0");
    int n_in = refdata_f32(rd, "input1", NULL) || refdata_u8(rd, "input1", NULL) ? 2 : 1;
    th_node n;
    const char *args[] = {"--expert_cls", cls, "--hidden_dim", hidden, "--seq_len", seq, "--dropout", "0",
                          "--checkpoint_dir", root, "--num_experts", "1", "--optimizer", "none", NULL};
    cr_assert_eq(th_node_start(&n, args), 0);
    char *log = th_node_log(&n);
    cr_assert(strstr(log, "weights only: the optimizer starts fresh"), "%s", log);
    free(log);
    int fd = th_connect(n.port);
    for (int dir = 0; dir < 2; dir++) {
        wire_out *o = wire_out_new();
        msgpack_packer *pk = wire_out_pk(o);
        wire_request_begin(o, (uint64_t)dir + 1, dir ? "backward" : "forward", dir ? 5 : 4);
        wire_pack_str(pk, "uid");
        wire_pack_str(pk, "ref.0");
        wire_pack_str(pk, "inputs");
        msgpack_pack_array(pk, (size_t)n_in);
        pack_ref(o, rd, "input0");
        if (n_in == 2) pack_ref(o, rd, "input1");
        if (dir) {
            wire_pack_str(pk, "grad_outputs");
            msgpack_pack_array(pk, 1);
            pack_ref(o, rd, "grad_output");
        }
        cr_assert_eq(th_send_out(fd, o), 0);
        wire_msg m;
        cr_assert_eq(th_recv_msg(fd, &m), 0);
        cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s: %s", file, m.err_msg);
        const msgpack_object *arr = wire_map_get(m.result, dir ? "grad_inputs" : "outputs");
        wire_tensor t;
        char err[128];
        cr_assert_eq(wire_tensor_decode(&arr->via.array.ptr[0], &t, err, sizeof err), 0);
        size_t want_n;
        const float *want = refdata_f32(rd, dir ? "grad_input0" : "output", &want_n);
        cr_assert_eq(t.numel, want_n);
        for (size_t i = 0; i < want_n; i++) {
            float got;
            memcpy(&got, t.data + 4 * i, 4);
            cr_assert_leq(fabsf(got - want[i]), tol + tol * fabsf(want[i]), "%s %s[%zu]: %g vs %g", file,
                          dir ? "grad_input0" : "output", i, got, want[i]);
        }
        wire_msg_free(&m);
    }
    close(fd);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
    refdata_free(rd);
    rmtree(root);
}

Test(checkpoint, ffn_reference_through_node, .timeout = 60) { check_case("ffn_h64_b5.msgpack", "ffn", "64", "0", 1e-5f); }
Test(checkpoint, det_dropout_reference_through_node, .timeout = 60)
{
    check_case("det_dropout_h64_b5.msgpack", "det_dropout", "64", "0", 1e-5f);
}
Test(checkpoint, transformer_reference_through_node, .timeout = 60)
{
    check_case("transformer_h32_s5_b2.msgpack", "transformer", "32", "5", 1e-4f);
}

/* ---- restarts ---- */

enum { H = 32, B = 4 };

static void backward_once(int port, const float *x, const float *gy)
{
    int fd = th_connect(port);
    cr_assert_geq(fd, 0);
    cr_assert_eq(th_send_out(fd, th_request(1, "expert.0", x, B, H, gy)), 0);
    wire_msg m;
    cr_assert_eq(th_recv_msg(fd, &m), 0);
    cr_assert_eq(m.kind, WIRE_REPLY_OK, "%s", m.err_msg);
    wire_msg_free(&m);
    close(fd);
}

static size_t count_files(const char *dir)
{
    int64_t steps[16];
    size_t count = 0;
    rt_ckpt_list(dir, CKPT_PREFIX, steps, 16, &count);
    return count;
}

/* load_expert0 sets *m up as the nodes' ffn of hidden size H, and loads expert.0's newest checkpoint
 * under root into a new *params (the caller frees it) and an adam *opt (kern_optim_free). Returns
 * ckpt_load's code, with err filled. */
static int load_expert0(const char *root, kern_model *m, float **params, kern_optim *opt, ckpt_loaded *info,
                        char *err, size_t errlen)
{
    const kern_class *cls = kern_expert_find("ffn");
    kern_config kc = {.hidden_dim = H};
    *m = (kern_model){0};
    cr_assert_eq(cls->setup(m, &kc), 0);
    *params = calloc(m->n_floats, 4);
    cr_assert(*params);
    kern_optim_cfg oc;
    cr_assert_eq(kern_optim_parse("adam", &oc), 0);
    cr_assert_eq(kern_optim_init(opt, &oc, m->n_floats), 0);
    return ckpt_load(root, "expert.0", m, *params, opt, info, err, errlen);
}

Test(checkpoint, restart_continues_bit_identically, .timeout = 90)
{
    char root[128], dir[256], path[300];
    tmpdir(root, sizeof root);
    snprintf(dir, sizeof dir, "%s/expert.0", root);
    float x[B * H], gy[B * H];
    th_fill_normal(x, B * H, 1);
    th_fill_normal(gy, B * H, 2);
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "32", "--expert_uids", "expert.0", "--checkpoint_dir",
                          root, "--keep_checkpoints", "2", "--update_period", "3600", NULL};
    th_node n;
    cr_assert_eq(th_node_start(&n, args), 0);
    for (int i = 0; i < 3; i++) backward_once(n.port, x, gy);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);   /* the last checkpoint: step 3 */
    snprintf(path, sizeof path, "%s/step-3.safetensors", dir);
    cr_assert_eq(access(path, R_OK), 0, "no %s", path);

    /* what the node should do next, computed here from the file */
    kern_model m;
    float *params;
    kern_optim opt;
    ckpt_loaded info;
    char err[512];
    cr_assert_eq(load_expert0(root, &m, &params, &opt, &info, err, sizeof err), 1, "%s", err);
    const kern_class *cls = m.cls;
    float *grads = calloc(m.n_floats, 4), *ws = calloc(cls->backward_ws(&m, B) + 16, 4), *gx = calloc(B * H, 4);
    cr_assert_eq(info.step, 3);
    cr_assert_eq(info.samples_seen, 3 * B);
    cr_assert(info.has_optimizer);
    cr_assert_eq(opt.step, 3);
    const void *in[1] = {x};
    const float *go[1] = {gy};
    float *gi[1] = {gx};
    cls->backward(&m, params, B, in, go, gi, grads, ws, 0);
    kern_optim_step(&opt, &m, params, grads, opt.cfg.lr);

    /* restart from the file, one more step, stop: step-4 must hold exactly that */
    cr_assert_eq(th_node_start(&n, args), 0);
    char *log = th_node_log(&n);
    cr_assert(strstr(log, "loaded") && strstr(log, "step 3"), "%s", log);
    free(log);
    backward_once(n.port, x, gy);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
    kern_model m2;
    float *p2;
    kern_optim o2;
    cr_assert_eq(load_expert0(root, &m2, &p2, &o2, &info, err, sizeof err), 1, "%s", err);
    cr_assert_eq(info.step, 4);
    cr_assert_eq(memcmp(p2, params, m.n_floats * 4), 0, "weights differ from one exact step after the restart");
    cr_assert_eq(memcmp(o2.m, opt.m, m.n_floats * 4), 0, "first moments differ");
    cr_assert_eq(memcmp(o2.v, opt.v, m.n_floats * 4), 0, "second moments differ");
    cr_assert_eq(count_files(dir), 2, "keep_checkpoints 2 keeps two files");

    /* a truncated newest file: the node says so and starts from the older one */
    snprintf(path, sizeof path, "%s/step-4.safetensors", dir);
    cr_assert_eq(truncate(path, 100), 0);
    cr_assert_eq(th_node_start(&n, args), 0);
    log = th_node_log(&n);
    cr_assert(strstr(log, "step-4.safetensors is unusable") && strstr(log, "(step 3"), "%s", log);
    free(log);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);

    kern_optim_free(&opt);
    kern_optim_free(&o2);
    free(params); free(grads); free(ws); free(gx); free(p2);
    rmtree(root);
}

Test(checkpoint, sigkill_during_writes_keeps_a_loadable_state, .timeout = 120)
{
    char root[128];
    tmpdir(root, sizeof root);
    float x[B * H], gy[B * H];
    th_fill_normal(x, B * H, 3);
    th_fill_normal(gy, B * H, 4);
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "32", "--expert_uids", "expert.0", "--checkpoint_dir",
                          root, "--update_period", "0.01", NULL};
    int64_t last_step = 0;
    for (int round = 0; round < 6; round++) {
        th_node n;
        cr_assert_eq(th_node_start(&n, args), 0);
        char *log = th_node_log(&n);
        if (round > 0) cr_assert(strstr(log, "loaded"), "round %d did not load a checkpoint:\n%s", round, log);
        free(log);
        for (int i = 0; i < 5 + round; i++) backward_once(n.port, x, gy);
        usleep((useconds_t)(20000 + 3000 * round));
        cr_assert_eq(th_node_stop(&n, SIGKILL), 128 + SIGKILL);
        /* whatever the kill interrupted, the newest file that loads is at most one step behind the count */
        kern_model m;
        float *params;
        kern_optim opt;
        ckpt_loaded info;
        char err[512];
        int rc = load_expert0(root, &m, &params, &opt, &info, err, sizeof err);
        cr_assert_eq(rc, 1, "round %d: %s", round, err);
        cr_assert_geq(info.step, last_step, "round %d went back in time", round);
        last_step = info.step;
        kern_optim_free(&opt);
        free(params);
    }
    cr_assert_gt(last_step, 0);
    /* the next start removes what the kills left half-written */
    th_node n;
    cr_assert_eq(th_node_start(&n, args), 0);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
    char dir[256];
    snprintf(dir, sizeof dir, "%s/expert.0", root);
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *de;
    while ((de = readdir(d))) cr_assert(strncmp(de->d_name, "tmp-", 4) != 0, "left over: %s", de->d_name);
    closedir(d);
    rmtree(root);
}

/* A tiny independent reader: the file is 8 bytes of header length, a JSON header, the data. */
Test(checkpoint, files_open_with_a_plain_reader, .timeout = 60)
{
    char root[128];
    tmpdir(root, sizeof root);
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "16", "--expert_uids", "expert.0", "--checkpoint_dir",
                          root, NULL};
    th_node n;
    cr_assert_eq(th_node_start(&n, args), 0);
    cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
    char path[300];
    snprintf(path, sizeof path, "%s/expert.0/step-0.safetensors", root);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "no %s", path);
    uint8_t len8[8];
    cr_assert_eq(fread(len8, 1, 8, f), 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len8[i];
    cr_assert_lt(hlen, 1u << 20);
    char *hdr = calloc(hlen + 1, 1);
    cr_assert_eq(fread(hdr, 1, hlen, f), hlen);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    cr_assert_eq(hdr[0], '{');
    const char *w = strstr(hdr, "\"ffn.weight\":{\"dtype\":\"F32\",\"shape\":[64,16],\"data_offsets\":[");
    cr_assert_not_null(w, "%s", hdr);
    cr_assert(strstr(hdr, "\"layer_norm.bias\""));
    cr_assert(strstr(hdr, "\"optimizer.exp_avg_sq.ffn_output.weight\""));
    cr_assert(strstr(hdr, "\"__metadata__\":{\"format\":\"pt\""));
    /* the last data offset is the end of the file */
    long maxend = 0;
    for (const char *p = strstr(hdr, "data_offsets\":["); p; p = strstr(p + 1, "data_offsets\":[")) {
        long b, e;
        cr_assert_eq(sscanf(p, "data_offsets\":[%ld,%ld]", &b, &e), 2);
        if (e > maxend) maxend = e;
    }
    cr_assert_eq(maxend, size - 8 - (long)hlen);
    free(hdr);
    rmtree(root);
}

/* ---- what the node writes, logs and deletes ---- */

/* A weights-only file the user put in DIR/expert.0/ as step-<seed_step> to seed the expert (as PyTorch's
 * save_file writes it: no dmoe metadata) is loaded, and neither overwritten nor deleted by retention,
 * which keeps the newest --keep_checkpoints of the node's own files; a restart loads the node's newest
 * file, never the seed again; every save is logged at INFO. */
static void seed_survives(int seed_step)
{
    char root[128], dir[256], seed[300], name[64];
    tmpdir(root, sizeof root);
    snprintf(dir, sizeof dir, "%s/expert.0", root);
    cr_assert_eq(mkdir(dir, 0755), 0);
    const kern_class *cls = kern_expert_find("ffn");
    kern_config kc = {.hidden_dim = H};
    kern_model m = {0};
    cr_assert_eq(cls->setup(&m, &kc), 0);
    float *params = calloc(m.n_floats, 4);
    cls->init(&m, params, 77);
    rt_st_tensor t[KERN_MAX_PARAMS];
    for (int i = 0; i < m.n_params; i++)
        t[i] = (rt_st_tensor){.name = m.params[i].name, .dtype = RT_ST_F32, .ndim = m.params[i].ndim,
                              .shape = {m.params[i].shape[0], m.params[i].shape[1]}, .data = params + m.params[i].offset};
    rt_st_kv meta[] = {{"format", "pt"}};
    char err[256];
    snprintf(name, sizeof name, "step-%d.safetensors", seed_step);
    cr_assert_eq(rt_st_write(dir, name, t, (size_t)m.n_params, meta, 1, err, sizeof err), 0, "%s", err);
    snprintf(seed, sizeof seed, "%s/%s", dir, name);
    struct stat st0;
    cr_assert_eq(stat(seed, &st0), 0);

    float x[B * H], gy[B * H];
    th_fill_normal(x, B * H, 3);
    th_fill_normal(gy, B * H, 4);
    const char *args[] = {"--expert_cls", "ffn", "--hidden_dim", "32", "--expert_uids", "expert.0", "--checkpoint_dir",
                          root, "--keep_checkpoints", "1", "--update_period", "0.5", NULL};
    for (int run = 0; run < 2; run++) {
        th_node n;
        cr_assert_eq(th_node_start(&n, args), 0);
        for (int i = 0; i < 2; i++) backward_once(n.port, x, gy);
        char want[300];
        snprintf(want, sizeof want, "expert.0: checkpoint %s/step-%d.safetensors written (step %d, ", dir, 2 + 2 * run,
                 2 + 2 * run);
        char *log = NULL;
        for (int tries = 0; tries < 100; tries++) {   /* the update period saves it: at most 10 s */
            free(log);
            log = th_node_log(&n);
            if (strstr(log, want)) break;
            usleep(100 * 1000);
        }
        cr_assert(strstr(log, want), "no INFO line for the save: %s", log);
        if (run == 1) cr_assert(strstr(log, "ms; 1 older removed)"), "%s", log);
        /* the second run continues from the node's own step-2, not from the seed */
        snprintf(want, sizeof want, "expert.0: loaded %s/step-%d.safetensors (step %s", dir, run ? 2 : seed_step,
                 run ? "2)" : "0, weights only");
        cr_assert(strstr(log, want), "%s", log);
        free(log);
        cr_assert_eq(th_node_stop(&n, SIGTERM), 0);
    }
    struct stat st1;
    cr_assert_eq(stat(seed, &st1), 0, "the user's seed was deleted");
    cr_assert(st1.st_ino == st0.st_ino && st1.st_mtime == st0.st_mtime && st1.st_size == st0.st_size,
              "the user's seed was rewritten");
    cr_assert(!ckpt_is_ours(seed, "expert.0"));
    char path[300];
    snprintf(path, sizeof path, "%s/step-4.safetensors", dir);
    cr_assert(ckpt_is_ours(path, "expert.0"), "the node's newest file is kept");
    cr_assert(!ckpt_is_ours(path, "expert.1"));
    snprintf(path, sizeof path, "%s/step-2.safetensors", dir);
    cr_assert_neq(access(path, F_OK), 0, "the node's older file is deleted (keep 1)");
    cr_assert_eq(count_files(dir), 2, "the seed and the node's newest");
    free(params);
    rmtree(root);
}

Test(checkpoint, retention_never_deletes_the_users_seed, .timeout = 90) { seed_survives(0); }
/* a seed with a higher step number than the node's saves: neither deleted nor loaded over them */
Test(checkpoint, a_seed_numbered_high_neither_deleted_nor_shadowing, .timeout = 90) { seed_survives(7); }

/* A --checkpoint_dir the node cannot write to is refused at start (exit 2), not at the first save. */
Test(checkpoint, unwritable_folder_refused_at_start, .timeout = 30)
{
    char root[128], blocked[256], out[2048];
    tmpdir(root, sizeof root);
    snprintf(blocked, sizeof blocked, "%s/a-file", root);
    FILE *f = fopen(blocked, "w");
    cr_assert_not_null(f);
    fclose(f);
    char inside[300];
    snprintf(inside, sizeof inside, "%s/ckpt", blocked);
    const char *args[] = {"--expert_uids", "expert.0", "--hidden_dim", "16", "--checkpoint_dir", inside, NULL};
    int rc = th_run("dmoe-node", args, out, sizeof out, 20);
    cr_assert_eq(rc, 2, "exit %d: %s", rc, out);
    cr_assert(strstr(out, "--checkpoint_dir") && strstr(out, inside) && strstr(out, "Not a directory"), "%s", out);
    rmtree(root);
}
