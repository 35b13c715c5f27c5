/* rt_conf.c -- config files for the cmd/ programs (see rt_conf.h).
 *
 * Design notes. The file is read line by line into entries (a flag, its values, its line); a key with
 * nothing after the colon opens a block list that the following indented "- item" lines fill. Only when
 * the whole file is accepted are the entries turned into words, so a bad line costs nothing but the
 * message. Values are written as "--name=value" single words, so a value that starts with '-' is never
 * taken for a flag; list items follow "--name=first" as separate words, and may not start with "--".
 */
#include "runtime/text/rt_conf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_err.h"

#define CONF_MAX_ITEMS 256   /* values of one list flag: a config lists a handful of peers or uids */

typedef struct {
    const rt_arg *flag;
    char *items[CONF_MAX_ITEMS];
    int n, is_list, line;
} entry;

typedef struct {
    const char *name;        /* the file, for messages */
    const rt_arg *table;
    int ntable;
    entry *e;
    int ne, cap;
    entry *block;            /* the key whose "- item" lines come next, or NULL */
    char *err;
    size_t errlen;
} parser;

static int fail(parser *p, int line, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(p->err, p->errlen, "%s:%d: %s", p->name, line, what);
    return DMOE_EINVAL;
}

/* rest_is_empty says whether s holds only spaces, then maybe a comment. */
static int rest_is_empty(const char *s)
{
    while (*s == ' ') s++;
    return *s == '\0' || *s == '#';
}

/* scalar reads one value at *s (past leading spaces): quoted, or plain up to the end of the line (a
 * comment after a space cut off), or in a flow list up to ',' or ']'. Sets *s past it; *out malloc'd. */
static int scalar(parser *p, int line, const char **s, int in_flow, char **out)
{
    const char *q = *s;
    while (*q == ' ') q++;
    char *v = malloc(strlen(q) + 1);
    if (!v) return DMOE_ENOMEM;
    size_t n = 0;
    if (*q == '\'' || *q == '"') {
        char quote = *q++;
        for (;; q++) {
            if (*q == '\0') { free(v); return fail(p, line, "unclosed %c quote", quote); }
            if (*q == quote) {
                if (quote == '\'' && q[1] == '\'') { v[n++] = *q++; continue; }   /* '' is one ' */
                q++;
                break;
            }
            if (quote == '"' && *q == '\\') {
                if (q[1] != '"' && q[1] != '\\') { free(v); return fail(p, line, "only \\\" and \\\\ escapes are read"); }
                q++;
            }
            v[n++] = *q;
        }
    } else {
        if (*q == '[' || *q == '{' || *q == '&' || *q == '*' || *q == '|' || *q == '>' || *q == '!') {
            free(v);
            return fail(p, line, "'%c' starts YAML this reader does not take (plain values, quoted values, lists)", *q);
        }
        while (*q && !(in_flow && (*q == ',' || *q == ']')) && !(*q == '#' && n > 0 && v[n - 1] == ' '))
            v[n++] = *q++;
        while (n > 0 && v[n - 1] == ' ') n--;
        if (in_flow && n == 0) { free(v); return fail(p, line, "an empty list item"); }
    }
    v[n] = '\0';
    *s = q;
    *out = v;
    return 0;
}

static int add_item(parser *p, entry *e, char *v)
{
    if (e->n == CONF_MAX_ITEMS) {
        free(v);
        return fail(p, e->line, "more than %d values for %s", CONF_MAX_ITEMS, e->flag->name);
    }
    e->items[e->n++] = v;
    return 0;
}

/* flow_list reads "[a, b, ...]" at s (at the '[') into e. */
static int flow_list(parser *p, int line, const char *s, entry *e)
{
    s++;
    while (*s == ' ') s++;
    if (*s == ']') return rest_is_empty(s + 1) ? 0 : fail(p, line, "text after the list");
    for (;;) {
        char *v;
        int rc = scalar(p, line, &s, 1, &v);
        if (rc) return rc;
        if ((rc = add_item(p, e, v)) != 0) return rc;
        while (*s == ' ') s++;
        if (*s == ',') { s++; continue; }
        if (*s == ']') return rest_is_empty(s + 1) ? 0 : fail(p, line, "text after the list");
        return fail(p, line, "unclosed list (a list stays on one line: [a, b])");
    }
}

static const rt_arg *find_flag(parser *p, const char *key)
{
    for (int i = 0; i < p->ntable; i++)
        if (strcmp(p->table[i].name, key) == 0) return &p->table[i];
    return NULL;
}

/* top_line reads "key: ..." (s at column 0). */
static int top_line(parser *p, int line, const char *s)
{
    char key[64];
    size_t k = 0;
    while ((s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z') || (s[k] >= '0' && s[k] <= '9') ||
           s[k] == '_' || s[k] == '-') {
        if (k + 1 >= sizeof key) return fail(p, line, "key too long");
        key[k] = s[k] == '-' ? '_' : s[k];
        k++;
    }
    key[k] = '\0';
    if (k == 0 || s[k] != ':' || (s[k + 1] != '\0' && s[k + 1] != ' '))
        return fail(p, line, "expected 'key: value'");
    if (strcmp(key, "config") == 0) return fail(p, line, "config files do not nest (config: is not a key here)");
    const rt_arg *f = find_flag(p, key);
    if (!f) return fail(p, line, "unknown key '%s' (see --help for the flags)", key);
    for (int i = 0; i < p->ne; i++)
        if (p->e[i].flag == f) return fail(p, line, "'%s' is given twice (first on line %d)", key, p->e[i].line);
    if (p->ne == p->cap) {
        int cap = p->cap ? p->cap * 2 : 16;
        entry *grown = realloc(p->e, (size_t)cap * sizeof *grown);
        if (!grown) return DMOE_ENOMEM;
        p->e = grown;
        p->cap = cap;
    }
    entry *e = &p->e[p->ne++];
    memset(e, 0, sizeof *e);
    e->flag = f;
    e->line = line;
    const char *v = s + k + 1;
    while (*v == ' ') v++;
    if (rest_is_empty(v)) { e->is_list = 1; p->block = e; return 0; }
    if (*v == '[') { e->is_list = 1; return flow_list(p, line, v, e); }
    char *val;
    int rc = scalar(p, line, &v, 0, &val);
    if (rc) return rc;
    return add_item(p, e, val);
}

/* item_line reads an indented "- item" of the block list being filled. */
static int item_line(parser *p, int line, const char *s)
{
    if (!p->block || s[0] != '-' || (s[1] != ' ' && s[1] != '\0'))
        return fail(p, line, "unexpected indentation (only '- item' lines of a list are indented)");
    const char *v = s + 1;
    while (*v == ' ') v++;
    if (rest_is_empty(v)) return fail(p, line, "an empty list item");
    if (*v == '[') return fail(p, line, "nested lists are not read");
    char *val;
    int rc = scalar(p, line, &v, 0, &val);
    if (rc) return rc;
    return add_item(p, p->block, val);
}

/* end_block checks the list a key opened got at least one item. */
static int end_block(parser *p)
{
    entry *e = p->block;
    p->block = NULL;
    if (e && e->n == 0) return fail(p, e->line, "'%s:' has no value (write [] for an empty list)", e->flag->name);
    return 0;
}

static int parse_lines(parser *p, const char *text)
{
    const char *s = text;
    int line = 0, rc = 0, seen_content = 0;
    char buf[4096];
    while (*s && rc == 0) {
        line++;
        size_t n = strcspn(s, "\n");
        if (n >= sizeof buf) return fail(p, line, "line longer than %zu bytes", sizeof buf - 1);
        memcpy(buf, s, n);
        buf[n] = '\0';
        s += n + (s[n] == '\n');
        if (n > 0 && buf[n - 1] == '\r') buf[--n] = '\0';
        size_t ind = strspn(buf, " ");
        if (buf[ind] == '\t') return fail(p, line, "a tab (indent with spaces)");
        if (buf[ind] == '\0' || buf[ind] == '#') continue;
        if (!seen_content && ind == 0 && strcmp(buf, "---") == 0) { seen_content = 1; continue; }
        seen_content = 1;
        if (ind > 0) { rc = item_line(p, line, buf + ind); continue; }
        if ((rc = end_block(p)) != 0) break;
        rc = top_line(p, line, buf);
    }
    return rc ? rc : end_block(p);
}

/* push appends a malloc'd word (taken) to the NULL-terminated list *w of *n words. */
static int push(char ***w, size_t *n, char *word)
{
    if (!word) return DMOE_ENOMEM;
    char **grown = realloc(*w, (*n + 2) * sizeof *grown);
    if (!grown) { free(word); return DMOE_ENOMEM; }
    grown[(*n)++] = word;
    grown[*n] = NULL;
    *w = grown;
    return 0;
}

static char *flag_word(const char *name, const char *value)
{
    size_t len = strlen(name) + (value ? strlen(value) + 1 : 0) + 3;
    char *w = malloc(len);
    if (w) snprintf(w, len, value ? "--%s=%s" : "--%s", name, value ? value : "");
    return w;
}

static void free_words(char **w)
{
    for (size_t i = 0; w && w[i]; i++) free(w[i]);
    free(w);
}

/* emit turns one entry into words. */
static int emit(parser *p, const entry *e, char ***w, size_t *nw)
{
    const rt_arg *f = e->flag;
    if (f->kind == ARG_FLAG) {
        if (e->is_list || (strcmp(e->items[0], "true") != 0 && strcmp(e->items[0], "false") != 0))
            return fail(p, e->line, "%s takes true or false", f->name);
        return strcmp(e->items[0], "true") == 0 ? push(w, nw, flag_word(f->name, NULL)) : 0;
    }
    if (f->kind != ARG_LIST && f->kind != ARG_MULTI) {
        if (e->is_list) return fail(p, e->line, "%s takes one value, not a list", f->name);
        return push(w, nw, flag_word(f->name, e->items[0]));
    }
    for (int i = 0; i < e->n; i++) {
        const char *v = e->items[i];
        if (strncmp(v, "--", 2) == 0) return fail(p, e->line, "a list item may not start with --: '%.60s'", v);
        if (f->accept && !f->accept(v)) return fail(p, e->line, "'%.80s' is not a valid value for %s", v, f->name);
        int rc = i == 0 || f->kind == ARG_MULTI ? push(w, nw, flag_word(f->name, v)) : push(w, nw, strdup(v));
        if (rc) return rc;
    }
    return 0;
}

int rt_conf_parse_text(const char *text, const char *name, const rt_arg *table, int n, char ***out, char *err,
                       size_t errlen)
{
    parser p = {.name = name, .table = table, .ntable = n, .err = err, .errlen = errlen};
    char **w = NULL;
    size_t nw = 0;
    int rc = parse_lines(&p, text);
    for (int i = 0; i < p.ne && rc == 0; i++) rc = emit(&p, &p.e[i], &w, &nw);
    if (rc == 0 && !w && !(w = calloc(1, sizeof *w))) rc = DMOE_ENOMEM;   /* a file that sets nothing */
    for (int i = 0; i < p.ne; i++)
        for (int j = 0; j < p.e[i].n; j++) free(p.e[i].items[j]);
    free(p.e);
    if (rc == DMOE_ENOMEM) snprintf(err, errlen, "%s: out of memory", name);
    if (rc) { free_words(w); return rc; }
    *out = w;
    return 0;
}

/* read_file reads path (at most RT_CONF_MAX_BYTES) into a malloc'd string. */
static int read_file(const char *path, char **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, errlen, "cannot read config %s: %s", path, strerror(errno)); return DMOE_EIO; }
    char *s = malloc(RT_CONF_MAX_BYTES + 1);
    size_t n = s ? fread(s, 1, RT_CONF_MAX_BYTES + 1, f) : 0;
    int bad = s && ferror(f);
    fclose(f);
    if (!s) { snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    if (bad || n > RT_CONF_MAX_BYTES) {
        free(s);
        snprintf(err, errlen, "config %s: %s", path, bad ? "read error" : "larger than 1 MiB");
        return bad ? DMOE_EIO : DMOE_EINVAL;
    }
    s[n] = '\0';
    if (strlen(s) != n) { free(s); snprintf(err, errlen, "config %s: a NUL byte (not a text file)", path); return DMOE_EINVAL; }
    *out = s;
    return 0;
}

/* flag_name_len returns the length of the flag name in word "--name[=...]", 0 when word is no flag. */
static size_t flag_name_len(const char *word)
{
    if (strncmp(word, "--", 2) != 0 || word[2] == '\0') return 0;
    return strcspn(word + 2, "=");
}

/* given_on_cli says whether argv[1..argc) holds the flag named name[len]. */
static int given_on_cli(int argc, char **argv, const char *name, size_t len)
{
    for (int i = 1; i < argc; i++)
        if (flag_name_len(argv[i]) == len && strncmp(argv[i] + 2, name, len) == 0) return 1;
    return 0;
}

int rt_conf_merge(int argc, char **argv, const rt_arg *table, int n, rt_conf *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) { snprintf(err, errlen, "--config needs a file"); return DMOE_EINVAL; }
            path = argv[i + 1];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
        }
    }
    char **words = NULL;
    if (path) {
        char *text;
        int rc = read_file(path, &text, err, errlen);
        if (rc) return rc;
        rc = rt_conf_parse_text(text, path, table, n, &words, err, errlen);
        free(text);
        if (rc) return rc;
    }
    size_t nw = 0;
    while (words && words[nw]) nw++;
    c->argv = calloc((size_t)argc + nw + 1, sizeof *c->argv);
    if (!c->argv) { free_words(words); snprintf(err, errlen, "out of memory"); return DMOE_ENOMEM; }
    c->words = words;
    for (int i = 0; i < argc; i++) c->argv[c->argc++] = argv[i];
    /* the file's words after the command line's, each flag's group dropped when the command line has it */
    int keep = 1;
    for (size_t i = 0; i < nw; i++) {
        size_t len = flag_name_len(words[i]);
        if (len) keep = !given_on_cli(argc, argv, words[i] + 2, len);
        if (keep) c->argv[c->argc++] = words[i];
    }
    c->argv[c->argc] = NULL;
    return 0;
}

void rt_conf_free(rt_conf *c)
{
    free_words(c->words);
    free(c->argv);
    memset(c, 0, sizeof *c);
}
