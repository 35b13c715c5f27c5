/* test_dht_ident.c -- node identities (actors/dht/trust/dht_ident.c): Ed25519 against RFC 8032's first test
 * vector, the node id as BLAKE2b-128 of the public key (checked against Python's hashlib), signatures
 * that any change to the message, the signature or the key breaks, and the key file: created private,
 * read back as the same key, refused when group or others may read it, when malformed, or when it is
 * not a regular file. Files live in a fresh temporary directory per test. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actors/dht/trust/dht_ident.h"
#include "runtime/rt_err.h"

static void unhex(const char *h, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        cr_assert_eq(sscanf(h + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
}

Test(dht_ident, rfc8032_key_and_the_id_derived_from_it)
{
    uint8_t seed[32], pk[32];
    unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60", seed, 32);
    unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", pk, 32);
    dht_ident k;
    cr_assert_eq(dht_ident_from_seed(&k, seed), 0);
    cr_expect_eq(memcmp(k.pk, pk, 32), 0, "the public key of RFC 8032's test 1");
    /* RFC 8032 test 1: the signature of the empty message. */
    uint8_t sig[64], want[64];
    unhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
          "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b", want, 64);
    dht_ident_sign(&k, "", 0, sig);
    cr_expect_eq(memcmp(sig, want, 64), 0, "Ed25519 as RFC 8032");
    /* hashlib.blake2b(pk, digest_size=16): a 16-byte BLAKE2b, not BLAKE2b-256 cut short. */
    dht_id id, expect;
    char hex[DHT_ID_HEX_LEN + 1];
    dht_ident_id(&k, &id);
    cr_assert_eq(dht_id_from_hex(&expect, "d7108b422f25cc5edb865cc4ae184f55"), 0);
    cr_expect(dht_id_eq(&id, &expect), "id %s", dht_id_to_hex(&id, hex));
    dht_id same;
    dht_ident_id_of(pk, &same);
    cr_expect(dht_id_eq(&id, &same));
}

Test(dht_ident, signatures_verify_and_any_change_breaks_them)
{
    dht_ident a, b;
    cr_assert_eq(dht_ident_generate(&a), 0);
    cr_assert_eq(dht_ident_generate(&b), 0);
    cr_assert_neq(memcmp(a.pk, b.pk, 32), 0, "two fresh keys differ");
    uint8_t msg[80], sig[64];
    for (size_t i = 0; i < sizeof msg; i++) msg[i] = (uint8_t)(i * 7);
    dht_ident_sign(&a, msg, sizeof msg, sig);
    cr_assert(dht_ident_verify(a.pk, msg, sizeof msg, sig));
    cr_expect(!dht_ident_verify(b.pk, msg, sizeof msg, sig), "another key");
    cr_expect(!dht_ident_verify(a.pk, msg, sizeof msg - 1, sig), "a shorter message");
    for (size_t i = 0; i < sizeof msg; i += 13) {
        msg[i] ^= 1;
        cr_expect(!dht_ident_verify(a.pk, msg, sizeof msg, sig), "message byte %zu changed", i);
        msg[i] ^= 1;
    }
    for (size_t i = 0; i < sizeof sig; i += 9) {
        sig[i] ^= 0x10;
        cr_expect(!dht_ident_verify(a.pk, msg, sizeof msg, sig), "signature byte %zu changed", i);
        sig[i] ^= 0x10;
    }
    uint8_t pk[32];
    memcpy(pk, a.pk, 32);
    pk[5] ^= 4;
    cr_expect(!dht_ident_verify(pk, msg, sizeof msg, sig), "a changed key");
    cr_expect(dht_ident_verify(a.pk, msg, sizeof msg, sig), "and the original still verifies");
    dht_id ia, ib;
    dht_ident_id(&a, &ia);
    dht_ident_id(&b, &ib);
    cr_expect(!dht_id_eq(&ia, &ib), "different keys, different ids");
}

Test(dht_ident, test_keys_are_reproducible)
{
    dht_ident a, b, c;
    cr_assert_eq(dht_ident_for_test(&a, 42), 0);
    cr_assert_eq(dht_ident_for_test(&b, 42), 0);
    cr_assert_eq(dht_ident_for_test(&c, 43), 0);
    cr_expect_eq(memcmp(&a, &b, sizeof a), 0);
    cr_expect_neq(memcmp(a.pk, c.pk, 32), 0);
}

/* ---- the key file ---- */

static char dir[64];
static char path[128];

static void mkdir_tmp(void)
{
    snprintf(dir, sizeof dir, "/tmp/dmoe-ident-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/node.key", dir);
}

static void rm_tmp(void)
{
    unlink(path);
    rmdir(dir);
}

static void write_file(const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cr_assert_eq(chmod(path, mode), 0);
}

Test(dht_ident, key_file_is_created_private_and_read_back, .init = mkdir_tmp, .fini = rm_tmp)
{
    dht_ident a, b;
    int created = -1;
    char err[256] = "";
    cr_assert_eq(dht_ident_load_or_create(path, &a, &created, err, sizeof err), 0, "%s", err);
    cr_expect_eq(created, 1);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0600, "mode %o", (unsigned)(st.st_mode & 0777));
    cr_expect_eq(st.st_size, 13 + 64 + 1, "one line: tag, 64 hex digits, newline");
    cr_assert_eq(dht_ident_load_or_create(path, &b, &created, err, sizeof err), 0, "%s", err);
    cr_expect_eq(created, 0);
    cr_expect_eq(memcmp(&a, &b, sizeof a), 0, "the same key after a reload");
}

Test(dht_ident, key_file_readable_by_others_is_refused, .init = mkdir_tmp, .fini = rm_tmp)
{
    write_file("dmoe-ed25519 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n", 0644);
    dht_ident k;
    int created = -1;
    char err[256] = "";
    cr_expect_eq(dht_ident_load_or_create(path, &k, &created, err, sizeof err), DMOE_EINVAL);
    cr_expect(strstr(err, "mode 0644"), "%s", err);
    cr_expect_eq(created, -1, "outputs untouched");
    chmod(path, 0620);
    cr_expect_eq(dht_ident_load_or_create(path, &k, &created, err, sizeof err), DMOE_EINVAL, "group-writable");
    chmod(path, 0400);
    cr_expect_eq(dht_ident_load_or_create(path, &k, &created, err, sizeof err), 0, "0400 is private: %s", err);
    uint8_t pk[32];
    unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", pk, 32);
    cr_expect_eq(memcmp(k.pk, pk, 32), 0, "the key of the seed in the file");
}

Test(dht_ident, malformed_key_files_are_refused, .init = mkdir_tmp, .fini = rm_tmp)
{
    static const char *bad[] = {
        "",
        "dmoe-ed25519 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f6\n",    /* 63 digits */
        "dmoe-ed25519 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f600\n",  /* 65 digits */
        "dmoe-ed25519 9D61B19DEFFD5A60BA844AF492EC2CC44449C5697B326919703BAC031CAE7F60\n",   /* upper case */
        "dmoe-ed25519 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7fzz\n",   /* not hex */
        "dmoe-ed25519 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",     /* no newline */
        "dmoe-ed25519 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\nx",  /* trailing */
        "ssh-ed25519 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f600\n",   /* another tag */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(bad[i], 0600);
        dht_ident k;
        int created = -1;
        char err[256] = "";
        cr_expect_eq(dht_ident_load_or_create(path, &k, &created, err, sizeof err), DMOE_EINVAL, "case %zu", i);
        cr_expect(strstr(err, "malformed"), "case %zu: %s", i, err);
    }
}

Test(dht_ident, a_key_path_that_is_not_a_regular_file_is_refused, .init = mkdir_tmp, .fini = rm_tmp)
{
    dht_ident k;
    int created = -1;
    char err[256] = "";
    cr_assert_eq(mkdir(path, 0700), 0);
    cr_expect_eq(dht_ident_load_or_create(path, &k, &created, err, sizeof err), DMOE_EINVAL, "a directory: %s", err);
    rmdir(path);
    cr_assert_eq(symlink("/etc/hostname", path), 0);
    cr_expect_neq(dht_ident_load_or_create(path, &k, &created, err, sizeof err), 0, "a symbolic link: %s", err);
    unlink(path);
    char missing[160];
    snprintf(missing, sizeof missing, "%s/no/such/dir/key", dir);
    cr_expect_eq(dht_ident_load_or_create(missing, &k, &created, err, sizeof err), DMOE_EIO, "%s", err);
    cr_expect_eq(created, -1);
}
