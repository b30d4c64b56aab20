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

#define LAYOUT_VERSION 1
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

/* ------------------------------------------------------------------ the type */
static void Layout_dealloc(Layout *self) {
    node_free(self->root);
    for (int i = 0; i < self->n_cols; i++) {
        free(self->cols[i].inputs);
        col_free_bufs(&self->cols[i]);
    }
    free(self->cols);
    if (self->c_locale) freelocale(self->c_locale);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Layout_init(Layout *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"root", "columns", "n_slots", "max_bytes", NULL};
    PyObject *root, *cols;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOin", kw, &root, &cols, &self->n_slots,
                                     &self->max_bytes))
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
    return 0;
}

static PyObject *bitmap(Buf *valid, Py_ssize_t n, Py_ssize_t nulls) {
    if (nulls == 0) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (n + 7) / 8);
    if (!out) return NULL;
    unsigned char *b = (unsigned char *)PyBytes_AS_STRING(out);
    memset(b, 0, (n + 7) / 8);
    for (Py_ssize_t i = 0; i < n; i++)
        if (valid->data[i]) b[i >> 3] |= (unsigned char)(1u << (i & 7));
    return out;
}

static PyObject *column_result(Column *c, Py_ssize_t n) {
    PyObject *valid = bitmap(&c->valid, n, c->nulls);
    if (!valid) return NULL;
    PyObject *values = PyBytes_FromStringAndSize(c->values.data ? c->values.data : "", c->values.len);
    PyObject *offsets;
    if (c->type == C_STR)
        offsets = PyBytes_FromStringAndSize(c->offsets.data, c->offsets.len);
    else {
        offsets = Py_None;
        Py_INCREF(offsets);
    }
    if (!values || !offsets) {
        Py_XDECREF(valid);
        Py_XDECREF(values);
        Py_XDECREF(offsets);
        return NULL;
    }
    return Py_BuildValue("(NnNN)", valid, c->nulls, values, offsets);
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
    PyObject *mask = PyBytes_FromStringAndSize(NULL, n);
    Buf list_offsets = {0};
    if (!ptrs || !lens || !slots || !mask) goto oom;
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
    unsigned char *acc = (unsigned char *)PyBytes_AS_STRING(mask);
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
    PyObject *cols = PyList_New(self->n_cols);
    if (!cols) goto err;
    for (int k = 0; k < self->n_cols; k++) {
        PyObject *r = column_result(&self->cols[k], accepted);
        if (!r) {
            Py_DECREF(cols);
            goto err;
        }
        PyList_SET_ITEM(cols, k, r);
    }
    PyObject *items = PyList_New(list ? list->n_item_cols : 0);
    Py_ssize_t n_items = 0;
    if (!items) {
        Py_DECREF(cols);
        goto err;
    }
    if (list) {
        n_items = list->n_item_cols ? (Py_ssize_t)list->item_cols[0].valid.len : 0;
        for (int k = 0; k < list->n_item_cols; k++) {
            PyObject *r = column_result(&list->item_cols[k], n_items);
            if (!r) {
                Py_DECREF(cols);
                Py_DECREF(items);
                goto err;
            }
            PyList_SET_ITEM(items, k, r);
        }
    }
    PyObject *loffs = list ? PyBytes_FromStringAndSize(list_offsets.data, list_offsets.len)
                           : (Py_INCREF(Py_None), Py_None);
    free(list_offsets.data);
    /* the per-call buffers are kept for the next batch, trimmed if a batch grew them */
    for (int k = 0; k < self->n_cols; k++)
        if (self->cols[k].values.cap > (64u << 20)) col_free_bufs(&self->cols[k]);
    Py_DECREF(seq);
    self->busy = 0;
    if (!loffs) {
        Py_DECREF(cols);
        Py_DECREF(items);
        Py_DECREF(mask);
        return NULL;
    }
    return Py_BuildValue("(NnNNNn)", mask, accepted, cols, loffs, items, n_items);
oom:
    PyErr_NoMemory();
err:
    free(ptrs);
    free(lens);
    free(slots);
    free(list_offsets.data);
    Py_XDECREF(mask);
    Py_DECREF(seq);
    self->busy = 0;
    return NULL;
}

static PyMethodDef Layout_methods[] = {
    {"decode", (PyCFunction)Layout_decode, METH_O,
     "decode(values) -> (accepted mask bytes, n_accepted, record columns, list offsets, "
     "item columns, n_items); each column (validity bitmap or None, nulls, values, offsets)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject LayoutType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "foliowatch_wiredecode.Layout",
    .tp_basicsize = sizeof(Layout),
    .tp_dealloc = (destructor)Layout_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Layout(root, columns, n_slots, max_bytes): a compiled record layout",
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
