/*
 * gob_metrics.write._values: how a sample value is stored, losslessly, in fewer bytes.
 *
 * The samples table keeps a value as an integer ``mantissa`` (Int64) and a small ``scale``
 * code (Int8); the column ``value`` is an ALIAS that computes the float back (see
 * sql/003_decimal_values.sql). The codes, for a value v:
 *
 *   0..18    v == (double)m * 10^s            (10^s exact for s <= 22)
 *   -18..-1  v == (double)m / 10^-s           (a decimal like 1673032.89: m = 167303289)
 *   65..82   v == (double)m * 1e-k, k = c-64  (the same decimal computed as m * 0.01, which
 *                                             is one ulp off m / 100 for some m)
 *   -128     RAW: m holds the float's 64 bits (NaN payloads, StaleNaN, infinities, -0.0,
 *            and values with no such short decimal form)
 *
 * with |m| < 2^53 so that (double)m is exact. Every code is checked by computing the float
 * back and comparing all 64 bits, so decoding gives exactly what was sent.
 *
 * Why: exporters' values are mostly short decimals (counters in centiseconds, bytes,
 * packets, integer gauges). Stored as float bits, consecutive values of such a series differ
 * in ~30 noisy low bits; as decimal mantissas they differ by small integers, which the
 * column's Delta, T64('bit') and ZSTD codecs pack into a few bits.
 *
 * The code is chosen per series and kept: Encoder remembers the last code of each series
 * id (a bounded open-addressing table) and reuses it while it still reproduces the value
 * exactly, so one series' mantissas stay on one scale and their deltas stay small. Only
 * when it does not (a new series, a value with more decimals, a magnitude past 2^53) are
 * the codes searched, fewest digits first. A series that once needed RAW stays RAW. Other
 * values never change a series' code: NaN, infinities and -0.0 are stored RAW, +0.0 with
 * whatever code the series has. At ``capacity`` series the table is emptied and codes
 * are learnt again: memory stays bounded, decoding is unaffected.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define RAW (-128)
#define MUL_BASE 64
#define NO_CODE 127      /* a table slot's code before one is known */
#define LIMIT 9007199254740992.0 /* 2^53 */

/* Exact powers of ten up to 1e18 and the doubles nearest to 1e-1 .. 1e-18, as the C
 * compiler (and ClickHouse's parser, checked by tests/test_values.py) read the literals. */
static const double POS[19] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
                               1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18};
static const double NEG[19] = {1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9,
                               1e-10, 1e-11, 1e-12, 1e-13, 1e-14, 1e-15, 1e-16, 1e-17,
                               1e-18};

static inline uint64_t bits_of(double v) {
    uint64_t b;
    memcpy(&b, &v, 8);
    return b;
}

/* The mantissa of v under ``code`` when that code gives v back bit for bit. */
static int try_code(double v, int code, int64_t *m) {
    double x, back;
    if (code >= 0 && code <= 18) {
        x = nearbyint(v / POS[code]);
        back = x * POS[code];
    } else if (code >= -18 && code < 0) {
        x = nearbyint(v * POS[-code]);
        back = x / POS[-code];
    } else if (code > MUL_BASE && code <= MUL_BASE + 18) {
        x = nearbyint(v * POS[code - MUL_BASE]);
        back = x * NEG[code - MUL_BASE];
    } else {
        return 0;
    }
    if (!(fabs(x) < LIMIT) || bits_of(back) != bits_of(v))
        return 0;
    *m = (int64_t)x;
    return 1;
}

/* The code with the fewest digits that gives v back, or RAW. v is finite and non-zero. */
static int search(double v, int64_t *m) {
    int top = (int)floor(log10(fabs(v))); /* larger scales round v to 0 */
    if (top > 18)
        top = 18;
    for (int s = top; s >= -18; s--) {
        if (try_code(v, s, m))
            return s;
        if (s < 0 && try_code(v, MUL_BASE - s, m))
            return MUL_BASE - s;
    }
    return RAW;
}

typedef struct {
    uint64_t k0, k1; /* the 16-byte series id */
    int8_t code;     /* NO_CODE: seen, code not known yet */
    uint8_t used;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    size_t mask;      /* slot count - 1 (a power of two) */
    Py_ssize_t count; /* used slots */
    Py_ssize_t capacity;
} Encoder;

static inline uint64_t mix64(uint64_t h) { /* splitmix64's finaliser */
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 31;
    return h;
}

static inline size_t slot_hash(uint64_t k0, uint64_t k1) {
    return (size_t)mix64(k0 ^ mix64(k1 + 0x9E3779B97F4A7C15ull));
}

static int table_alloc(Encoder *e, size_t slots) {
    Slot *s = PyMem_Calloc(slots, sizeof(Slot));
    if (s == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(e->slots);
    e->slots = s;
    e->mask = slots - 1;
    e->count = 0;
    return 0;
}

/* Forget every series (their codes are learnt again). */
static void forget_all(Encoder *e) {
    memset(e->slots, 0, (e->mask + 1) * sizeof(Slot));
    e->count = 0;
}

static int grow(Encoder *e) {
    Slot *old = e->slots;
    size_t old_n = e->mask + 1;
    e->slots = NULL;
    if (table_alloc(e, old_n * 2) < 0) {
        e->slots = old;
        e->mask = old_n - 1;
        return -1;
    }
    for (size_t i = 0; i < old_n; i++) {
        if (!old[i].used)
            continue;
        size_t j = slot_hash(old[i].k0, old[i].k1) & e->mask;
        while (e->slots[j].used)
            j = (j + 1) & e->mask;
        e->slots[j] = old[i];
        e->count++;
    }
    PyMem_Free(old);
    return 0;
}

/* The slot of a series id, inserted when absent (NULL only when out of memory). */
static Slot *lookup(Encoder *e, const uint8_t *id) {
    uint64_t k0, k1;
    memcpy(&k0, id, 8);
    memcpy(&k1, id + 8, 8);
    size_t h = slot_hash(k0, k1);
    size_t j = h & e->mask;
    while (e->slots[j].used) {
        if (e->slots[j].k0 == k0 && e->slots[j].k1 == k1)
            return &e->slots[j];
        j = (j + 1) & e->mask;
    }
    if (e->count >= e->capacity) {
        forget_all(e); /* full */
        j = h & e->mask;
    } else if ((size_t)(e->count + 1) * 2 > e->mask + 1) {
        /* Grow (load factor <= 1/2). */
        if (grow(e) < 0)
            return NULL;
        j = h & e->mask;
        while (e->slots[j].used)
            j = (j + 1) & e->mask;
    }
    Slot *s = &e->slots[j];
    s->k0 = k0;
    s->k1 = k1;
    s->code = NO_CODE;
    s->used = 1;
    e->count++;
    return s;
}

static void encode_one(Slot *slot, double v, int64_t *m, int8_t *code) {
    uint64_t b = bits_of(v);
    if (!isfinite(v) || b == 0x8000000000000000ull) { /* NaN, +-Inf, -0.0 */
        *m = (int64_t)b;
        *code = RAW;
        return;
    }
    int c = slot->code;
    if (v == 0.0) { /* +0.0: every scale code decodes m = 0 to +0.0 */
        if (c == RAW) {
            *m = 0;
            *code = RAW;
        } else {
            *m = 0;
            *code = (int8_t)(c == NO_CODE ? 0 : c);
        }
        return;
    }
    if (c == RAW) {
        *m = (int64_t)b;
        *code = RAW;
        return;
    }
    if (c != NO_CODE && try_code(v, c, m)) {
        *code = (int8_t)c;
        return;
    }
    c = search(v, m);
    if (c == RAW)
        *m = (int64_t)b;
    slot->code = (int8_t)c;
    *code = (int8_t)c;
}

static PyObject *Encoder_encode(Encoder *self, PyObject *args) {
    Py_buffer ids, vals;
    if (self->slots == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder was not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*y*:encode", &ids, &vals))
        return NULL;
    PyObject *result = NULL, *mant = NULL, *codes = NULL;
    if (ids.len % 16 != 0 || vals.len % 8 != 0 || ids.len / 16 != vals.len / 8) {
        PyErr_SetString(PyExc_ValueError,
                        "encode: ids must hold 16 bytes and values 8 bytes per sample");
        goto done;
    }
    Py_ssize_t n = vals.len / 8;
    mant = PyByteArray_FromStringAndSize(NULL, n * 8);
    codes = PyByteArray_FromStringAndSize(NULL, n);
    if (mant == NULL || codes == NULL)
        goto done;
    const uint8_t *id = ids.buf;
    const uint8_t *vp = vals.buf;
    uint8_t *mp = (uint8_t *)PyByteArray_AS_STRING(mant);
    int8_t *cp = (int8_t *)PyByteArray_AS_STRING(codes);
    for (Py_ssize_t i = 0; i < n; i++) {
        Slot *slot = lookup(self, id + 16 * i);
        if (slot == NULL)
            goto done;
        double v;
        int64_t m;
        memcpy(&v, vp + 8 * i, 8);
        encode_one(slot, v, &m, cp + i);
        memcpy(mp + 8 * i, &m, 8);
    }
    result = Py_BuildValue("(OO)", mant, codes);
done:
    Py_XDECREF(mant);
    Py_XDECREF(codes);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&vals);
    return result;
}

static PyObject *Encoder_clear(Encoder *self, PyObject *Py_UNUSED(ignored)) {
    if (self->slots != NULL)
        forget_all(self);
    Py_RETURN_NONE;
}

static Py_ssize_t Encoder_len(Encoder *self) {
    return self->count;
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"capacity", NULL};
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n:Encoder", kwlist, &capacity))
        return -1;
    if (capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "Encoder: capacity must be at least 1");
        return -1;
    }
    self->capacity = capacity;
    return table_alloc(self, 1024);
}

static void Encoder_dealloc(Encoder *self) {
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_VARARGS,
     "encode(ids, values) -> (mantissas, codes): ids 16 bytes and values one float64 per "
     "sample, in order; bytearrays of one int64 mantissa and one int8 code per sample."},
    {"clear", (PyCFunction)Encoder_clear, METH_NOARGS, "Forget every series' code."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Encoder_as_sequence = {.sq_length = (lenfunc)Encoder_len};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gob_metrics.write._values.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(capacity): chooses each sample's (mantissa, code), remembering the "
              "code of up to ``capacity`` series ids.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
    .tp_as_sequence = &Encoder_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_values",
    "Lossless decimal mantissa + scale encoding of sample values (see the source).", -1, NULL,
};

PyMODINIT_FUNC PyInit__values(void) {
    if (PyType_Ready(&EncoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Encoder", (PyObject *)&EncoderType) < 0 ||
        PyModule_AddIntConstant(m, "RAW", RAW) < 0 ||
        PyModule_AddIntConstant(m, "MUL_BASE", MUL_BASE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
