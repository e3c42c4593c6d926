/*
 * gob_metrics.write._wire: one pass over a serialized prometheus.WriteRequest.
 *
 * The ingest hot path. Python code that touches every series of every request costs
 * microseconds per series; this scanner reads the protobuf wire format directly (the
 * encoding rules of https://protobuf.dev/programming-guides/encoding/) and hands back, per
 * request, flat arrays the caller turns into numpy views:
 *
 *   scan(data) -> (keys, info, timestamps, values, metadata)
 *
 *   keys        list[bytes], one per TimeSeries: the series' label entries exactly as
 *               sent (each with its field tag and length prefix, so the key is itself a
 *               valid encoding of the label list and two different label lists never give
 *               the same key). The write path's series cache is keyed by these bytes.
 *   info        bytes, INFO_FIELDS little-endian uint32 per TimeSeries: float samples,
 *               native histograms, then the label shape the per-tenant limits check:
 *               labels with a non-empty value, the longest such label name and the
 *               longest such value, in bytes (LABELS_UNREADABLE when a Label entry is not
 *               a valid message; the caller decodes such a series the slow way and
 *               reports it).
 *   timestamps  bytes, int64 per float sample, in request order.
 *   values      bytes, float64 per float sample (bit patterns kept: NaN payloads, StaleNaN).
 *   metadata    list[bytes], the payload of every MetricMetadata entry.
 *
 * Semantics follow protobuf parsers (the upb backend this replaces): fields may come in
 * any order and repeat (the last scalar wins), unknown fields and known fields sent with
 * another wire type are skipped, groups are skipped with a nesting limit. A structurally
 * broken message (truncated field, bad varint, field number 0, wire type 6 or 7, a
 * broken Sample or MetricMetadata) raises ValueError naming the byte offset; the caller
 * turns it into a 400.
 *
 * Memory: the outputs grow geometrically, and every series, sample and metadata entry
 * counts against max_entries (write.max_entries_per_request): a hostile body of tiny
 * entries, which would cost up to ~16 bytes of output per byte of input, stops at the
 * limit with LimitExceeded (a 413) instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "_wire.c reads fixed64 doubles in place: it needs a little-endian target"
#endif

#define INFO_FIELDS 5
#define LABELS_UNREADABLE 0xFFFFFFFFu
#define MAX_GROUP_DEPTH 100

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

typedef struct {
    const uint8_t *base; /* start of the whole request, for error offsets */
    const char *error;   /* set on the first error */
    Py_ssize_t error_at;
    long long budget;    /* series, samples and metadata entries still allowed */
} Ctx;

static PyObject *LimitExceeded; /* _wire.LimitExceeded */

/* Count one more output entry; 0 when over the budget (the caller fails with rc -3). */
static inline int spend(Ctx *c) {
    return --c->budget >= 0;
}

typedef struct {
    char *data;
    Py_ssize_t len, cap; /* in bytes */
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->data, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static void fail(Ctx *c, const uint8_t *at, const char *what) {
    if (c->error == NULL) {
        c->error = what;
        c->error_at = at - c->base;
    }
}

/* Read a varint at *p (< end). Returns 0 and advances *p, or -1 (truncated / too long). */
static inline int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    const uint8_t *q = *p;
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (q >= end)
            return -1;
        uint8_t byte = *q++;
        v |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) {
            *p = q;
            *out = v;
            return 0;
        }
    }
    return -1; /* more than 10 bytes */
}

/* Read a tag; fills field number and wire type. */
static inline int read_tag(Ctx *c, const uint8_t **p, const uint8_t *end, uint32_t *field,
                           int *wt) {
    const uint8_t *at = *p;
    uint64_t tag;
    if (read_varint(p, end, &tag) < 0) {
        fail(c, at, "truncated or overlong field tag");
        return -1;
    }
    if (tag > 0xFFFFFFFFu || (tag >> 3) == 0) {
        fail(c, at, "invalid field number");
        return -1;
    }
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    return 0;
}

/* Read a length prefix and return the payload span. */
static inline int read_len(Ctx *c, const uint8_t **p, const uint8_t *end,
                           const uint8_t **start, const uint8_t **stop) {
    const uint8_t *at = *p;
    uint64_t n;
    if (read_varint(p, end, &n) < 0) {
        fail(c, at, "truncated length prefix");
        return -1;
    }
    if (n > (uint64_t)(end - *p)) {
        fail(c, at, "length-delimited field runs past the end of its message");
        return -1;
    }
    *start = *p;
    *stop = *p + n;
    *p = *stop;
    return 0;
}

/* Skip the value of a field of wire type wt (its tag already read). */
static int skip_value(Ctx *c, const uint8_t **p, const uint8_t *end, uint32_t field, int wt,
                      int depth) {
    const uint8_t *at = *p, *s, *e;
    uint64_t ignored;
    switch (wt) {
    case WT_VARINT:
        if (read_varint(p, end, &ignored) < 0) {
            fail(c, at, "truncated varint");
            return -1;
        }
        return 0;
    case WT_I64:
        if (end - *p < 8) {
            fail(c, at, "truncated 64-bit field");
            return -1;
        }
        *p += 8;
        return 0;
    case WT_I32:
        if (end - *p < 4) {
            fail(c, at, "truncated 32-bit field");
            return -1;
        }
        *p += 4;
        return 0;
    case WT_LEN:
        return read_len(c, p, end, &s, &e);
    case WT_SGROUP:
        if (depth >= MAX_GROUP_DEPTH) {
            fail(c, at, "groups nested too deeply");
            return -1;
        }
        for (;;) {
            uint32_t f;
            int w;
            if (*p >= end) {
                fail(c, at, "unterminated group");
                return -1;
            }
            if (read_tag(c, p, end, &f, &w) < 0)
                return -1;
            if (w == WT_EGROUP) {
                if (f != field) {
                    fail(c, at, "mismatched end of group");
                    return -1;
                }
                return 0;
            }
            if (skip_value(c, p, end, f, w, depth + 1) < 0)
                return -1;
        }
    default:
        fail(c, at, wt == WT_EGROUP ? "unexpected end of group" : "invalid wire type");
        return -1;
    }
}

/* Parse one Sample payload into (value, timestamp). */
static int parse_sample(Ctx *c, const uint8_t *p, const uint8_t *end, double *value,
                        int64_t *ts) {
    uint64_t bits = 0, t = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        if (read_tag(c, &p, end, &f, &wt) < 0)
            return -1;
        if (f == 1 && wt == WT_I64) {
            if (end - p < 8) {
                fail(c, p, "truncated sample value");
                return -1;
            }
            memcpy(&bits, p, 8); /* little-endian host, as Python's struct '<d' */
            p += 8;
        } else if (f == 2 && wt == WT_VARINT) {
            const uint8_t *at = p;
            if (read_varint(&p, end, &t) < 0) {
                fail(c, at, "truncated sample timestamp");
                return -1;
            }
        } else if (skip_value(c, &p, end, f, wt, 0) < 0) {
            return -1;
        }
    }
    memcpy(value, &bits, 8);
    *ts = (int64_t)t;
    return 0;
}

/* Shape of one Label payload: name and value lengths (last occurrence wins). Returns -1
 * when the payload is not a valid message (no exception: the series is flagged). */
static int label_shape(const uint8_t *p, const uint8_t *end, Py_ssize_t *name_len,
                       Py_ssize_t *value_len) {
    Ctx quiet = {p, NULL, 0, 0};
    *name_len = 0;
    *value_len = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        const uint8_t *s, *e;
        if (read_tag(&quiet, &p, end, &f, &wt) < 0)
            return -1;
        if ((f == 1 || f == 2) && wt == WT_LEN) {
            if (read_len(&quiet, &p, end, &s, &e) < 0)
                return -1;
            if (f == 1)
                *name_len = e - s;
            else
                *value_len = e - s;
        } else if (skip_value(&quiet, &p, end, f, wt, 0) < 0) {
            return -1;
        }
    }
    return 0;
}

typedef struct {
    Buf info, ts, vals, spans; /* spans: (start, end) pointer pairs of label entries */
    PyObject *keys, *metadata;
} Out;

static int parse_series(Ctx *c, const uint8_t *p, const uint8_t *end, Out *o) {
    uint32_t info[INFO_FIELDS] = {0, 0, 0, 8, 0}; /* 8: len("__name__") */
    if (!spend(c))
        return -3;
    int readable = 1, contiguous = 1;
    const uint8_t *first = NULL, *last = NULL;
    o->spans.len = 0;
    while (p < end) {
        const uint8_t *field_start = p, *s, *e;
        uint32_t f;
        int wt;
        if (read_tag(c, &p, end, &f, &wt) < 0)
            return -1;
        if (f == 1 && wt == WT_LEN) { /* Label */
            if (read_len(c, &p, end, &s, &e) < 0)
                return -1;
            if (first == NULL) {
                first = field_start;
            } else if (field_start != last) {
                contiguous = 0;
            }
            last = e;
            const uint8_t *span[2] = {field_start, e};
            if (buf_put(&o->spans, span, sizeof span) < 0)
                return -2;
            Py_ssize_t nl, vl;
            if (label_shape(s, e, &nl, &vl) < 0) {
                readable = 0;
            } else if (vl > 0) {
                info[2] += 1;
                if (nl > (Py_ssize_t)info[3])
                    info[3] = nl > 0xFFFFFFF0 ? 0xFFFFFFF0 : (uint32_t)nl;
                if (vl > (Py_ssize_t)info[4])
                    info[4] = vl > 0xFFFFFFF0 ? 0xFFFFFFF0 : (uint32_t)vl;
            }
        } else if (f == 2 && wt == WT_LEN) { /* Sample */
            double v;
            int64_t t;
            if (read_len(c, &p, end, &s, &e) < 0)
                return -1;
            if (parse_sample(c, s, e, &v, &t) < 0)
                return -1;
            if (!spend(c))
                return -3;
            if (buf_put(&o->vals, &v, 8) < 0 || buf_put(&o->ts, &t, 8) < 0)
                return -2;
            info[0] += 1;
        } else if (f == 4 && wt == WT_LEN) { /* native Histogram: counted, not stored */
            if (read_len(c, &p, end, &s, &e) < 0)
                return -1;
            info[1] += 1;
        } else if (skip_value(c, &p, end, f, wt, 0) < 0) { /* exemplars, unknown fields */
            return -1;
        }
    }
    if (!readable)
        info[2] = LABELS_UNREADABLE;
    if (buf_put(&o->info, info, sizeof info) < 0)
        return -2;
    PyObject *key;
    if (first == NULL) {
        key = PyBytes_FromStringAndSize("", 0);
    } else if (contiguous) {
        key = PyBytes_FromStringAndSize((const char *)first, last - first);
    } else {
        const uint8_t **spans = (const uint8_t **)o->spans.data;
        Py_ssize_t n = o->spans.len / (Py_ssize_t)(2 * sizeof(uint8_t *)), size = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            size += spans[2 * i + 1] - spans[2 * i];
        key = PyBytes_FromStringAndSize(NULL, size);
        if (key != NULL) {
            char *dst = PyBytes_AS_STRING(key);
            for (Py_ssize_t i = 0; i < n; i++) {
                Py_ssize_t len = spans[2 * i + 1] - spans[2 * i];
                memcpy(dst, spans[2 * i], (size_t)len);
                dst += len;
            }
        }
    }
    if (key == NULL)
        return -2;
    int rc = PyList_Append(o->keys, key);
    Py_DECREF(key);
    return rc < 0 ? -2 : 0;
}

/* Check a MetricMetadata payload is a well-formed message (its fields are decoded by
 * the caller); a broken one fails the request, as a protobuf parser would. */
static int check_message(Ctx *c, const uint8_t *p, const uint8_t *end) {
    while (p < end) {
        uint32_t f;
        int wt;
        if (read_tag(c, &p, end, &f, &wt) < 0)
            return -1;
        if (skip_value(c, &p, end, f, wt, 0) < 0)
            return -1;
    }
    return 0;
}

static PyObject *bytes_of(Buf *b) {
    return PyBytes_FromStringAndSize(b->data ? b->data : "", b->len);
}

static PyObject *scan(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer view;
    long long max_entries = -1;
    if (!PyArg_ParseTuple(args, "y*|L:scan", &view, &max_entries))
        return NULL;
    const uint8_t *p = view.buf, *end = p + view.len;
    Ctx c = {p, NULL, 0, max_entries < 0 ? LLONG_MAX : max_entries};
    Out o = {{0}, {0}, {0}, {0}, PyList_New(0), PyList_New(0)};
    PyObject *result = NULL;
    int rc = 0;
    if (o.keys == NULL || o.metadata == NULL)
        goto done;
    while (p < end && rc == 0) {
        const uint8_t *s, *e;
        uint32_t f;
        int wt;
        if (read_tag(&c, &p, end, &f, &wt) < 0) {
            rc = -1;
        } else if (f == 1 && wt == WT_LEN) {
            rc = read_len(&c, &p, end, &s, &e);
            if (rc == 0)
                rc = parse_series(&c, s, e, &o);
        } else if (f == 3 && wt == WT_LEN) {
            rc = read_len(&c, &p, end, &s, &e);
            if (rc == 0)
                rc = check_message(&c, s, e);
            if (rc == 0 && !spend(&c))
                rc = -3;
            if (rc == 0) {
                PyObject *md = PyBytes_FromStringAndSize((const char *)s, e - s);
                if (md == NULL || PyList_Append(o.metadata, md) < 0)
                    rc = -2;
                Py_XDECREF(md);
            }
        } else {
            rc = skip_value(&c, &p, end, f, wt, 0);
        }
    }
    if (rc == -1) {
        PyErr_Format(PyExc_ValueError, "%s at byte %zd", c.error, c.error_at);
        goto done;
    }
    if (rc == -3) {
        PyErr_Format(LimitExceeded, "more than %lld series, samples and metadata entries",
                     max_entries);
        goto done;
    }
    if (rc < 0)
        goto done; /* a Python error (memory) is set */
    result = Py_BuildValue("(ONNNO)", o.keys, bytes_of(&o.info), bytes_of(&o.ts),
                           bytes_of(&o.vals), o.metadata);
done:
    Py_XDECREF(o.keys);
    Py_XDECREF(o.metadata);
    PyMem_Free(o.info.data);
    PyMem_Free(o.ts.data);
    PyMem_Free(o.vals.data);
    PyMem_Free(o.spans.data);
    PyBuffer_Release(&view);
    return result;
}

/* resolve(ids, keys) -> (bytearray of 16 bytes per key, list of the indexes not found):
 * the series cache lookup of one request, without a Python list of results to scan for
 * misses. ``ids`` maps key bytes to 16-byte ids; a miss leaves 16 zero bytes. */
static PyObject *resolve(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *ids, *keys;
    if (!PyArg_ParseTuple(args, "O!O!:resolve", &PyDict_Type, &ids, &PyList_Type, &keys))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n * 16);
    PyObject *missing = PyList_New(0);
    if (out == NULL || missing == NULL)
        goto fail;
    char *dst = PyByteArray_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++, dst += 16) {
        PyObject *sid = PyDict_GetItemWithError(ids, PyList_GET_ITEM(keys, i)); /* borrowed */
        if (sid != NULL && PyBytes_Check(sid) && PyBytes_GET_SIZE(sid) == 16) {
            memcpy(dst, PyBytes_AS_STRING(sid), 16);
            continue;
        }
        if (sid == NULL && PyErr_Occurred())
            goto fail;
        memset(dst, 0, 16);
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL || PyList_Append(missing, index) < 0) {
            Py_XDECREF(index);
            goto fail;
        }
        Py_DECREF(index);
    }
    return Py_BuildValue("(NN)", out, missing);
fail:
    Py_XDECREF(out);
    Py_XDECREF(missing);
    return NULL;
}

static PyMethodDef methods[] = {
    {"resolve", resolve, METH_VARARGS,
     "resolve(ids, keys) -> (bytearray, missing): look every key up in the dict ``ids`` "
     "(values: 16-byte series ids); 16 zero bytes and its index in ``missing`` for a miss."},
    {"scan", scan, METH_VARARGS,
     "scan(data, max_entries=-1) -> (keys, info, timestamps, values, metadata): one pass "
     "over a serialized prometheus.WriteRequest (see the module source for the layout); "
     "LimitExceeded past max_entries series, samples and metadata entries (-1: no limit)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wire",
    "Protobuf wire scanner for remote_write requests (the ingest hot path).", -1, methods,
};

PyMODINIT_FUNC PyInit__wire(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    LimitExceeded = PyErr_NewException("gob_metrics.write._wire.LimitExceeded",
                                       PyExc_ValueError, NULL);
    if (LimitExceeded == NULL || PyModule_AddObjectRef(m, "LimitExceeded", LimitExceeded) < 0 ||
        PyModule_AddIntConstant(m, "INFO_FIELDS", INFO_FIELDS) < 0 ||
        PyModule_AddObject(m, "LABELS_UNREADABLE",
                           PyLong_FromUnsignedLong(LABELS_UNREADABLE)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
