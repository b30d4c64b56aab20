/* foliowatch_wireencode: wire records of a batch of rows written in one compiled pass.
 *
 * This file knows nothing of the wire schema. It runs a *program* that
 * foliowatch.simulator.native_encode compiles from schema.FIELDS and the simulator's
 * column spec: literal text (member names, punctuation, constants), a column's value
 * (int64, double, string), and "only where this column is not null" around the members
 * present on some rows. Its output is byte for byte what schema.encode writes for the
 * same record (the tests compare them over generated records and edge values):
 *
 *   - integers as Python's str(int);
 *   - doubles as Python's repr(float): a fast exact path for the common case (a value
 *     with at most 15-16 significant digits written without an exponent, proven to
 *     read back to the same double and to be the only such decimal at its length),
 *     Python's own PyOS_double_to_string otherwise; NaN and infinities are refused,
 *     as json.dumps(allow_nan=False) refuses them;
 *   - strings between quotes, refused if a byte would need escaping or is not ASCII
 *     (the wire's alphabets never need either).
 *
 * The pass over the rows runs without the GIL (it takes it back only for a double the
 * fast path does not cover); the bytes objects are made after it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PROGRAM_VERSION 1

enum { OP_LIT = 0, OP_INT = 1, OP_FLOAT = 2, OP_STR = 3, OP_IF = 4 };
enum { COL_INT = 'i', COL_FLOAT = 'f', COL_STR = 's' };

typedef struct {
    int op;
    int col;            /* INT, FLOAT, STR, IF */
    int skip;           /* IF: ops to skip where the column is null */
    const char *text;   /* LIT */
    Py_ssize_t len;
} Op;

typedef struct {
    int kind;
    Py_buffer values;           /* int64 / double / 16-byte string views */
    Py_buffer validity;         /* one byte per row (numpy bool), or len 0: no nulls */
    int has_validity;
    Py_ssize_t offset;          /* STR: the array's offset into its views */
    Py_ssize_t n_data;
    Py_buffer *data;            /* STR: the view's data buffers */
} Col;

/* ---- numbers ----------------------------------------------------------------------- */

static char *put_u64(char *p, uint64_t v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

static char *put_i64(char *p, int64_t v) {
    if (v < 0) {
        *p++ = '-';
        return put_u64(p, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(p, (uint64_t)v);
}

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
#define TWO53 9007199254740992.0

/* repr(x) for zeros, and for 1e-4 <= |x| < 2**53 (no exponent there): the decimal with
 * the fewest fraction digits k that reads back to x (y / 10**k == x, both exact doubles
 * and the division correctly rounded, as strtod would read "y e-k"). Taken only where
 * 10**-k is wider than x's rounding interval (so that decimal is the only one of its
 * length, the one Python's shortest repr picks); returns NULL to leave x to Python. */
static char *put_double_fast(char *p, double x) {
    double a = fabs(x);
    if (a == 0.0) {
        if (signbit(x)) *p++ = '-';
        memcpy(p, "0.0", 3);
        return p + 3;
    }
    if (!(a >= 1e-4 && a < TWO53)) return NULL;
    double ulp = nextafter(a, INFINITY) - a;
    for (int k = 0; k <= 17; k++) {
        double scale = POW10[k];
        if (1.0 / scale <= ulp) return NULL;   /* more than one decimal of this length */
        double prod = a * scale;
        if (prod >= TWO53) return NULL;
        double r = nearbyint(prod);
        /* prod is within one unit of the exact product: the candidate is one of these */
        for (int d = -1; d <= 1; d++) {
            double y = r + d;
            if (y < 0 || y >= TWO53) continue;
            if (y / scale != a) continue;
            uint64_t iy = (uint64_t)y;
            if (k && iy % 10 == 0) return NULL;   /* a shorter one existed: not expected */
            if (x < 0) *p++ = '-';
            if (k == 0) {
                p = put_u64(p, iy);
                *p++ = '.';
                *p++ = '0';
                return p;
            }
            char digits[24];
            char *e = put_u64(digits, iy);
            int nd = (int)(e - digits);
            if (nd <= k) {                       /* 0.000ddd */
                *p++ = '0';
                *p++ = '.';
                for (int z = 0; z < k - nd; z++) *p++ = '0';
                memcpy(p, digits, nd);
                return p + nd;
            }
            memcpy(p, digits, nd - k);
            p += nd - k;
            *p++ = '.';
            memcpy(p, digits + nd - k, k);
            return p + k;
        }
    }
    return NULL;
}

/* ---- the pass ---------------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
    Py_ssize_t *ends;           /* end offset of each record in buf */
    /* the first failure, reported after the pass */
    int err_kind;               /* 0 none, 1 null, 2 not finite, 3 string, 4 too large, 5 no memory, 6 python */
    Py_ssize_t err_row;
    int err_col;
    double err_value;
} Out;

/* the output buffer of the last call, kept for the next one (taken and given back under
 * the GIL): a fresh one would be page-faulted in again on every call */
static char *spare_buf;
static size_t spare_cap;
#define SPARE_MAX ((size_t)128 << 20)   /* a slice of 50,000 records is ~70 MB */

static int reserve(Out *o, size_t more) {
    if (o->len + more <= o->cap) return 1;
    size_t cap = o->cap ? o->cap : 1 << 20;
    while (cap < o->len + more) cap *= 2;
    char *b = realloc(o->buf, cap);
    if (!b) return 0;
    o->buf = b;
    o->cap = cap;
    return 1;
}

static inline int is_null(const Col *c, Py_ssize_t row) {
    return c->has_validity && !((const uint8_t *)c->validity.buf)[row];
}

static inline int string_of(const Col *c, Py_ssize_t row, const char **s, int32_t *n) {
    const uint8_t *view = (const uint8_t *)c->values.buf + 16 * (c->offset + row);
    int32_t len, buf_index, off;
    memcpy(&len, view, 4);
    if (len <= 12) {
        *s = (const char *)view + 4;
    } else {
        memcpy(&buf_index, view + 8, 4);
        memcpy(&off, view + 12, 4);
        if (buf_index < 0 || buf_index >= c->n_data ||
            (Py_ssize_t)off + len > c->data[buf_index].len)
            return 0;
        *s = (const char *)c->data[buf_index].buf + off;
    }
    *n = len;
    return 1;
}

/* whether s holds only printable ASCII other than the quote and the backslash (what a
 * JSON string holds unescaped); 8 bytes at a time */
static inline int plain_ascii(const unsigned char *s, int32_t n) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    int32_t j = 0;
    for (; j + 8 <= n; j += 8) {
        uint64_t w;
        memcpy(&w, s + j, 8);
        /* a byte < 0x20, >= 0x7f, == '"' or == '\\' sets its high bit in bad */
        uint64_t low = (w - ones * 0x20) & ~w;
        uint64_t del = ((w ^ (ones * 0x7f)) - ones) & ~(w ^ (ones * 0x7f));
        uint64_t quo = ((w ^ (ones * 0x22)) - ones) & ~(w ^ (ones * 0x22));
        uint64_t bsl = ((w ^ (ones * 0x5c)) - ones) & ~(w ^ (ones * 0x5c));
        if ((low | del | quo | bsl | w) & highs) return 0;
    }
    for (; j < n; j++) {
        unsigned char ch = s[j];
        if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') return 0;
    }
    return 1;
}

/* encodes rows [0, n) into o; the GIL is released by the caller and taken back here only
 * for a double the fast path leaves to Python */
static void run(const Op *ops, Py_ssize_t n_ops, const Col *cols, Py_ssize_t n,
                Py_ssize_t max_bytes, Out *o, PyThreadState **save) {
    for (Py_ssize_t row = 0; row < n; row++) {
        size_t start = o->len;
        for (Py_ssize_t i = 0; i < n_ops; i++) {
            const Op *op = &ops[i];
            const Col *c = op->op == OP_LIT ? NULL : &cols[op->col];
            if (op->op == OP_IF) {
                if (is_null(c, row)) i += op->skip;
                continue;
            }
            if (c && is_null(c, row)) {
                o->err_kind = 1, o->err_row = row, o->err_col = op->col;
                return;
            }
            switch (op->op) {
            case OP_LIT:
                if (!reserve(o, op->len)) goto nomem;
                memcpy(o->buf + o->len, op->text, op->len);
                o->len += op->len;
                break;
            case OP_INT:
                if (!reserve(o, 24)) goto nomem;
                o->len = put_i64(o->buf + o->len, ((const int64_t *)c->values.buf)[row]) - o->buf;
                break;
            case OP_FLOAT: {
                double x = ((const double *)c->values.buf)[row];
                if (!isfinite(x)) {
                    o->err_kind = 2, o->err_row = row, o->err_col = op->col, o->err_value = x;
                    return;
                }
                if (!reserve(o, 32)) goto nomem;
                char *e = put_double_fast(o->buf + o->len, x);
                if (e) {
                    o->len = e - o->buf;
                    break;
                }
                /* Python's own repr, under the GIL; at most 24 characters for a finite double */
                char text[40];
                size_t rl = 0;
                PyEval_RestoreThread(*save);
                char *r = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
                if (r) {
                    rl = strlen(r);
                    if (rl < sizeof text) memcpy(text, r, rl);
                    PyMem_Free(r);
                }
                *save = PyEval_SaveThread();
                if (!r || rl >= sizeof text) {
                    o->err_kind = 6, o->err_row = row;
                    return;
                }
                memcpy(o->buf + o->len, text, rl);
                o->len += rl;
                break;
            }
            case OP_STR: {
                const char *s;
                int32_t sl;
                if (!string_of(c, row, &s, &sl)) {
                    o->err_kind = 3, o->err_row = row, o->err_col = op->col;
                    return;
                }
                if (!plain_ascii((const unsigned char *)s, sl)) {
                    o->err_kind = 3, o->err_row = row, o->err_col = op->col;
                    return;
                }
                if (!reserve(o, (size_t)sl + 2)) goto nomem;
                char *p = o->buf + o->len;
                *p++ = '"';
                memcpy(p, s, sl);
                p[sl] = '"';
                o->len += (size_t)sl + 2;
                break;
            }
            }
        }
        if ((Py_ssize_t)(o->len - start) > max_bytes) {
            o->err_kind = 4, o->err_row = row, o->err_value = (double)(o->len - start);
            return;
        }
        o->ends[row] = (Py_ssize_t)o->len;
    }
    return;
nomem:
    o->err_kind = 5;
}

/* ---- Python interface -------------------------------------------------------------- */

static void release_cols(Col *cols, Py_ssize_t n_cols) {
    for (Py_ssize_t i = 0; i < n_cols; i++) {
        if (cols[i].values.obj) PyBuffer_Release(&cols[i].values);
        if (cols[i].has_validity) PyBuffer_Release(&cols[i].validity);
        for (Py_ssize_t j = 0; j < cols[i].n_data; j++)
            if (cols[i].data[j].obj) PyBuffer_Release(&cols[i].data[j]);
        free(cols[i].data);
    }
    free(cols);
}

static int need_len(Py_buffer *b, Py_ssize_t want, const char *what, Py_ssize_t col) {
    if (b->len < want) {
        PyErr_Format(PyExc_ValueError, "wireencode column %zd: %s holds %zd bytes, needs %zd",
                     col, what, b->len, want);
        return 0;
    }
    return 1;
}

static PyObject *encode(PyObject *self, PyObject *args) {
    PyObject *program, *columns;
    Py_ssize_t n, max_bytes;
    if (!PyArg_ParseTuple(args, "O!O!nn", &PyTuple_Type, &program, &PyTuple_Type, &columns,
                          &n, &max_bytes))
        return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "wireencode: rows %zd < 0", n);
    Py_ssize_t n_ops = PyTuple_GET_SIZE(program), n_cols = PyTuple_GET_SIZE(columns);
    Op *ops = calloc(n_ops ? n_ops : 1, sizeof(Op));
    Col *cols = calloc(n_cols ? n_cols : 1, sizeof(Col));
    PyObject *result = NULL;
    Out o = {0};
    if (!ops || !cols) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_cols; i++) {
        PyObject *t = PyTuple_GET_ITEM(columns, i), *values, *data, *validity;
        int kind;
        Py_ssize_t offset;
        if (!PyArg_ParseTuple(t, "COOnO", &kind, &values, &data, &offset, &validity)) goto done;
        Col *c = &cols[i];
        c->kind = kind;
        c->offset = offset;
        if (kind != COL_INT && kind != COL_FLOAT && kind != COL_STR) {
            PyErr_Format(PyExc_ValueError, "wireencode column %zd: kind %c", i, kind);
            goto done;
        }
        if (PyObject_GetBuffer(values, &c->values, PyBUF_SIMPLE) < 0) goto done;
        if (!need_len(&c->values, (kind == COL_STR ? 16 * (offset + n) : 8 * n), "values", i))
            goto done;
        if (validity != Py_None) {
            if (PyObject_GetBuffer(validity, &c->validity, PyBUF_SIMPLE) < 0) goto done;
            c->has_validity = 1;
            if (!need_len(&c->validity, n, "validity", i)) goto done;
        }
        if (kind == COL_STR) {
            if (offset < 0 || !PyTuple_Check(data)) {
                PyErr_Format(PyExc_ValueError, "wireencode column %zd: string column needs "
                             "an offset >= 0 and a tuple of data buffers", i);
                goto done;
            }
            c->data = calloc(PyTuple_GET_SIZE(data) + 1, sizeof(Py_buffer));
            if (!c->data) {
                PyErr_NoMemory();
                goto done;
            }
            for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(data); j++) {
                if (PyObject_GetBuffer(PyTuple_GET_ITEM(data, j), &c->data[j], PyBUF_SIMPLE) < 0)
                    goto done;
                c->n_data = j + 1;
            }
        }
    }
    for (Py_ssize_t i = 0; i < n_ops; i++) {
        PyObject *t = PyTuple_GET_ITEM(program, i);
        Op *op = &ops[i];
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 2) {
            PyErr_Format(PyExc_ValueError, "wireencode op %zd: expected a tuple (op, arg...)", i);
            goto done;
        }
        op->op = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
        if (op->op == OP_LIT) {
            char *s;
            if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(t, 1), &s, &op->len) < 0) goto done;
            op->text = s;   /* the program tuple keeps the bytes alive */
            continue;
        }
        op->col = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 1));
        if (PyErr_Occurred()) goto done;
        if (op->col < 0 || op->col >= n_cols) {
            PyErr_Format(PyExc_ValueError, "wireencode op %zd: column %d of %zd", i, op->col, n_cols);
            goto done;
        }
        int want = op->op == OP_INT ? COL_INT : op->op == OP_FLOAT ? COL_FLOAT
                 : op->op == OP_STR ? COL_STR : 0;
        if (op->op == OP_IF) {
            if (PyTuple_GET_SIZE(t) != 3) {
                PyErr_Format(PyExc_ValueError, "wireencode op %zd: IF takes (op, col, skip)", i);
                goto done;
            }
            op->skip = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 2));
            if (PyErr_Occurred()) goto done;
            if (op->skip < 0 || i + op->skip >= n_ops) {
                PyErr_Format(PyExc_ValueError, "wireencode op %zd: skip %d past the end", i, op->skip);
                goto done;
            }
        } else if (!want || cols[op->col].kind != want) {
            PyErr_Format(PyExc_ValueError, "wireencode op %zd: op %d on a column of kind %c",
                         i, op->op, cols[op->col].kind);
            goto done;
        }
    }
    o.buf = spare_buf, o.cap = spare_cap;
    spare_buf = NULL, spare_cap = 0;
    o.ends = malloc(sizeof(Py_ssize_t) * (n ? n : 1));
    if (!o.ends) {
        PyErr_NoMemory();
        goto done;
    }
    PyThreadState *save = PyEval_SaveThread();
    run(ops, n_ops, cols, n, max_bytes, &o, &save);
    PyEval_RestoreThread(save);
    switch (o.err_kind) {
    case 0: break;
    case 1: PyErr_Format(PyExc_ValueError, "row %zd: column %d is null", o.err_row, o.err_col); goto done;
    case 2: {
        PyObject *v = PyFloat_FromDouble(o.err_value);
        PyErr_Format(PyExc_ValueError, "row %zd: column %d is %R, not a finite number",
                     o.err_row, o.err_col, v);
        Py_XDECREF(v);
        goto done;
    }
    case 3: PyErr_Format(PyExc_ValueError, "row %zd: column %d holds a string that would need "
                         "escaping or is not ASCII", o.err_row, o.err_col); goto done;
    case 4: PyErr_Format(PyExc_OverflowError, "row %zd: %.0f bytes encoded, at most %zd",
                         o.err_row, o.err_value, max_bytes); goto done;
    case 5: PyErr_NoMemory(); goto done;
    default:   /* Python's error is set, unless its repr was impossibly long */
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "row %zd: a double's repr did not fit", o.err_row);
        goto done;
    }
    result = PyList_New(n);
    if (!result) goto done;
    Py_ssize_t prev = 0;
    for (Py_ssize_t row = 0; row < n; row++) {
        PyObject *b = PyBytes_FromStringAndSize(o.buf + prev, o.ends[row] - prev);
        if (!b) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, row, b);
        prev = o.ends[row];
    }
done:
    if (o.buf && o.cap <= SPARE_MAX && !spare_buf) {
        spare_buf = o.buf, spare_cap = o.cap;
    } else {
        free(o.buf);
    }
    free(o.ends);
    free(ops);
    if (cols) release_cols(cols, n_cols);
    return result;
}

static PyObject *format_double(PyObject *self, PyObject *arg) {
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    char buf[40];
    char *e = isfinite(x) ? put_double_fast(buf, x) : NULL;
    if (!e) Py_RETURN_NONE;
    return PyUnicode_FromStringAndSize(buf, e - buf);
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(program, columns, n_rows, max_bytes) -> list of bytes, one record per row"},
    {"format_double", format_double, METH_O,
     "format_double(x) -> repr(x) from the fast path, or None where it leaves x to Python"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "foliowatch_wireencode",
                                       "Wire records of a batch of rows in one compiled pass "
                                       "(see foliowatch.simulator.native_encode).",
                                       -1, methods};

PyMODINIT_FUNC PyInit_foliowatch_wireencode(void) {
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "PROGRAM_VERSION", PROGRAM_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "OP_LIT", OP_LIT) < 0 ||
        PyModule_AddIntConstant(m, "OP_INT", OP_INT) < 0 ||
        PyModule_AddIntConstant(m, "OP_FLOAT", OP_FLOAT) < 0 ||
        PyModule_AddIntConstant(m, "OP_STR", OP_STR) < 0 ||
        PyModule_AddIntConstant(m, "OP_IF", OP_IF) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
