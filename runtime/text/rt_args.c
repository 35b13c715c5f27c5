/* rt_args.c -- flag parsing for cmd/ programs (see rt_args.h). */
#include "runtime/text/rt_args.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"
#include "runtime/rt_version.h"

static const rt_arg *find(const rt_arg *t, int n, const char *name, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(t[i].name) == len && strncmp(t[i].name, name, len) == 0) return &t[i];
    return NULL;
}

static int parse_value(const rt_arg *a, const char *v, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    switch (a->kind) {
    case ARG_STR:
        *(const char **)a->dst = v;
        return 0;
    case ARG_INT: {
        long x = strtol(v, &end, 10);
        if (errno || *end || end == v || x < INT_MIN || x > INT_MAX) break;
        *(int *)a->dst = (int)x;
        return 0;
    }
    case ARG_I64: {
        long long x = strtoll(v, &end, 10);
        if (errno || *end || end == v) break;
        *(int64_t *)a->dst = x;
        return 0;
    }
    case ARG_U64: {
        if (v[0] == '-') break;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || *end || end == v) break;
        *(uint64_t *)a->dst = x;
        return 0;
    }
    case ARG_F64: {
        double x = strtod(v, &end);
        if (errno || *end || end == v || !isfinite(x)) break;
        *(double *)a->dst = x;
        return 0;
    }
    default:
        break;
    }
    snprintf(err, errlen, "--%s: bad value '%s'", a->name, v);
    return DMOE_EINVAL;
}

static int list_append(char ***dst, char *v)
{
    size_t n = 0;
    if (*dst) while ((*dst)[n]) n++;
    char **grown = realloc(*dst, (n + 2) * sizeof *grown);
    if (!grown) return DMOE_ENOMEM;
    grown[n] = v;
    grown[n + 1] = NULL;
    *dst = grown;
    return 0;
}

int rt_args_parse(int argc, char **argv, const rt_arg *table, int n, char **pos, int max_pos, int *n_pos,
                  char *err, size_t errlen)
{
    *n_pos = 0;
    for (int i = 0; i < n; i++)
        if (table[i].kind == ARG_LIST || table[i].kind == ARG_MULTI) *(char ***)table[i].dst = NULL;
    for (int i = 1; i < argc; i++) {
        char *w = argv[i];
        if (strcmp(w, "--help") == 0 || strcmp(w, "-h") == 0) return RT_ARGS_HELP;
        if (strcmp(w, "--version") == 0) return RT_ARGS_VERSION;
        if (strncmp(w, "--", 2) != 0 || w[2] == '\0') {
            if (*n_pos >= max_pos) { snprintf(err, errlen, "unexpected argument '%s'", w); return DMOE_EINVAL; }
            pos[(*n_pos)++] = w;
            continue;
        }
        const char *name = w + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const rt_arg *a = find(table, n, name, len);
        if (!a) { snprintf(err, errlen, "unknown flag --%.*s (see --help)", (int)len, name); return DMOE_EINVAL; }
        if (a->kind == ARG_FLAG) {
            if (eq) { snprintf(err, errlen, "--%s takes no value", a->name); return DMOE_EINVAL; }
            *(int *)a->dst = 1;
            continue;
        }
        if (a->kind == ARG_LIST) {
            char ***dst = a->dst;
            free(*dst);
            *dst = NULL;
            if (eq && list_append(dst, (char *)eq + 1) != 0) return DMOE_ENOMEM;
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 && (!a->accept || a->accept(argv[i + 1])))
                if (list_append(dst, argv[++i]) != 0) return DMOE_ENOMEM;
            if (!*dst) { snprintf(err, errlen, "--%s needs at least one value", a->name); return DMOE_EINVAL; }
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            if (i + 1 >= argc) { snprintf(err, errlen, "--%s needs a value", a->name); return DMOE_EINVAL; }
            v = argv[++i];
        }
        if (a->kind == ARG_MULTI) {
            if (list_append(a->dst, (char *)v) != 0) return DMOE_ENOMEM;
            continue;
        }
        if (parse_value(a, v, err, errlen) != 0) return DMOE_EINVAL;
    }
    return 0;
}

void rt_args_free(const rt_arg *table, int n)
{
    for (int i = 0; i < n; i++)
        if (table[i].kind == ARG_LIST || table[i].kind == ARG_MULTI) {
            free(*(char ***)table[i].dst);
            *(char ***)table[i].dst = NULL;
        }
}

void rt_args_usage(FILE *f, const char *synopsis, const rt_arg *table, int n)
{
    fprintf(f, "usage: %s\n", synopsis);
    const char *groups[32];
    int ng = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int g = 0; g < ng; g++) seen |= strcmp(groups[g], table[i].group) == 0;
        if (!seen && ng < 32) groups[ng++] = table[i].group;
    }
    for (int g = 0; g < ng; g++) {
        fprintf(f, "\n%s:\n", groups[g]);
        for (int i = 0; i < n; i++) {
            const rt_arg *a = &table[i];
            if (strcmp(a->group, groups[g]) != 0) continue;
            char def[160] = "";
            switch (a->kind) {
            case ARG_STR: if (*(const char **)a->dst) snprintf(def, sizeof def, " (default: %s)", *(const char **)a->dst); break;
            case ARG_INT: snprintf(def, sizeof def, " (default: %d)", *(int *)a->dst); break;
            case ARG_I64: snprintf(def, sizeof def, " (default: %" PRId64 ")", *(int64_t *)a->dst); break;
            case ARG_U64: snprintf(def, sizeof def, " (default: %" PRIu64 ")", *(uint64_t *)a->dst); break;
            case ARG_F64: snprintf(def, sizeof def, " (default: %g)", *(double *)a->dst); break;
            default: break;
            }
            if (strstr(a->help, "(default")) def[0] = '\0';   /* the text says it (a default that is no value) */
            const char *meta = a->meta ? a->meta
                                : a->kind == ARG_F64 ? "X"
                                : a->kind == ARG_INT || a->kind == ARG_I64 || a->kind == ARG_U64 ? "N" : "VALUE";
            if (a->kind == ARG_FLAG) fprintf(f, "  --%s\n", a->name);
            else if (a->kind == ARG_LIST) fprintf(f, "  --%s %s [%s ...]\n", a->name, meta, meta);
            else fprintf(f, "  --%s %s%s\n", a->name, meta, a->kind == ARG_MULTI ? " (repeatable)" : "");
            fprintf(f, "      %s%s\n", a->help, def);
        }
    }
    fprintf(f, "\n  --help\n      print this text and exit\n  --version\n      print the version and exit\n\n%s\n",
            RT_ARGS_EXIT_HELP);
}

void rt_args_version(FILE *f, const char *prog) { fprintf(f, "%s %s\n", prog, DMOE_VERSION); }

/* Edits from a to b (optimal string alignment: insert, delete, substitute, swap two neighbours), for
 * words of command length; longer words count as far apart. */
static int edit_distance(const char *a, const char *b)
{
    enum { MAXW = 32 };
    size_t n = strlen(a), m = strlen(b);
    if (n >= MAXW || m >= MAXW) return MAXW;
    int d[MAXW][MAXW];
    for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int cost = a[i - 1] != b[j - 1];
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[n][m];
}

const char *rt_args_suggest(const char *w, const char *const *words)
{
    const char *best = NULL;
    int best_d = 3;   /* more than 2 edits is another word, not a typo */
    for (int i = 0; words[i]; i++) {
        int d = edit_distance(w, words[i]);
        if (d < best_d && d < (int)strlen(words[i])) { best = words[i]; best_d = d; }
    }
    return best;
}

int rt_args_is_maddr(const char *word)
{
    if (word[0] == '/' || word[0] == '[') return 1;
    const char *colon = strrchr(word, ':');
    if (!colon || colon == word || !colon[1]) return 0;
    for (const char *p = colon + 1; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    return 1;
}

int rt_args_shape(const char *s, int64_t *dims, int max)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        if (n == max) return DMOE_EINVAL;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || end == p || v < 1 || v > (1ll << 31)) return DMOE_EINVAL;
        dims[n++] = v;
        if (*end == 'x' || *end == 'X') { p = end + 1; if (!*p) return DMOE_EINVAL; }
        else if (*end == '\0') p = end;
        else return DMOE_EINVAL;
    }
    return n > 0 ? n : DMOE_EINVAL;
}
