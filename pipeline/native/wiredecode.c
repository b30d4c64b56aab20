/* foliowatch_wiredecode: one compiled pass over a batch of wire records in the canonical
 * layout that both proves each record and extracts the pipeline's columns.
 *
 * This file knows nothing of the wire schema. It interprets a *layout*: a tree of nodes
 * (object members in order, a list of objects, maps of named numbers, strings with an
 * alphabet or an enumeration, bounded integers, bounded floats) that
 * foliowatch.pipeline.native_decode builds from schema.FIELDS at import, together with
 * the output columns (which node values are summed into which column). A table edit
 * changes the layout, never this file; a table this file cannot express is refused at
 * build time and the pipeline falls back to its Python path, saying so.
 *
 * The pass is conservative: a record it accepts follows the table exactly and its
 * columns hold what schema.decode + the Python flattening would give (numbers converted
 * as Python's float()/int() do: correctly rounded, the one exception handled being an
 * integer literal -0 in a float field, which Python reads as int 0); anything else, or
 * anything it is not sure of (escapes, whitespace, unknown or reordered members, numbers
 * beyond int64 or near the double range, non-ASCII bytes), is left unaccepted for the
 * exact Python path.
 *
 * The parse loop runs without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LAYOUT_VERSION 2
#define MAX_COLUMNS 256         /* per record, and per list item */

enum { K_OBJ = 0, K_LIST = 1, K_MAP = 2, K_STR = 3, K_INT = 4, K_FLOAT = 5 };

typedef struct Node Node;

typedef struct {
    char *key;          /* ,"name":  (the first member of an object skips the comma) */
    Py_ssize_t key_len;
    int required;
    Node *node;
} Member;

typedef struct {
    char *name;
    Py_ssize_t len;
    uint32_t hash;
    int slot;
} Kept;

typedef struct Column Column;

struct Node {
    int kind;
    int slot;                   /* STR, INT, FLOAT: where the value goes; -1: nowhere */
    /* OBJ */
    int n_members;
    Member *members;
    /* LIST, MAP */
    Py_ssize_t max_items;
    Node *child;                /* LIST: the item object; MAP: every value */
    /* LIST: the per-item columns and the slots to clear before each item */
    int n_item_cols;
    Column *item_cols;
    int n_item_slots;
    int *item_slots;
    /* STR (and MAP names) */
    unsigned char first[256], rest[256];
    Py_ssize_t min_len, max_len;
    int n_choices;
    char **choices;
    Py_ssize_t *choice_lens;
    /* MAP: kept names, open addressing on hash */
    int hash_mask;              /* -1: no kept names */
    Kept *kept;                 /* hash_mask + 1 entries; name NULL: empty */
    /* INT */
    int64_t imin, imax;
    int n_ichoices;
    int64_t *ichoices;
    /* FLOAT */
    double fmin, fmax;
    int has_fmin, has_fmax, fmin_exclusive;
};

enum { C_INT = 0, C_FLOAT = 1, C_STR = 2 };

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

struct Column {
    int type;
    int n_inputs;
    int *inputs;                /* slots */
    Buf values;                 /* int64 / double / string bytes */
    Buf offsets;                /* C_STR: int32 offsets (n + 1) */
    Buf valid;                  /* one byte per row */
    Py_ssize_t nulls;
};

typedef struct {
    int present;
    int64_t i;
    double f;
    const char *s;
    Py_ssize_t len;
} Slot;

typedef struct {
    PyObject_HEAD
    Node *root;
    int n_slots;
    int n_cols;
    Column *cols;               /* per record */
    Node *list;                 /* the one list node with item columns (or NULL) */
    char **names;               /* the record columns' names (n_cols) */
    char *list_name;            /* the list column's name */
    char **item_names;          /* the list items' columns' names */
    Py_ssize_t max_bytes;
    locale_t c_locale;
    int busy;                   /* decode runs without the GIL: one call at a time */
} Layout;

/* ------------------------------------------------------------------ buffers */
static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) return 0;
    b->data = d;
    b->cap = cap;
    return 1;
}

static int buf_put(Buf *b, const void *src, size_t n) {
    if (!buf_reserve(b, n)) return 0;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 1;
}

static void col_reset(Column *c) {
    c->values.len = c->offsets.len = c->valid.len = 0;
    c->nulls = 0;
}

static void col_free_bufs(Column *c) {
    free(c->values.data);
    free(c->offsets.data);
    free(c->valid.data);
    memset(&c->values, 0, sizeof(Buf));
    memset(&c->offsets, 0, sizeof(Buf));
    memset(&c->valid, 0, sizeof(Buf));
}

/* ------------------------------------------------------------------ the parser */
typedef struct {
    const unsigned char *p, *end;
    Slot *slots;
    Layout *lay;
    int oom;
} Cursor;

static int parse_value(Cursor *c, Node *n, int slot);

/* A map name's hash: its length and its first and last eight bytes (names are short
 * and differ at their ends: allocstall_normal, tp_compact_try_order_0, ...); a hit is
 * confirmed by comparing the whole name. */
static uint32_t name_hash(const unsigned char *s, Py_ssize_t n) {
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
    } else {
        memcpy(&a, s, (size_t)n);
    }
    uint64_t h = (a * 0x9E3779B97F4A7C15ULL) ^ (b * 0xC2B2AE3D27D4EB4FULL) ^ (uint64_t)n;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    return (uint32_t)(h ^ (h >> 32));
}

/* A string without escapes: the first character from n->first, the others from
 * n->rest (tables exclude the quote, the backslash, control and non-ASCII bytes). */
static int scan_string(Cursor *c, const unsigned char *first, const unsigned char *rest,
                       Py_ssize_t min_len, Py_ssize_t max_len,
                       const unsigned char **out, Py_ssize_t *out_len) {
    const unsigned char *p = c->p, *end = c->end;
    if (p >= end || *p != '"') return 0;
    p++;
    const unsigned char *s = p;
    if (p < end && *p != '"') {
        if (!first[*p]) return 0;
        p++;
        while (p < end && rest[*p]) p++;
    }
    if (p >= end || *p != '"') return 0;
    Py_ssize_t len = p - s;
    if (len < min_len || len > max_len) return 0;
    *out = s;
    *out_len = len;
    c->p = p + 1;
    return 1;
}

static int parse_str(Cursor *c, Node *n, int slot) {
    const unsigned char *s;
    Py_ssize_t len;
    if (!scan_string(c, n->first, n->rest, n->min_len, n->max_len, &s, &len)) return 0;
    if (n->n_choices) {
        int found = 0;
        for (int i = 0; i < n->n_choices; i++)
            if (n->choice_lens[i] == len && memcmp(n->choices[i], s, len) == 0) {
                found = 1;
                break;
            }
        if (!found) return 0;
    }
    if (slot >= 0) {
        Slot *sl = &c->slots[slot];
        sl->present = 1;
        sl->s = (const char *)s;
        sl->len = len;
    }
    return 1;
}

#define IS_DIGIT(ch) ((unsigned)((ch) - '0') < 10u)

/* A JSON integer literal within int64 (a longer one is left to Python). */
static int parse_int(Cursor *c, Node *n, int slot) {
    const unsigned char *p = c->p, *end = c->end;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end || !IS_DIGIT(*p)) return 0;
    uint64_t u = 0;
    if (*p == '0') {
        p++;
    } else {
        int nd = 0;
        while (p < end && IS_DIGIT(*p)) {
            if (++nd > 19) return 0;
            u = u * 10 + (uint64_t)(*p - '0');
            p++;
        }
    }
    int64_t v;
    if (neg) {
        if (u > (uint64_t)INT64_MAX + 1) return 0;
        v = (int64_t)(0 - u);
    } else {
        if (u > (uint64_t)INT64_MAX) return 0;
        v = (int64_t)u;
    }
    if (v < n->imin || v > n->imax) return 0;
    if (n->n_ichoices) {
        int found = 0;
        for (int i = 0; i < n->n_ichoices; i++)
            if (n->ichoices[i] == v) {
                found = 1;
                break;
            }
        if (!found) return 0;
    }
    if (slot >= 0) {
        Slot *sl = &c->slots[slot];
        sl->present = 1;
        sl->i = v;
    }
    c->p = p;
    return 1;
}

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number as Python reads it into a float field: a float literal through
 * float(text), an integer literal through float(int(text)); both are the correctly
 * rounded double of the decimal value, except that int("-0") is 0. Only numbers
 * certainly below 1e308 in magnitude are accepted (Python refuses the infinite ones). */
static int parse_float(Cursor *c, Node *n, int slot) {
    const unsigned char *s = c->p, *p = s, *end = c->end;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end || !IS_DIGIT(*p)) return 0;
    uint64_t m = 0;
    int nsig = 0;
    int64_t scale = 0;
    int is_int_literal = 1;
    if (*p == '0') {
        p++;
    } else {
        while (p < end && IS_DIGIT(*p)) {
            if (nsig < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                nsig++;
            } else {
                scale++;
            }
            p++;
        }
    }
    if (p < end && *p == '.') {
        is_int_literal = 0;
        p++;
        if (p >= end || !IS_DIGIT(*p)) return 0;
        while (p < end && IS_DIGIT(*p)) {
            int d = *p - '0';
            if (m == 0 && d == 0) {
                scale--;
            } else if (nsig < 19) {
                m = m * 10 + (uint64_t)d;
                nsig++;
                scale--;
            }
            p++;
        }
    }
    int64_t exp = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_int_literal = 0;
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) {
            eneg = *p == '-';
            p++;
        }
        if (p >= end || !IS_DIGIT(*p)) return 0;
        while (p < end && IS_DIGIT(*p)) {
            if (exp < 100000) exp = exp * 10 + (*p - '0');
            p++;
        }
        if (eneg) exp = -exp;
    }
    double v;
    if (m == 0) {
        v = (neg && !is_int_literal) ? -0.0 : 0.0;
    } else {
        int64_t e = scale + exp;
        if (e + nsig - 1 >= 308) return 0;   /* maybe not finite: Python decides */
        int need = slot >= 0 || n->has_fmin || n->has_fmax;
        if (!need) {
            v = 1.0;   /* finite, unbounded, not kept: its value does not matter */
        } else if (m <= (1ULL << 53) && e >= -22 && e <= 22 && nsig <= 19 &&
                   !(scale > 0)) {
            /* exact operands, one correctly rounded operation (Clinger's fast path);
             * scale > 0 means integer digits were dropped: not exact */
            v = e >= 0 ? (double)m * POW10[e] : (double)m / POW10[-e];
            if (neg) v = -v;
        } else {
            char tmp[400];
            Py_ssize_t len = p - s;
            if (len >= (Py_ssize_t)sizeof(tmp)) return 0;
            memcpy(tmp, s, len);
            tmp[len] = 0;
            char *stop;
            v = strtod_l(tmp, &stop, c->lay->c_locale);
            if (stop != tmp + len || !isfinite(v)) return 0;
        }
    }
    if (n->has_fmin && (n->fmin_exclusive ? !(v > n->fmin) : !(v >= n->fmin))) return 0;
    if (n->has_fmax && !(v <= n->fmax)) return 0;
    if (slot >= 0) {
        Slot *sl = &c->slots[slot];
        sl->present = 1;
        sl->f = v;
    }
    c->p = p;
    return 1;
}

static int parse_obj(Cursor *c, Node *n) {
    if (c->p >= c->end || *c->p != '{') return 0;
    c->p++;
    int first = 1;
    for (int i = 0; i < n->n_members; i++) {
        Member *m = &n->members[i];
        const char *key = first ? m->key + 1 : m->key;
        Py_ssize_t klen = first ? m->key_len - 1 : m->key_len;
        if (c->end - c->p >= klen && memcmp(c->p, key, klen) == 0) {
            c->p += klen;
            if (!parse_value(c, m->node, m->node->slot)) return 0;
            first = 0;
        } else if (m->required) {
            return 0;
        }
    }
    if (c->p >= c->end || *c->p != '}') return 0;
    c->p++;
    return 1;
}

/* ``n`` columns (the record's, or a list item's) from the slots just parsed, appended;
   0 when a sum leaves int64 (Python refuses it), before anything is appended. */
static int emit_columns(Cursor *c, Column *cols, int n) {
    int64_t sums[MAX_COLUMNS];
    for (int k = 0; k < n; k++) {   /* first: sums may refuse the record */
        Column *col = &cols[k];
        if (col->type != C_INT) continue;
        int64_t sum = 0;
        for (int j = 0; j < col->n_inputs; j++) {
            Slot *sl = &c->slots[col->inputs[j]];
            if (sl->present && __builtin_add_overflow(sum, sl->i, &sum)) return 0;
        }
        sums[k] = sum;
    }
    for (int k = 0; k < n; k++) {
        Column *col = &cols[k];
        char present = 0;
        if (!buf_reserve(&col->values, 8) || !buf_reserve(&col->valid, 1)) {
            c->oom = 1;
            return 0;
        }
        if (col->type == C_STR) {
            Slot *sl = &c->slots[col->inputs[0]];
            if (sl->present) {
                if (!buf_put(&col->values, sl->s, sl->len)) {
                    c->oom = 1;
                    return 0;
                }
                present = 1;
            }
            int32_t off = (int32_t)col->values.len;
            if (!buf_put(&col->offsets, &off, 4)) {
                c->oom = 1;
                return 0;
            }
        } else if (col->type == C_INT) {
            for (int j = 0; j < col->n_inputs; j++)
                if (c->slots[col->inputs[j]].present) present = 1;
            memcpy(col->values.data + col->values.len, &sums[k], 8);
            col->values.len += 8;
        } else {
            Slot *sl = &c->slots[col->inputs[0]];
            double v = sl->present ? sl->f : 0.0;
            present = (char)sl->present;
            memcpy(col->values.data + col->values.len, &v, 8);
            col->values.len += 8;
        }
        col->valid.data[col->valid.len++] = present;
        if (!present) col->nulls++;
    }
    return 1;
}

/* The per-item columns of a list item just parsed: appended, undone with the record. */
static int emit_item(Cursor *c, Node *list) {
    return emit_columns(c, list->item_cols, list->n_item_cols);
}

static int parse_list(Cursor *c, Node *n) {
    if (c->p >= c->end || *c->p != '[') return 0;
    c->p++;
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return 1;
    }
    Py_ssize_t count = 0;
    for (;;) {
        if (++count > n->max_items) return 0;
        for (int k = 0; k < n->n_item_slots; k++) c->slots[n->item_slots[k]].present = 0;
        if (!parse_obj(c, n->child)) return 0;
        if (n->n_item_cols && !emit_item(c, n)) return 0;
        if (c->p >= c->end) return 0;
        if (*c->p == ']') {
            c->p++;
            return 1;
        }
        if (*c->p != ',') return 0;
        c->p++;
    }
}

static int parse_map(Cursor *c, Node *n) {
    if (c->p >= c->end || *c->p != '{') return 0;
    c->p++;
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return 1;
    }
    Py_ssize_t count = 0;
    for (;;) {
        /* entries are counted with repeats: at least the distinct names Python keeps */
        if (++count > n->max_items) return 0;
        const unsigned char *name;
        Py_ssize_t len;
        if (!scan_string(c, n->first, n->rest, n->min_len, n->max_len, &name, &len)) return 0;
        if (c->p >= c->end || *c->p != ':') return 0;
        c->p++;
        int slot = -1;
        if (n->hash_mask >= 0) {
            uint32_t h = name_hash(name, len);
            for (uint32_t i = h & (uint32_t)n->hash_mask;; i = (i + 1) & (uint32_t)n->hash_mask) {
                Kept *k = &n->kept[i];
                if (!k->name) break;
                if (k->hash == h && k->len == len && memcmp(k->name, name, len) == 0) {
                    slot = k->slot;   /* a repeated name overwrites: Python keeps the last */
                    break;
                }
            }
        }
        if (!parse_value(c, n->child, slot)) return 0;
        if (c->p >= c->end) return 0;
        if (*c->p == '}') {
            c->p++;
            return 1;
        }
        if (*c->p != ',') return 0;
        c->p++;
    }
}

static int parse_value(Cursor *c, Node *n, int slot) {
    switch (n->kind) {
    case K_STR: return parse_str(c, n, slot);
    case K_INT: return parse_int(c, n, slot);
    case K_FLOAT: return parse_float(c, n, slot);
    case K_OBJ: return parse_obj(c, n);
    case K_LIST: return parse_list(c, n);
    case K_MAP: return parse_map(c, n);
    }
    return 0;
}

/* ------------------------------------------------------------------ layout building */
static void node_free(Node *n) {
    if (!n) return;
    for (int i = 0; i < n->n_members; i++) {
        free(n->members[i].key);
        node_free(n->members[i].node);
    }
    free(n->members);
    node_free(n->child);
    for (int i = 0; i < n->n_item_cols; i++) {
        free(n->item_cols[i].inputs);
        col_free_bufs(&n->item_cols[i]);
    }
    free(n->item_cols);
    free(n->item_slots);
    for (int i = 0; i < n->n_choices; i++) free(n->choices[i]);
    free(n->choices);
    free(n->choice_lens);
    if (n->kept) {
        for (int i = 0; i <= n->hash_mask; i++) free(n->kept[i].name);
        free(n->kept);
    }
    free(n->ichoices);
    free(n);
}

static int fail(const char *msg) {
    PyErr_Format(PyExc_ValueError, "wiredecode layout: %s", msg);
    return 0;
}

static int get_table(PyObject *o, unsigned char *out) {
    char *s;
    Py_ssize_t n;
    if (!PyBytes_Check(o) || PyBytes_AsStringAndSize(o, &s, &n) < 0 || n != 256)
        return fail("an alphabet table must be 256 bytes");
    for (int i = 0; i < 256; i++) {
        out[i] = s[i] ? 1 : 0;
        if (out[i] && (i < 0x20 || i >= 0x80 || i == '"' || i == '\\'))
            return fail("an alphabet table admits a quote, backslash, control or non-ASCII byte");
    }
    return 1;
}

static char *dup_bytes(PyObject *o, Py_ssize_t *len) {
    char *s;
    if (!PyBytes_Check(o) || PyBytes_AsStringAndSize(o, &s, len) < 0) {
        fail("expected bytes");
        return NULL;
    }
    char *d = malloc(*len + 1);
    if (!d) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(d, s, *len);
    d[*len] = 0;
    return d;
}

static int get_int(PyObject *o, int *out) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return 0;
    *out = (int)v;
    return 1;
}

static int build_columns(PyObject *spec, int n_slots, Column **cols_out, int *n_out) {
    /* spec: sequence of (type, (slot, ...)) */
    PyObject *seq = PySequence_Fast(spec, "columns must be a sequence");
    if (!seq) return 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Column *cols = calloc(n ? n : 1, sizeof(Column));
    if (!cols) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return 0;
    }
    *cols_out = cols;
    *n_out = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *inputs;
        int type;
        if (!PyArg_ParseTuple(t, "iO", &type, &inputs)) goto bad;
        PyObject *iseq = PySequence_Fast(inputs, "column inputs must be a sequence");
        if (!iseq) goto bad;
        Py_ssize_t k = PySequence_Fast_GET_SIZE(iseq);
        cols[i].type = type;
        cols[i].n_inputs = (int)k;
        cols[i].inputs = calloc(k ? k : 1, sizeof(int));
        for (Py_ssize_t j = 0; j < k; j++) {
            if (!get_int(PySequence_Fast_GET_ITEM(iseq, j), &cols[i].inputs[j])) {
                Py_DECREF(iseq);
                goto bad;
            }
            if (cols[i].inputs[j] < 0 || cols[i].inputs[j] >= n_slots) {
                Py_DECREF(iseq);
                fail("a column reads a slot out of range");
                goto bad;
            }
        }
        Py_DECREF(iseq);
        if (type < C_INT || type > C_STR || k < 1 || (type != C_INT && k != 1)) {
            fail("a float or string column has exactly one input; an int column one or more");
            goto bad;
        }
    }
    Py_DECREF(seq);
    return 1;
bad:
    Py_DECREF(seq);
    return 0;
}

static Node *build_node(PyObject *spec, Layout *lay, int in_list) {
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 1) {
        fail("a node must be a tuple (kind, ...)");
        return NULL;
    }
    Node *n = calloc(1, sizeof(Node));
    if (!n) {
        PyErr_NoMemory();
        return NULL;
    }
    n->slot = -1;
    n->hash_mask = -1;
    int kind;
    if (!get_int(PyTuple_GET_ITEM(spec, 0), &kind)) goto bad;
    n->kind = kind;
    switch (kind) {
    case K_OBJ: {  /* (K_OBJ, ((name, required, node), ...)) */
        PyObject *members;
        int k_;
        if (!PyArg_ParseTuple(spec, "iO", &k_, &members)) goto bad;
        PyObject *seq = PySequence_Fast(members, "members must be a sequence");
        if (!seq) goto bad;
        Py_ssize_t cnt = PySequence_Fast_GET_SIZE(seq);
        n->members = calloc(cnt ? cnt : 1, sizeof(Member));
        n->n_members = 0;
        for (Py_ssize_t i = 0; i < cnt; i++) {
            PyObject *name, *child;
            int required;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "SpO", &name, &required, &child)) {
                Py_DECREF(seq);
                goto bad;
            }
            Py_ssize_t nl;
            char *nm;
            PyBytes_AsStringAndSize(name, &nm, &nl);
            Member *m = &n->members[n->n_members++];
            m->key_len = nl + 4;
            m->key = malloc(nl + 5);
            m->key[0] = ',';
            m->key[1] = '"';
            memcpy(m->key + 2, nm, nl);
            m->key[nl + 2] = '"';
            m->key[nl + 3] = ':';
            m->key[nl + 4] = 0;
            m->required = required;
            m->node = build_node(child, lay, in_list);
            if (!m->node) {
                Py_DECREF(seq);
                goto bad;
            }
        }
        Py_DECREF(seq);
        break;
    }
    case K_LIST: {  /* (K_LIST, max_items, item_node, item_columns, item_slots) */
        int k_;
        PyObject *item, *cols, *slots;
        if (!PyArg_ParseTuple(spec, "inOOO", &k_, &n->max_items, &item, &cols, &slots)) goto bad;
        if (in_list || lay->list) {
            fail("one list of objects, not nested");
            goto bad;
        }
        lay->list = n;
        n->child = build_node(item, lay, 1);
        if (!n->child) goto bad;
        if (n->child->kind != K_OBJ) {
            fail("a list holds objects");
            goto bad;
        }
        if (!build_columns(cols, lay->n_slots, &n->item_cols, &n->n_item_cols)) goto bad;
        PyObject *seq = PySequence_Fast(slots, "item slots must be a sequence");
        if (!seq) goto bad;
        n->n_item_slots = (int)PySequence_Fast_GET_SIZE(seq);
        n->item_slots = calloc(n->n_item_slots ? n->n_item_slots : 1, sizeof(int));
        for (int i = 0; i < n->n_item_slots; i++)
            if (!get_int(PySequence_Fast_GET_ITEM(seq, i), &n->item_slots[i]) ||
                n->item_slots[i] < 0 || n->item_slots[i] >= lay->n_slots) {
                Py_DECREF(seq);
                if (!PyErr_Occurred()) fail("an item slot is out of range");
                goto bad;
            }
        Py_DECREF(seq);
        break;
    }
    case K_MAP: {  /* (K_MAP, max_items, first, rest, max_name_len, value_node, {name: slot}) */
        int k_;
        PyObject *first, *rest, *value, *kept;
        if (!PyArg_ParseTuple(spec, "inOOnOO", &k_, &n->max_items, &first, &rest, &n->max_len,
                              &value, &kept))
            goto bad;
        if (!get_table(first, n->first) || !get_table(rest, n->rest)) goto bad;
        n->min_len = 1;
        n->child = build_node(value, lay, in_list);
        if (!n->child) goto bad;
        if (n->child->kind != K_INT && n->child->kind != K_FLOAT && n->child->kind != K_STR) {
            fail("a map's values are numbers or strings");
            goto bad;
        }
        if (!PyDict_Check(kept)) {
            fail("kept names must be a dict");
            goto bad;
        }
        Py_ssize_t nk = PyDict_Size(kept);
        if (nk) {
            int size = 4;
            while (size < 4 * nk) size *= 2;
            n->hash_mask = size - 1;
            n->kept = calloc(size, sizeof(Kept));
            PyObject *key, *val;
            Py_ssize_t pos = 0;
            while (PyDict_Next(kept, &pos, &key, &val)) {
                Py_ssize_t len;
                char *name = dup_bytes(key, &len);
                if (!name) goto bad;
                int slot;
                if (!get_int(val, &slot) || slot < 0 || slot >= lay->n_slots) {
                    free(name);
                    if (!PyErr_Occurred()) fail("a kept name's slot is out of range");
                    goto bad;
                }
                uint32_t h = name_hash((unsigned char *)name, len);
                uint32_t i = h & (uint32_t)n->hash_mask;
                while (n->kept[i].name) i = (i + 1) & (uint32_t)n->hash_mask;
                n->kept[i] = (Kept){name, len, h, slot};
            }
        }
        break;
    }
    case K_STR: {  /* (K_STR, first, rest, min_len, max_len, choices or None, slot) */
        int k_;
        PyObject *first, *rest, *choices;
        if (!PyArg_ParseTuple(spec, "iOOnnOi", &k_, &first, &rest, &n->min_len, &n->max_len,
                              &choices, &n->slot))
            goto bad;
        if (!get_table(first, n->first) || !get_table(rest, n->rest)) goto bad;
        if (choices != Py_None) {
            PyObject *seq = PySequence_Fast(choices, "choices must be a sequence");
            if (!seq) goto bad;
            n->n_choices = (int)PySequence_Fast_GET_SIZE(seq);
            n->choices = calloc(n->n_choices ? n->n_choices : 1, sizeof(char *));
            n->choice_lens = calloc(n->n_choices ? n->n_choices : 1, sizeof(Py_ssize_t));
            for (int i = 0; i < n->n_choices; i++) {
                n->choices[i] = dup_bytes(PySequence_Fast_GET_ITEM(seq, i), &n->choice_lens[i]);
                if (!n->choices[i]) {
                    Py_DECREF(seq);
                    goto bad;
                }
            }
            Py_DECREF(seq);
        }
        break;
    }
    case K_INT: {  /* (K_INT, min, max, choices or None, slot) */
        int k_;
        PyObject *choices;
        long long lo, hi;
        if (!PyArg_ParseTuple(spec, "iLLOi", &k_, &lo, &hi, &choices, &n->slot)) goto bad;
        n->imin = lo;
        n->imax = hi;
        if (choices != Py_None) {
            PyObject *seq = PySequence_Fast(choices, "choices must be a sequence");
            if (!seq) goto bad;
            n->n_ichoices = (int)PySequence_Fast_GET_SIZE(seq);
            n->ichoices = calloc(n->n_ichoices ? n->n_ichoices : 1, sizeof(int64_t));
            for (int i = 0; i < n->n_ichoices; i++) {
                long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
                if (v == -1 && PyErr_Occurred()) {
                    Py_DECREF(seq);
                    goto bad;
                }
                n->ichoices[i] = v;
            }
            Py_DECREF(seq);
        }
        break;
    }
    case K_FLOAT: {  /* (K_FLOAT, min or None, min_exclusive, max or None, slot) */
        int k_;
        PyObject *lo, *hi;
        if (!PyArg_ParseTuple(spec, "iOpOi", &k_, &lo, &n->fmin_exclusive, &hi, &n->slot)) goto bad;
        if (lo != Py_None) {
            n->has_fmin = 1;
            n->fmin = PyFloat_AsDouble(lo);
            if (PyErr_Occurred()) goto bad;
        }
        if (hi != Py_None) {
            n->has_fmax = 1;
            n->fmax = PyFloat_AsDouble(hi);
            if (PyErr_Occurred()) goto bad;
        }
        break;
    }
    default:
        fail("unknown node kind");
        goto bad;
    }
    if (n->slot < -1 || n->slot >= lay->n_slots) {
        fail("a node's slot is out of range");
        goto bad;
    }
    return n;
bad:
    node_free(n);
    return NULL;
}

/* ------------------------------------------------------------------ Arrow C data interface
 * The accepted rows leave as one Arrow struct array (https://arrow.apache.org/docs/format/
 * CDataInterface.html): "row" (int64, the record's index in the batch), the record
 * columns, and the list column of item structs. The column buffers are handed over, not
 * copied: each array owns what it points to and frees it in its release callback, which
 * touches no Python object (a consumer may release from any thread, without the GIL). */
#include "arrow_c_abi.h"

typedef struct {            /* one array's or schema's own allocations */
    void *buffers[3];       /* array: owned buffers (the ``buffers`` pointers) */
    char *name;             /* schema: its field name */
    int64_t n_children;
    void **child_ptrs;      /* the children's pointer table */
    void *children;         /* the children's structs, one block */
} Owned;

static void release_array(struct ArrowArray *a) {
    Owned *o = a->private_data;
    for (int64_t i = 0; i < a->n_children; i++) {
        struct ArrowArray *ch = a->children[i];
        if (ch->release) ch->release(ch);
    }
    for (int i = 0; i < 3; i++) free(o->buffers[i]);
    free(o->child_ptrs);
    free(o->children);
    free(o);
    a->release = NULL;
}

static void release_schema(struct ArrowSchema *s) {
    Owned *o = s->private_data;
    for (int64_t i = 0; i < s->n_children; i++) {
        struct ArrowSchema *ch = s->children[i];
        if (ch->release) ch->release(ch);
    }
    free(o->name);
    free(o->child_ptrs);
    free(o->children);
    free(o);
    s->release = NULL;
}

/* ``n`` zeroed children of ``size`` bytes each in one block, and the pointer table the
 * parent's ``children`` points to; 0 when out of memory (the parent's release frees them). */
static int alloc_children(Owned *o, int64_t n, size_t size) {
    o->children = calloc(n, size);
    o->child_ptrs = calloc(n, sizeof(void *));
    if (!o->children || !o->child_ptrs) return 0;
    for (int64_t i = 0; i < n; i++) o->child_ptrs[i] = (char *)o->children + i * size;
    return 1;
}

/* An array with ``n_children`` zeroed children; 0 when out of memory. Its buffers
 * are set by the caller, who owns what it puts in Owned.buffers from then on. */
static int init_array(struct ArrowArray *a, int64_t length, int64_t null_count,
                      int64_t n_buffers, int64_t n_children) {
    Owned *o = calloc(1, sizeof(Owned));
    if (!o) return 0;
    memset(a, 0, sizeof(*a));
    a->length = length;
    a->null_count = null_count;
    a->n_buffers = n_buffers;
    a->n_children = 0;      /* raised as children are made, so a release frees just those */
    a->private_data = o;
    a->release = release_array;
    a->buffers = (const void **)o->buffers;
    if (n_children) {
        if (!alloc_children(o, n_children, sizeof(struct ArrowArray))) return 0;
        a->children = (struct ArrowArray **)o->child_ptrs;
    }
    return 1;
}

static int init_schema(struct ArrowSchema *s, const char *format, const char *name,
                       int64_t n_children) {
    Owned *o = calloc(1, sizeof(Owned));
    if (!o) return 0;
    memset(s, 0, sizeof(*s));
    s->format = format;
    s->flags = ARROW_FLAG_NULLABLE;
    s->private_data = o;
    s->release = release_schema;
    o->name = strdup(name);
    s->name = o->name;
    if (!o->name) return 0;
    if (n_children) {
        if (!alloc_children(o, n_children, sizeof(struct ArrowSchema))) return 0;
        s->children = (struct ArrowSchema **)o->child_ptrs;
    }
    return 1;
}

/* ``b``'s memory, handed over (the Buf starts empty again), trimmed to its length; a
 * small zeroed block when it is empty (a buffer is never NULL). */
static void *take_buf(Buf *b) {
    void *d = b->data;
    size_t len = b->len;
    memset(b, 0, sizeof(Buf));
    if (!d) return calloc(1, 8);
    if (len == 0) len = 8;
    void *t = realloc(d, len);
    return t ? t : d;
}

/* The column as an array of ``n`` rows: validity bitmap (NULL without nulls), then
 * offsets and bytes (strings) or the 8-byte values; 0 when out of memory. */
static int export_column(Column *c, Py_ssize_t n, struct ArrowArray *a) {
    int is_str = c->type == C_STR;
    if (!init_array(a, n, c->nulls, is_str ? 3 : 2, 0)) return 0;
    Owned *o = a->private_data;
    if (c->nulls) {
        unsigned char *bm = calloc((n + 7) / 8 ? (n + 7) / 8 : 1, 1);
        if (!bm) return 0;
        for (Py_ssize_t i = 0; i < n; i++)
            if (c->valid.data[i]) bm[i >> 3] |= (unsigned char)(1u << (i & 7));
        o->buffers[0] = bm;
    }
    if (is_str) {
        o->buffers[1] = take_buf(&c->offsets);
        o->buffers[2] = take_buf(&c->values);
        if (!o->buffers[1] || !o->buffers[2]) return 0;
    } else {
        o->buffers[1] = take_buf(&c->values);
        if (!o->buffers[1]) return 0;
    }
    return 1;
}

static const char *column_format(const Column *c) {
    return c->type == C_STR ? "u" : c->type == C_INT ? "l" : "g";
}

static void capsule_free_schema(PyObject *cap) {
    struct ArrowSchema *s = PyCapsule_GetPointer(cap, "arrow_schema");
    if (!s) {
        PyErr_Clear();
        return;
    }
    if (s->release) s->release(s);
    free(s);
}

static void capsule_free_array(PyObject *cap) {
    struct ArrowArray *a = PyCapsule_GetPointer(cap, "arrow_array");
    if (!a) {
        PyErr_Clear();
        return;
    }
    if (a->release) a->release(a);
    free(a);
}

/* ------------------------------------------------------------------ the type */
static void free_names(char **names, int n) {
    if (!names) return;
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

static void Layout_dealloc(Layout *self) {
    if (self->list) free_names(self->item_names, self->list->n_item_cols);
    node_free(self->root);
    for (int i = 0; i < self->n_cols; i++) {
        free(self->cols[i].inputs);
        col_free_bufs(&self->cols[i]);
    }
    free(self->cols);
    free_names(self->names, self->n_cols);
    free(self->list_name);
    if (self->c_locale) freelocale(self->c_locale);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ``n`` names from a sequence of str, as C strings; NULL with an exception otherwise. */
static char **get_names(PyObject *spec, int n, const char *what) {
    PyObject *seq = PySequence_Fast(spec, "names must be a sequence");
    if (!seq) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != n) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s: %d names expected", what, n);
        return NULL;
    }
    char **names = calloc(n ? n : 1, sizeof(char *));
    if (!names) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        const char *s = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
        if (!s || !(names[i] = strdup(s))) {
            if (s) PyErr_NoMemory();
            free_names(names, n);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    return names;
}

static int Layout_init(Layout *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"root", "columns", "n_slots", "max_bytes", "names", "list_name",
                         "item_names", NULL};
    PyObject *root, *cols, *names, *item_names;
    const char *list_name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOinOsO", kw, &root, &cols, &self->n_slots,
                                     &self->max_bytes, &names, &list_name, &item_names))
        return -1;
    if (self->root) return fail("already initialised"), -1;
    if (self->n_slots < 0 || self->n_slots > 4096) return fail("slot count out of range"), -1;
    self->c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!self->c_locale) return fail("no C locale"), -1;
    self->root = build_node(root, self, 0);
    if (!self->root) return -1;
    if (self->root->kind != K_OBJ) return fail("the record is an object"), -1;
    if (!build_columns(cols, self->n_slots, &self->cols, &self->n_cols)) return -1;
    if (self->n_cols > MAX_COLUMNS || (self->list && self->list->n_item_cols > MAX_COLUMNS))
        return fail("more than 256 columns"), -1;
    if (!(self->names = get_names(names, self->n_cols, "columns"))) return -1;
    if (!(self->list_name = strdup(list_name))) return PyErr_NoMemory(), -1;
    if (self->list &&
        !(self->item_names = get_names(item_names, self->list->n_item_cols, "item columns")))
        return -1;
    return 0;
}

/* The batch's accepted rows as one struct array (see "Arrow C data interface" above)
 * into ``s`` and ``a``; 0 when out of memory (the caller releases what was made). */
static int export_batch(Layout *self, const unsigned char *acc, Py_ssize_t n,
                        Py_ssize_t accepted, Buf *list_offsets, Py_ssize_t n_items,
                        struct ArrowSchema *s, struct ArrowArray *a) {
    Node *list = self->list;
    int64_t n_children = 1 + self->n_cols + (list ? 1 : 0);
    if (!init_schema(s, "+s", "", n_children) || !init_array(a, accepted, 0, 1, n_children))
        return 0;
    s->n_children++;
    a->n_children++;
    if (!init_schema(s->children[0], "l", "row", 0) ||
        !init_array(a->children[0], accepted, 0, 2, 0))
        return 0;
    int64_t *rows = malloc(accepted ? sizeof(int64_t) * accepted : 8);
    if (!rows) return 0;
    ((Owned *)a->children[0]->private_data)->buffers[1] = rows;
    for (Py_ssize_t i = 0; i < n; i++)
        if (acc[i]) *rows++ = i;
    for (int k = 0; k < self->n_cols; k++) {
        s->n_children++;
        a->n_children++;
        if (!init_schema(s->children[1 + k], column_format(&self->cols[k]), self->names[k], 0) ||
            !export_column(&self->cols[k], accepted, a->children[1 + k]))
            return 0;
    }
    if (!list) return 1;
    struct ArrowSchema *ls = s->children[n_children - 1];
    struct ArrowArray *la = a->children[n_children - 1];
    s->n_children++;
    a->n_children++;
    if (!init_schema(ls, "+l", self->list_name, 1) || !init_array(la, accepted, 0, 2, 1))
        return 0;
    if (!(((Owned *)la->private_data)->buffers[1] = take_buf(list_offsets))) return 0;
    ls->n_children++;
    la->n_children++;
    struct ArrowSchema *is = ls->children[0];
    struct ArrowArray *ia = la->children[0];
    if (!init_schema(is, "+s", "item", list->n_item_cols) ||
        !init_array(ia, n_items, 0, 1, list->n_item_cols))
        return 0;
    for (int k = 0; k < list->n_item_cols; k++) {
        is->n_children++;
        ia->n_children++;
        if (!init_schema(is->children[k], column_format(&list->item_cols[k]),
                         self->item_names[k], 0) ||
            !export_column(&list->item_cols[k], n_items, ia->children[k]))
            return 0;
    }
    return 1;
}

static PyObject *Layout_decode(Layout *self, PyObject *values) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Layout.decode is already running in another thread");
        return NULL;
    }
    /* a tuple of its own: the values stay alive and in place while the GIL is released */
    PyObject *seq = PySequence_Tuple(values);
    if (!seq) return NULL;
    self->busy = 1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const char **ptrs = malloc(sizeof(char *) * (n ? n : 1));
    Py_ssize_t *lens = malloc(sizeof(Py_ssize_t) * (n ? n : 1));
    Slot *slots = calloc(self->n_slots ? self->n_slots : 1, sizeof(Slot));
    unsigned char *acc = malloc(n ? n : 1);
    Buf list_offsets = {0};
    struct ArrowSchema *schema = NULL;
    struct ArrowArray *array = NULL;
    PyObject *rest = NULL, *schema_cap = NULL, *array_cap = NULL;
    if (!ptrs || !lens || !slots || !acc) goto oom;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(seq, i);
        if (PyBytes_Check(v)) {
            ptrs[i] = PyBytes_AS_STRING(v);
            lens[i] = PyBytes_GET_SIZE(v);
        } else {   /* not bytes: the Python path judges it */
            ptrs[i] = NULL;
            lens[i] = 0;
        }
    }
    for (int k = 0; k < self->n_cols; k++) col_reset(&self->cols[k]);
    Node *list = self->list;
    if (list)
        for (int k = 0; k < list->n_item_cols; k++) col_reset(&list->item_cols[k]);
    Py_ssize_t accepted = 0;
    int32_t zero = 0;
    int oom = 0;
    Py_BEGIN_ALLOW_THREADS
    if (list && !buf_put(&list_offsets, &zero, 4)) oom = 1;
    for (int k = 0; k < self->n_cols && !oom; k++)
        if (self->cols[k].type == C_STR && !buf_put(&self->cols[k].offsets, &zero, 4)) oom = 1;
    if (list)
        for (int k = 0; k < list->n_item_cols && !oom; k++)
            if (list->item_cols[k].type == C_STR &&
                !buf_put(&list->item_cols[k].offsets, &zero, 4))
                oom = 1;
    /* item columns' lengths before each record, to undo a refused record's items */
    size_t saved[MAX_COLUMNS][3];
    Py_ssize_t saved_nulls[MAX_COLUMNS];
    for (Py_ssize_t i = 0; i < n && !oom; i++) {
        acc[i] = 0;
        if (!ptrs[i] || lens[i] > self->max_bytes) continue;
        for (int s = 0; s < self->n_slots; s++) slots[s].present = 0;
        if (list)
            for (int k = 0; k < list->n_item_cols; k++) {
                Column *col = &list->item_cols[k];
                saved[k][0] = col->values.len;
                saved[k][1] = col->offsets.len;
                saved[k][2] = col->valid.len;
                saved_nulls[k] = col->nulls;
            }
        Cursor c = {(const unsigned char *)ptrs[i], (const unsigned char *)ptrs[i] + lens[i],
                    slots, self, 0};
        int ok = parse_obj(&c, self->root) && c.p == c.end &&
                 emit_columns(&c, self->cols, self->n_cols);
        if (c.oom) {
            oom = 1;
            break;
        }
        if (ok && list) {
            int32_t items = (int32_t)(list->n_item_cols ? list->item_cols[0].valid.len : 0);
            if (!buf_put(&list_offsets, &items, 4)) {
                oom = 1;
                break;
            }
        }
        if (!ok && list)
            for (int k = 0; k < list->n_item_cols; k++) {
                Column *col = &list->item_cols[k];
                col->values.len = saved[k][0];
                col->offsets.len = saved[k][1];
                col->valid.len = saved[k][2];
                col->nulls = saved_nulls[k];
            }
        if (ok) {
            acc[i] = 1;
            accepted++;
        }
    }
    Py_END_ALLOW_THREADS
    if (oom) goto oom;
    free(ptrs);
    free(lens);
    free(slots);
    ptrs = NULL;
    lens = NULL;
    slots = NULL;
    /* the rows left to the other paths */
    rest = PyList_New(n - accepted);
    if (!rest) goto err;
    for (Py_ssize_t i = 0, j = 0; i < n; i++) {
        if (acc[i]) continue;
        PyObject *r = PyLong_FromSsize_t(i);
        if (!r) goto err;
        PyList_SET_ITEM(rest, j++, r);
    }
    Py_ssize_t n_items = list && list->n_item_cols ? (Py_ssize_t)list->item_cols[0].valid.len : 0;
    schema = calloc(1, sizeof(struct ArrowSchema));
    array = calloc(1, sizeof(struct ArrowArray));
    if (!schema || !array) goto oom;
    if (!export_batch(self, acc, n, accepted, &list_offsets, n_items, schema, array)) goto oom;
    schema_cap = PyCapsule_New(schema, "arrow_schema", capsule_free_schema);
    if (!schema_cap) goto err;
    schema = NULL;   /* the capsule's now */
    array_cap = PyCapsule_New(array, "arrow_array", capsule_free_array);
    if (!array_cap) goto err;
    array = NULL;
    free(acc);
    free(list_offsets.data);
    /* the validity bytes are kept for the next batch, trimmed if a batch grew them */
    for (int k = 0; k < self->n_cols; k++)
        if (self->cols[k].valid.cap > (64u << 20)) col_free_bufs(&self->cols[k]);
    Py_DECREF(seq);
    self->busy = 0;
    return Py_BuildValue("(NnNN)", rest, accepted, schema_cap, array_cap);
oom:
    PyErr_NoMemory();
err:
    free(ptrs);
    free(lens);
    free(slots);
    free(acc);
    free(list_offsets.data);
    if (schema) {
        if (schema->release) schema->release(schema);
        free(schema);
    }
    if (array) {
        if (array->release) array->release(array);
        free(array);
    }
    Py_XDECREF(rest);
    Py_XDECREF(schema_cap);
    Py_XDECREF(array_cap);
    Py_DECREF(seq);
    self->busy = 0;
    return NULL;
}

static PyMethodDef Layout_methods[] = {
    {"decode", (PyCFunction)Layout_decode, METH_O,
     "decode(values) -> (rows left to the other paths, n_accepted, schema capsule, array "
     "capsule): the accepted rows as one Arrow struct array (row, the record columns, the "
     "list column), through the Arrow C data interface"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject LayoutType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "foliowatch_wiredecode.Layout",
    .tp_basicsize = sizeof(Layout),
    .tp_dealloc = (destructor)Layout_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Layout(root, columns, n_slots, max_bytes, names, list_name, item_names): a "
               "compiled record layout",
    .tp_methods = Layout_methods,
    .tp_init = (initproc)Layout_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "foliowatch_wiredecode",
                                       "One-pass prove-and-extract decoder of canonical wire "
                                       "records (see foliowatch.pipeline.native_decode).",
                                       -1, NULL};

PyMODINIT_FUNC PyInit_foliowatch_wiredecode(void) {
    if (PyType_Ready(&LayoutType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&LayoutType);
    if (PyModule_AddObject(m, "Layout", (PyObject *)&LayoutType) < 0 ||
        PyModule_AddIntConstant(m, "LAYOUT_VERSION", LAYOUT_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "K_OBJ", K_OBJ) < 0 ||
        PyModule_AddIntConstant(m, "K_LIST", K_LIST) < 0 ||
        PyModule_AddIntConstant(m, "K_MAP", K_MAP) < 0 ||
        PyModule_AddIntConstant(m, "K_STR", K_STR) < 0 ||
        PyModule_AddIntConstant(m, "K_INT", K_INT) < 0 ||
        PyModule_AddIntConstant(m, "K_FLOAT", K_FLOAT) < 0 ||
        PyModule_AddIntConstant(m, "C_INT", C_INT) < 0 ||
        PyModule_AddIntConstant(m, "C_FLOAT", C_FLOAT) < 0 ||
        PyModule_AddIntConstant(m, "C_STR", C_STR) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
