/* foliowatch_parquetwrite: flat Arrow record batches (the Arrow C stream interface, as
 * polars exports a DataFrame) written as one Parquet file, in the simplest form the
 * format has: one row group, one data page (v1) per column, every column OPTIONAL,
 * PLAIN values, definition levels in the RLE/bit-packed hybrid, statistics (null count,
 * min_value/max_value) with the type-defined column order. Each page body goes through
 * a compress callable (the caller's zstd compressor) and is written with codec ZSTD.
 *
 * Column types: int64 ("l"), float64 ("g"), utf8 ("u", "U", and the string view "vu"),
 * timestamp in microseconds ("tsu:" without a zone, "tsu:UTC"). Anything else, a null
 * row at the top level, no rows, or a page beyond the format's 2 GiB: write() returns
 * None and the caller writes the file another way. It knows nothing of foliowatch's
 * dataset; pipeline/native_parquet.py says when it is used.
 *
 * Formats written (Apache Parquet format, parquet.thrift): FileMetaData, SchemaElement,
 * RowGroup, ColumnChunk, ColumnMetaData, Statistics, PageHeader, DataPageHeader,
 * LogicalType, ColumnOrder, in Thrift's compact protocol. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define FORMAT_VERSION 1

#include "arrow_c_abi.h"

/* ---- Parquet's enumerations (parquet.thrift) ---------------------------------------- */
enum { PQ_INT64 = 2, PQ_DOUBLE = 5, PQ_BYTE_ARRAY = 6 };
enum { PQ_OPTIONAL = 1 };
enum { PQ_PLAIN = 0, PQ_RLE = 3 };
enum { PQ_ZSTD = 6 };
enum { PQ_DATA_PAGE = 0 };
enum { CT_UTF8 = 0, CT_TIMESTAMP_MICROS = 10 };

/* Thrift compact protocol type ids */
enum { T_TRUE = 1, T_FALSE = 2, T_I16 = 4, T_I32 = 5, T_I64 = 6, T_BINARY = 8, T_LIST = 9,
       T_STRUCT = 12 };

/* ---- a growable byte buffer (PyMem_Raw*: page bodies are built without the GIL) ------ */
typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} Buf;

static int buf_reserve(Buf *b, size_t more) {
    if (b->failed)
        return -1;
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) {
        if (cap > ((size_t)1 << 40)) {
            b->failed = 1;
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_RawRealloc(b->p, cap);
    if (p == NULL) {
        b->failed = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_put(Buf *b, const void *src, size_t n) {
    if (n == 0 || buf_reserve(b, n) < 0)
        return;
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void buf_byte(Buf *b, uint8_t v) { buf_put(b, &v, 1); }

static void buf_u32le(Buf *b, uint32_t v) {
    uint8_t s[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    buf_put(b, s, 4);
}

static void buf_u64le(Buf *b, uint64_t v) {
    uint8_t s[8];
    for (int i = 0; i < 8; i++)
        s[i] = (uint8_t)(v >> (8 * i));
    buf_put(b, s, 8);
}

static void buf_varint(Buf *b, uint64_t v) {
    uint8_t s[10];
    int n = 0;
    while (v >= 0x80) {
        s[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    s[n++] = (uint8_t)v;
    buf_put(b, s, (size_t)n);
}

/* ---- Thrift compact protocol writer ------------------------------------------------- */
#define TW_DEPTH 8
typedef struct {
    Buf *b;
    int16_t last[TW_DEPTH];  /* the last field id written at each struct depth */
    int depth;
} TW;

static uint64_t zigzag64(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }

static void tw_field(TW *t, int type, int16_t id) {
    int16_t delta = (int16_t)(id - t->last[t->depth]);
    if (delta > 0 && delta <= 15) {
        buf_byte(t->b, (uint8_t)((delta << 4) | type));
    } else {
        buf_byte(t->b, (uint8_t)type);
        buf_varint(t->b, zigzag64(id));
    }
    t->last[t->depth] = id;
}

static void tw_i16(TW *t, int16_t id, int16_t v) {
    tw_field(t, T_I16, id);
    buf_varint(t->b, zigzag64(v));
}

static void tw_i32(TW *t, int16_t id, int32_t v) {
    tw_field(t, T_I32, id);
    buf_varint(t->b, zigzag64(v));
}

static void tw_i64(TW *t, int16_t id, int64_t v) {
    tw_field(t, T_I64, id);
    buf_varint(t->b, zigzag64(v));
}

static void tw_bool(TW *t, int16_t id, int v) { tw_field(t, v ? T_TRUE : T_FALSE, id); }

static void tw_binary(TW *t, int16_t id, const void *p, size_t n) {
    tw_field(t, T_BINARY, id);
    buf_varint(t->b, n);
    buf_put(t->b, p, n);
}

static void tw_push(TW *t) {
    if (t->depth + 1 >= TW_DEPTH) {   /* never: the structures below are shallower */
        t->b->failed = 1;
        return;
    }
    t->last[++t->depth] = 0;
}

/* a struct-typed field of the current struct */
static void tw_struct(TW *t, int16_t id) {
    tw_field(t, T_STRUCT, id);
    tw_push(t);
}

/* a struct that is a list element (no field header) */
static void tw_elem(TW *t) { tw_push(t); }

static void tw_end(TW *t) {
    buf_byte(t->b, 0);  /* stop */
    if (t->depth > 0)
        t->depth--;
}

static void tw_list(TW *t, int16_t id, int elem_type, size_t n) {
    tw_field(t, T_LIST, id);
    if (n < 15) {
        buf_byte(t->b, (uint8_t)((n << 4) | (size_t)elem_type));
    } else {
        buf_byte(t->b, (uint8_t)(0xF0 | elem_type));
        buf_varint(t->b, n);
    }
}

/* ---- columns ------------------------------------------------------------------------ */
enum Kind { K_INT64, K_DOUBLE, K_UTF8, K_LARGE_UTF8, K_UTF8_VIEW, K_TS_UTC, K_TS_LOCAL };

typedef struct {
    enum Kind kind;
    const char *name;
    /* written: */
    int64_t nulls;
    int has_minmax;
    union { int64_t i; double d; } min, max;
    const uint8_t *smin, *smax;   /* strings: into the Arrow buffers */
    int64_t sminlen, smaxlen;
    int64_t page_offset, uncompressed, compressed;   /* the chunk, headers included */
} Col;

static int kind_of(const char *format, enum Kind *out) {
    if (strcmp(format, "l") == 0) *out = K_INT64;
    else if (strcmp(format, "g") == 0) *out = K_DOUBLE;
    else if (strcmp(format, "u") == 0) *out = K_UTF8;
    else if (strcmp(format, "U") == 0) *out = K_LARGE_UTF8;
    else if (strcmp(format, "vu") == 0) *out = K_UTF8_VIEW;
    else if (strcmp(format, "tsu:UTC") == 0) *out = K_TS_UTC;
    else if (strcmp(format, "tsu:") == 0) *out = K_TS_LOCAL;
    else return -1;
    return 0;
}

/* the Parquet physical type a column kind is written as */
static int physical_type(enum Kind k) {
    if (k == K_DOUBLE)
        return PQ_DOUBLE;
    if (k == K_INT64 || k == K_TS_UTC || k == K_TS_LOCAL)
        return PQ_INT64;
    return PQ_BYTE_ARRAY;
}

static int is_valid(const struct ArrowArray *a, int64_t i) {
    const uint8_t *bits = (const uint8_t *)a->buffers[0];
    if (bits == NULL || a->null_count == 0)
        return 1;
    int64_t j = a->offset + i;
    return (bits[j >> 3] >> (j & 7)) & 1;
}

/* the string at logical index i of a utf8 / large utf8 / utf8 view array */
static const uint8_t *str_at(const struct ArrowArray *a, enum Kind k, int64_t i, int64_t *len) {
    int64_t j = a->offset + i;
    if (k == K_UTF8) {
        const int32_t *off = (const int32_t *)a->buffers[1];
        *len = off[j + 1] - off[j];
        return (const uint8_t *)a->buffers[2] + off[j];
    }
    if (k == K_LARGE_UTF8) {
        const int64_t *off = (const int64_t *)a->buffers[1];
        *len = off[j + 1] - off[j];
        return (const uint8_t *)a->buffers[2] + off[j];
    }
    /* view: int32 length, then 12 bytes inline, or a 4-byte prefix, int32 buffer index,
     * int32 offset into that data buffer (buffers[2 + index]) */
    const uint8_t *v = (const uint8_t *)a->buffers[1] + 16 * j;
    int32_t n, idx, off;
    memcpy(&n, v, 4);
    *len = n;
    if (n <= 12)
        return v + 4;
    memcpy(&idx, v + 8, 4);
    memcpy(&off, v + 12, 4);
    return (const uint8_t *)a->buffers[2 + idx] + off;
}

static int bytes_less(const uint8_t *a, int64_t na, const uint8_t *b, int64_t nb) {
    int64_t n = na < nb ? na : nb;
    int c = n ? memcmp(a, b, (size_t)n) : 0;
    return c < 0 || (c == 0 && na < nb);
}

typedef struct {
    struct ArrowArray *batches;   /* top-level struct arrays */
    int64_t n_batches;
} Batches;

/* The page body of column c: 4-byte length + definition levels, then PLAIN values;
 * fills the column's statistics. */
static void page_body(Buf *out, const Batches *bs, int c, Col *col, int64_t rows) {
    int64_t nulls = 0;
    for (int64_t b = 0; b < bs->n_batches; b++) {
        const struct ArrowArray *s = &bs->batches[b];
        const struct ArrowArray *a = s->children[c];
        if (a->null_count != 0 && a->buffers[0] != NULL)
            for (int64_t i = 0; i < s->length; i++)
                nulls += !is_valid(a, s->offset + i);
    }
    col->nulls = nulls;
    /* definition levels (bit width 1): one RLE run of 1s, or one bit-packed run */
    size_t at = out->len;
    buf_u32le(out, 0);
    if (nulls == 0) {
        buf_varint(out, (uint64_t)rows << 1);
        buf_byte(out, 1);
    } else {
        uint64_t groups = ((uint64_t)rows + 7) / 8;
        buf_varint(out, (groups << 1) | 1);
        if (buf_reserve(out, groups) < 0)
            return;
        uint8_t *bits = (uint8_t *)out->p + out->len;
        memset(bits, 0, groups);
        int64_t r = 0;
        for (int64_t b = 0; b < bs->n_batches; b++) {
            const struct ArrowArray *s = &bs->batches[b];
            const struct ArrowArray *a = s->children[c];
            for (int64_t i = 0; i < s->length; i++, r++)
                if (is_valid(a, s->offset + i))
                    bits[r >> 3] |= (uint8_t)(1u << (r & 7));
        }
        out->len += groups;
    }
    if (out->failed)
        return;
    uint32_t levels = (uint32_t)(out->len - at - 4);
    memcpy(out->p + at, (uint8_t[4]){(uint8_t)levels, (uint8_t)(levels >> 8),
                                     (uint8_t)(levels >> 16), (uint8_t)(levels >> 24)}, 4);
    /* values */
    col->has_minmax = 0;
    for (int64_t b = 0; b < bs->n_batches; b++) {
        const struct ArrowArray *s = &bs->batches[b];
        const struct ArrowArray *a = s->children[c];
        for (int64_t i = 0; i < s->length; i++) {
            int64_t k = s->offset + i;
            if (!is_valid(a, k))
                continue;
            switch (col->kind) {
            case K_INT64: case K_TS_UTC: case K_TS_LOCAL: {
                int64_t v = ((const int64_t *)a->buffers[1])[a->offset + k];
                buf_u64le(out, (uint64_t)v);
                if (!col->has_minmax) {
                    col->min.i = col->max.i = v;
                    col->has_minmax = 1;
                } else if (v < col->min.i) {
                    col->min.i = v;
                } else if (v > col->max.i) {
                    col->max.i = v;
                }
                break;
            }
            case K_DOUBLE: {
                double v = ((const double *)a->buffers[1])[a->offset + k];
                uint64_t u;
                memcpy(&u, &v, 8);
                buf_u64le(out, u);
                if (v != v)     /* NaN: never a bound */
                    break;
                if (!col->has_minmax) {
                    col->min.d = col->max.d = v;
                    col->has_minmax = 1;
                } else if (v < col->min.d) {
                    col->min.d = v;
                } else if (v > col->max.d) {
                    col->max.d = v;
                }
                break;
            }
            default: {
                int64_t n;
                const uint8_t *p = str_at(a, col->kind, k, &n);
                buf_u32le(out, (uint32_t)n);
                buf_put(out, p, (size_t)n);
                if (!col->has_minmax) {
                    col->smin = col->smax = p;
                    col->sminlen = col->smaxlen = n;
                    col->has_minmax = 1;
                } else if (bytes_less(p, n, col->smin, col->sminlen)) {
                    col->smin = p;
                    col->sminlen = n;
                } else if (bytes_less(col->smax, col->smaxlen, p, n)) {
                    col->smax = p;
                    col->smaxlen = n;
                }
            }
            }
        }
    }
}

static void write_statistics(TW *t, int16_t id, const Col *col) {
    tw_struct(t, id);
    tw_i64(t, 3, col->nulls);                               /* null_count */
    if (col->has_minmax) {
        uint8_t lo[8], hi[8];
        if (physical_type(col->kind) == PQ_BYTE_ARRAY) {
            tw_binary(t, 5, col->smax, (size_t)col->smaxlen);  /* max_value */
            tw_binary(t, 6, col->smin, (size_t)col->sminlen);  /* min_value */
        } else {
            uint64_t umin, umax;
            if (col->kind == K_DOUBLE) {
                /* the format's rule for zeros: a min of zero is -0.0, a max of zero +0.0 */
                double mn = col->min.d == 0.0 ? -0.0 : col->min.d;
                double mx = col->max.d == 0.0 ? 0.0 : col->max.d;
                memcpy(&umin, &mn, 8);
                memcpy(&umax, &mx, 8);
            } else {
                umin = (uint64_t)col->min.i;
                umax = (uint64_t)col->max.i;
            }
            for (int i = 0; i < 8; i++) {
                lo[i] = (uint8_t)(umin >> (8 * i));
                hi[i] = (uint8_t)(umax >> (8 * i));
            }
            tw_binary(t, 5, hi, 8);
            tw_binary(t, 6, lo, 8);
        }
    }
    tw_end(t);
}

static void write_schema_element(TW *t, const Col *col) {
    int type = physical_type(col->kind);
    tw_elem(t);
    tw_i32(t, 1, type);
    tw_i32(t, 3, PQ_OPTIONAL);
    tw_binary(t, 4, col->name, strlen(col->name));
    if (type == PQ_BYTE_ARRAY) {
        tw_i32(t, 6, CT_UTF8);
        tw_struct(t, 10);       /* logicalType */
        tw_struct(t, 1);        /* STRING */
        tw_end(t);
        tw_end(t);
    } else if (col->kind == K_TS_UTC || col->kind == K_TS_LOCAL) {
        if (col->kind == K_TS_UTC)
            tw_i32(t, 6, CT_TIMESTAMP_MICROS);   /* the converted type means UTC */
        tw_struct(t, 10);       /* logicalType */
        tw_struct(t, 8);        /* TIMESTAMP */
        tw_bool(t, 1, col->kind == K_TS_UTC);    /* isAdjustedToUTC */
        tw_struct(t, 2);        /* unit */
        tw_struct(t, 2);        /* MICROS */
        tw_end(t);
        tw_end(t);
        tw_end(t);
        tw_end(t);
    }
    tw_end(t);
}

/* ---- write() ------------------------------------------------------------------------ */
static void release_all(struct ArrowSchema *schema, Batches *bs) {
    for (int64_t b = 0; b < bs->n_batches; b++)
        if (bs->batches[b].release)
            bs->batches[b].release(&bs->batches[b]);
    PyMem_RawFree(bs->batches);
    bs->batches = NULL;
    if (schema->release)
        schema->release(schema);
}

static PyObject *stream_error(struct ArrowArrayStream *st, const char *what) {
    const char *msg = st->get_last_error ? st->get_last_error(st) : NULL;
    PyErr_Format(PyExc_RuntimeError, "Arrow stream: %s failed (%s)", what,
                 msg ? msg : "no message");
    return NULL;
}

static PyObject *pw_write(PyObject *self, PyObject *args) {
    PyObject *capsule, *compress;
    const char *created_by;
    if (!PyArg_ParseTuple(args, "OOs", &capsule, &compress, &created_by))
        return NULL;
    if (!PyCapsule_IsValid(capsule, "arrow_array_stream")) {
        PyErr_SetString(PyExc_TypeError, "write: expected an arrow_array_stream capsule "
                                         "(DataFrame.__arrow_c_stream__())");
        return NULL;
    }
    if (!PyCallable_Check(compress)) {
        PyErr_SetString(PyExc_TypeError, "write: compress must be callable");
        return NULL;
    }
    struct ArrowArrayStream *src = PyCapsule_GetPointer(capsule, "arrow_array_stream");
    if (src == NULL || src->release == NULL) {
        PyErr_SetString(PyExc_ValueError, "write: the Arrow stream was already consumed");
        return NULL;
    }
    /* take the stream out of the capsule: released here, not by the capsule */
    struct ArrowArrayStream st = *src;
    src->release = NULL;

    struct ArrowSchema schema = {0};
    Batches bs = {NULL, 0};
    Col *cols = NULL;
    Buf out = {0}, page = {0}, head = {0};
    PyObject *result = NULL;
    int64_t rows = 0, ncols = 0;

    if (st.get_schema(&st, &schema) != 0) {
        stream_error(&st, "get_schema");
        goto done;
    }
    int64_t cap = 0;
    for (;;) {
        struct ArrowArray a;
        memset(&a, 0, sizeof a);
        if (st.get_next(&st, &a) != 0) {
            stream_error(&st, "get_next");
            goto done;
        }
        if (a.release == NULL)
            break;
        if (bs.n_batches == cap) {
            cap = cap ? cap * 2 : 4;
            struct ArrowArray *p = PyMem_RawRealloc(bs.batches, (size_t)cap * sizeof *p);
            if (p == NULL) {
                a.release(&a);
                PyErr_NoMemory();
                goto done;
            }
            bs.batches = p;
        }
        bs.batches[bs.n_batches++] = a;
        rows += a.length;
    }
    /* what this writer does not write: the caller's other writer does */
    if (strcmp(schema.format, "+s") != 0 || rows == 0 || rows > INT32_MAX)
        goto unsupported;
    ncols = schema.n_children;
    cols = PyMem_RawCalloc(ncols ? (size_t)ncols : 1, sizeof *cols);
    if (cols == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (int64_t c = 0; c < ncols; c++) {
        if (kind_of(schema.children[c]->format, &cols[c].kind) < 0 ||
            schema.children[c]->name == NULL)
            goto unsupported;
        cols[c].name = schema.children[c]->name;
    }
    for (int64_t b = 0; b < bs.n_batches; b++)
        if (bs.batches[b].null_count != 0 || bs.batches[b].n_children != ncols)
            goto unsupported;

    buf_put(&out, "PAR1", 4);
    for (int64_t c = 0; c < ncols; c++) {
        page.len = 0;
        Py_BEGIN_ALLOW_THREADS   /* Arrow buffers and our own: no Python object */
        page_body(&page, &bs, (int)c, &cols[c], rows);
        Py_END_ALLOW_THREADS
        if (page.failed) {
            PyErr_NoMemory();
            goto done;
        }
        if (page.len > INT32_MAX)
            goto unsupported;
        PyObject *view = PyMemoryView_FromMemory(page.p, (Py_ssize_t)page.len, PyBUF_READ);
        if (view == NULL)
            goto done;
        PyObject *z = PyObject_CallOneArg(compress, view);
        Py_DECREF(view);
        if (z == NULL)
            goto done;
        if (!PyBytes_Check(z)) {
            Py_DECREF(z);
            PyErr_SetString(PyExc_TypeError, "write: compress must return bytes");
            goto done;
        }
        Py_ssize_t zlen = PyBytes_GET_SIZE(z);
        if (zlen > INT32_MAX) {
            Py_DECREF(z);
            goto unsupported;
        }
        head.len = 0;
        TW t = {&head, {0}, 0};
        tw_i32(&t, 1, PQ_DATA_PAGE);
        tw_i32(&t, 2, (int32_t)page.len);
        tw_i32(&t, 3, (int32_t)zlen);
        tw_struct(&t, 5);                 /* data_page_header */
        tw_i32(&t, 1, (int32_t)rows);     /* num_values: levels, nulls included */
        tw_i32(&t, 2, PQ_PLAIN);
        tw_i32(&t, 3, PQ_RLE);
        tw_i32(&t, 4, PQ_RLE);
        tw_end(&t);
        tw_end(&t);
        cols[c].page_offset = (int64_t)out.len;
        cols[c].uncompressed = (int64_t)(head.len + page.len);
        cols[c].compressed = (int64_t)(head.len + (size_t)zlen);
        buf_put(&out, head.p, head.len);
        buf_put(&out, PyBytes_AS_STRING(z), (size_t)zlen);
        Py_DECREF(z);
    }

    /* FileMetaData */
    size_t meta_at = out.len;
    {
        TW t = {&out, {0}, 0};
        tw_i32(&t, 1, 1);                                    /* version */
        tw_list(&t, 2, T_STRUCT, (size_t)ncols + 1);         /* schema */
        tw_elem(&t);
        tw_binary(&t, 4, "schema", 6);
        tw_i32(&t, 5, (int32_t)ncols);                       /* num_children */
        tw_end(&t);
        for (int64_t c = 0; c < ncols; c++)
            write_schema_element(&t, &cols[c]);
        tw_i64(&t, 3, rows);                                 /* num_rows */
        tw_list(&t, 4, T_STRUCT, 1);                         /* row_groups */
        tw_elem(&t);
        int64_t total_u = 0, total_c = 0;
        tw_list(&t, 1, T_STRUCT, (size_t)ncols);             /* columns */
        for (int64_t c = 0; c < ncols; c++) {
            const Col *col = &cols[c];
            total_u += col->uncompressed;
            total_c += col->compressed;
            tw_elem(&t);                                     /* ColumnChunk */
            tw_i64(&t, 2, col->page_offset);                 /* file_offset */
            tw_struct(&t, 3);                                /* meta_data */
            tw_i32(&t, 1, physical_type(col->kind));
            tw_list(&t, 2, T_I32, 2);                        /* encodings */
            buf_varint(&out, zigzag64(PQ_PLAIN));
            buf_varint(&out, zigzag64(PQ_RLE));
            tw_list(&t, 3, T_BINARY, 1);                     /* path_in_schema */
            buf_varint(&out, strlen(col->name));
            buf_put(&out, col->name, strlen(col->name));
            tw_i32(&t, 4, PQ_ZSTD);                          /* codec */
            tw_i64(&t, 5, rows);                             /* num_values */
            tw_i64(&t, 6, col->uncompressed);                /* total_uncompressed_size */
            tw_i64(&t, 7, col->compressed);                  /* total_compressed_size */
            tw_i64(&t, 9, col->page_offset);                 /* data_page_offset */
            write_statistics(&t, 12, col);
            tw_end(&t);                                      /* meta_data */
            tw_end(&t);                                      /* ColumnChunk */
        }
        tw_i64(&t, 2, total_u);                              /* total_byte_size */
        tw_i64(&t, 3, rows);                                 /* num_rows */
        tw_i64(&t, 5, ncols ? cols[0].page_offset : 4);      /* file_offset */
        tw_i64(&t, 6, total_c);                              /* total_compressed_size */
        tw_i16(&t, 7, 0);                                    /* ordinal */
        tw_end(&t);                                          /* RowGroup */
        tw_binary(&t, 6, created_by, strlen(created_by));    /* created_by */
        tw_list(&t, 7, T_STRUCT, (size_t)ncols);             /* column_orders */
        for (int64_t c = 0; c < ncols; c++) {
            tw_elem(&t);
            tw_struct(&t, 1);                                /* TYPE_ORDER */
            tw_end(&t);
            tw_end(&t);
        }
        tw_end(&t);                                          /* FileMetaData */
    }
    buf_u32le(&out, (uint32_t)(out.len - meta_at));
    buf_put(&out, "PAR1", 4);
    if (out.failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyBytes_FromStringAndSize(out.p, (Py_ssize_t)out.len);
    goto done;

unsupported:
    result = Py_NewRef(Py_None);
done:
    release_all(&schema, &bs);
    if (st.release)
        st.release(&st);
    PyMem_RawFree(cols);
    PyMem_RawFree(out.p);
    PyMem_RawFree(page.p);
    PyMem_RawFree(head.p);
    return result;
}

static PyMethodDef methods[] = {
    {"write", pw_write, METH_VARARGS,
     "write(arrow_stream_capsule, compress, created_by) -> bytes | None\n\n"
     "The stream's record batches as one Parquet file (pages through compress, codec "
     "ZSTD), or None when a column type (or the shape) is not one this writer writes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "foliowatch_parquetwrite",
    "Flat Arrow record batches as one Parquet file (foliowatch pipeline).", -1, methods,
};

PyMODINIT_FUNC PyInit_foliowatch_parquetwrite(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "FORMAT_VERSION", FORMAT_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
