/* dht_ident.c -- Ed25519 key pairs, node ids from public keys, signatures, the key file (see
 * dht_ident.h).
 *
 * Design notes. libsodium does the cryptography: crypto_sign_* (Ed25519) and crypto_generichash
 * (BLAKE2b). The key file is created with O_CREAT | O_EXCL and mode 0600, written whole and fsync'd; a
 * file that exists is checked (regular, no group or other permission bits, exactly one well-formed
 * line) before a byte of it is trusted. Secrets on the stack are wiped before returning.
 */
#include "actors/dht/trust/dht_ident.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/rt_err.h"

/* The key file's one line: this tag, a space, 64 hex digits of the seed, a newline. */
#define IDENT_FILE_TAG "dmoe-ed25519 "
#define IDENT_FILE_LEN (sizeof IDENT_FILE_TAG - 1 + 2 * DHT_IDENT_SEED_BYTES + 1)

int dht_ident_init(void) { return sodium_init() < 0 ? DMOE_EINTERNAL : 0; }

int dht_ident_generate(dht_ident *out)
{
    if (dht_ident_init() != 0) return DMOE_EINTERNAL;
    crypto_sign_keypair(out->pk, out->sk);
    return 0;
}

int dht_ident_from_seed(dht_ident *out, const uint8_t seed[DHT_IDENT_SEED_BYTES])
{
    if (dht_ident_init() != 0) return DMOE_EINTERNAL;
    crypto_sign_seed_keypair(out->pk, out->sk, seed);
    return 0;
}

int dht_ident_for_test(dht_ident *out, uint64_t n)
{
    uint8_t seed[DHT_IDENT_SEED_BYTES] = { 0 };
    for (int i = 0; i < 8; i++) seed[i] = (uint8_t)(n >> (8 * i));
    return dht_ident_from_seed(out, seed);
}

void dht_ident_id_of(const uint8_t pk[DHT_IDENT_PK_BYTES], dht_id *out)
{
    crypto_generichash(out->b, DHT_ID_BYTES, pk, DHT_IDENT_PK_BYTES, NULL, 0);
}

void dht_ident_id(const dht_ident *k, dht_id *out) { dht_ident_id_of(k->pk, out); }

static atomic_ullong n_signs, n_verifies, n_memo_hits;   /* dht_ident_counts */

void dht_ident_sign(const dht_ident *k, const void *msg, size_t len, uint8_t sig[DHT_IDENT_SIG_BYTES])
{
    atomic_fetch_add_explicit(&n_signs, 1, memory_order_relaxed);
    crypto_sign_detached(sig, NULL, msg, len, k->sk);
}

/* ---- the verification memo (dht_ident_memo_enable) ----
 * A direct-mapped table of outcomes keyed by BLAKE2b-128 of (pk, sig, msg): the same bytes verify the
 * same way, so a hit answers exactly what Ed25519 would. A collision of the 128-bit digest is as hard
 * to find as one of BLAKE2b; a slot taken by another key is simply overwritten. */
typedef struct {
    uint8_t digest[16];
    uint8_t used, ok;
} memo_slot;

static memo_slot *memo;
static size_t memo_mask;

int dht_ident_memo_enable(size_t entries)
{
    free(memo);
    memo = NULL;
    memo_mask = 0;
    if (entries == 0) return 0;
    size_t n = 1;
    while (n < entries) n <<= 1;
    memo = calloc(n, sizeof *memo);
    if (!memo) return DMOE_ENOMEM;
    memo_mask = n - 1;
    return 0;
}

void dht_ident_counts(unsigned long long *signs, unsigned long long *verifies, unsigned long long *memo_hits)
{
    *signs = atomic_load(&n_signs);
    *verifies = atomic_load(&n_verifies);
    *memo_hits = atomic_load(&n_memo_hits);
}

int dht_ident_verify(const uint8_t pk[DHT_IDENT_PK_BYTES], const void *msg, size_t len,
                     const uint8_t sig[DHT_IDENT_SIG_BYTES])
{
    memo_slot *slot = NULL;
    uint8_t digest[16];
    if (memo) {
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, sizeof digest);
        crypto_generichash_update(&st, pk, DHT_IDENT_PK_BYTES);
        crypto_generichash_update(&st, sig, DHT_IDENT_SIG_BYTES);
        crypto_generichash_update(&st, msg, len);
        crypto_generichash_final(&st, digest, sizeof digest);
        uint64_t h;
        memcpy(&h, digest, sizeof h);
        slot = &memo[h & memo_mask];
        if (slot->used && memcmp(slot->digest, digest, sizeof digest) == 0) {
            atomic_fetch_add_explicit(&n_memo_hits, 1, memory_order_relaxed);
            return slot->ok;
        }
    }
    atomic_fetch_add_explicit(&n_verifies, 1, memory_order_relaxed);
    int ok = crypto_sign_verify_detached(sig, msg, len, pk) == 0;
    if (slot) {
        memcpy(slot->digest, digest, sizeof digest);
        slot->used = 1;
        slot->ok = (uint8_t)ok;
    }
    return ok;
}

/* dht_ident_random_stream: a ChaCha20 key stream instead of the system source (a simulator's). */
static uint8_t stream_key[crypto_stream_chacha20_KEYBYTES];
static uint64_t stream_nonce;
static int stream_on;

void dht_ident_random_stream(const uint8_t *key)
{
    stream_on = key != NULL;
    stream_nonce = 0;
    if (key) memcpy(stream_key, key, sizeof stream_key);
    else sodium_memzero(stream_key, sizeof stream_key);
}

void dht_ident_random(void *buf, size_t n)
{
    if (!stream_on) {
        randombytes_buf(buf, n);
        return;
    }
    uint8_t nonce[crypto_stream_chacha20_NONCEBYTES];
    memcpy(nonce, &stream_nonce, sizeof nonce);
    stream_nonce++;
    crypto_stream_chacha20(buf, n, nonce, stream_key);
}

void dht_ident_wipe(dht_ident *k) { sodium_memzero(k, sizeof *k); }

/* ---- the key file ---- */

static int ident_err(char *err, size_t errlen, int code, const char *path, const char *why)
{
    if (err && errlen) snprintf(err, errlen, "identity file %.200s: %s", path, why);
    return code;
}

/* load reads the opened key file fd (already checked to be a private regular file). */
static int load(int fd, const char *path, dht_ident *out, char *err, size_t errlen)
{
    char buf[IDENT_FILE_LEN + 2];
    size_t n = 0;
    for (;;) {   /* ends at end of file or when more than a key file's worth was read */
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return ident_err(err, errlen, DMOE_EIO, path, strerror(errno));
        if (r == 0 || (n += (size_t)r) == sizeof buf) break;
    }
    const size_t tag = sizeof IDENT_FILE_TAG - 1;
    uint8_t seed[DHT_IDENT_SEED_BYTES];
    size_t bin_len = 0;
    int ok = n == IDENT_FILE_LEN && memcmp(buf, IDENT_FILE_TAG, tag) == 0 && buf[IDENT_FILE_LEN - 1] == '\n';
    for (size_t i = tag; ok && i < IDENT_FILE_LEN - 1; i++)
        ok = (buf[i] >= '0' && buf[i] <= '9') || (buf[i] >= 'a' && buf[i] <= 'f');
    ok = ok && sodium_hex2bin(seed, sizeof seed, buf + tag, 2 * DHT_IDENT_SEED_BYTES, NULL, &bin_len, NULL) == 0 &&
         bin_len == sizeof seed;
    sodium_memzero(buf, sizeof buf);
    if (!ok) {
        sodium_memzero(seed, sizeof seed);
        return ident_err(err, errlen, DMOE_EINVAL, path,
                         "malformed (expected one line: 'dmoe-ed25519 ' and 64 lower-case hex digits)");
    }
    int rc = dht_ident_from_seed(out, seed);
    sodium_memzero(seed, sizeof seed);
    return rc ? ident_err(err, errlen, rc, path, "libsodium could not start") : 0;
}

/* create writes a fresh key to a new file at path (O_EXCL: never over an existing one). Returns 0, 1 when
 * the file appeared meanwhile (load it instead), or a code. */
static int create(const char *path, dht_ident *out, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 && errno == EEXIST) return 1;
    if (fd < 0) return ident_err(err, errlen, DMOE_EIO, path, strerror(errno));
    dht_ident k;
    if (dht_ident_generate(&k) != 0) {
        close(fd);
        unlink(path);
        return ident_err(err, errlen, DMOE_EINTERNAL, path, "libsodium could not start");
    }
    char line[IDENT_FILE_LEN + 1];
    memcpy(line, IDENT_FILE_TAG, sizeof IDENT_FILE_TAG - 1);
    sodium_bin2hex(line + sizeof IDENT_FILE_TAG - 1, 2 * DHT_IDENT_SEED_BYTES + 1, k.sk, DHT_IDENT_SEED_BYTES);
    line[IDENT_FILE_LEN - 1] = '\n';
    size_t off = 0;
    int rc = 0;
    while (off < IDENT_FILE_LEN && rc == 0) {   /* ends when written whole or on an error */
        ssize_t w = write(fd, line + off, IDENT_FILE_LEN - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) rc = ident_err(err, errlen, DMOE_EIO, path, w < 0 ? strerror(errno) : "short write");
        else off += (size_t)w;
    }
    sodium_memzero(line, sizeof line);
    if (rc == 0 && fsync(fd) != 0) rc = ident_err(err, errlen, DMOE_EIO, path, strerror(errno));
    if (close(fd) != 0 && rc == 0) rc = ident_err(err, errlen, DMOE_EIO, path, strerror(errno));
    if (rc) {
        unlink(path);
        dht_ident_wipe(&k);
        return rc;
    }
    *out = k;
    dht_ident_wipe(&k);
    return 0;
}

int dht_ident_load_or_create(const char *path, dht_ident *out, int *created, char *err, size_t errlen)
{
    if (!path || !path[0]) return ident_err(err, errlen, DMOE_EINVAL, "''", "empty path");
    for (int attempt = 0; attempt < 2; attempt++) {   /* a second pass only if the file appeared meanwhile */
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0 && errno == ENOENT) {
            dht_ident k;
            int rc = create(path, &k, err, errlen);
            if (rc == 1) continue;
            if (rc) return rc;
            *out = k;
            *created = 1;
            dht_ident_wipe(&k);
            return 0;
        }
        if (fd < 0) return ident_err(err, errlen, errno == ELOOP ? DMOE_EINVAL : DMOE_EIO, path,
                                     errno == ELOOP ? "is a symbolic link" : strerror(errno));
        struct stat st;
        int rc = 0;
        char why[160];
        if (fstat(fd, &st) != 0) {
            rc = ident_err(err, errlen, DMOE_EIO, path, strerror(errno));
        } else if (!S_ISREG(st.st_mode)) {
            rc = ident_err(err, errlen, DMOE_EINVAL, path, "not a regular file");
        } else if (st.st_mode & (S_IRWXG | S_IRWXO)) {
            snprintf(why, sizeof why, "mode %04o lets group or others read or write the secret key; "
                     "run chmod 600 on it (or remove it for a new identity)", (unsigned)(st.st_mode & 07777));
            rc = ident_err(err, errlen, DMOE_EINVAL, path, why);
        } else {
            dht_ident k;
            rc = load(fd, path, &k, err, errlen);
            if (rc == 0) {
                *out = k;
                *created = 0;
            }
            dht_ident_wipe(&k);
        }
        close(fd);
        return rc;
    }
    return ident_err(err, errlen, DMOE_EIO, path, "created and removed by someone else meanwhile");
}
