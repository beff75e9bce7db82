/* adpqmodule_args.c - the Python boundary's argument conversions: config dicts with adpq_config's
 * field names, the route, weight matrices, column factors, and a quantized matrix's arrays by name.
 * Every mistake raises an exception that names the argument or key. */
#include "adpqmodule_args.h"

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* A config is a dict with exactly the fields of adpq_config (adpq.h) but `route`, which is a keyword
 * of quantize: {"bits": int, "group_size": int, "scope": int, "use_lam": 0|1, "outlier_ratio": float,
 * "lam": float, "gamma": float, "symmetric": 0|1, "outlier_format": int, "scale_dtype": int,
 * "threads": int, "integer_zero": 0|1}. Values are checked by adpq_layout_of. */
typedef struct {
    const char *name;
    char kind; /* 'i' int, 'L' int64, 'f' 0/1 flag (bool or int), 'd' double (float or int) */
    size_t offset;
} config_field;

static const config_field CONFIG_FIELDS[] = {
    {"bits", 'i', offsetof(adpq_config, bits)},
    {"group_size", 'L', offsetof(adpq_config, group_size)},
    {"scope", 'i', offsetof(adpq_config, scope)},
    {"use_lam", 'f', offsetof(adpq_config, use_lam)},
    {"outlier_ratio", 'd', offsetof(adpq_config, outlier_ratio)},
    {"lam", 'd', offsetof(adpq_config, lam)},
    {"gamma", 'd', offsetof(adpq_config, gamma)},
    {"symmetric", 'f', offsetof(adpq_config, symmetric)},
    {"outlier_format", 'i', offsetof(adpq_config, outlier_format)},
    {"scale_dtype", 'i', offsetof(adpq_config, scale_dtype)},
    {"threads", 'i', offsetof(adpq_config, threads)},
    {"integer_zero", 'f', offsetof(adpq_config, integer_zero)},
};
#define N_CONFIG_FIELDS ((Py_ssize_t)(sizeof(CONFIG_FIELDS) / sizeof(CONFIG_FIELDS[0])))

/* An integer argument: a Python int or a NumPy integer (not a bool), in [lo, hi]; TypeError or
 * ValueError naming it otherwise (never OverflowError). */
int pyarg_int(PyObject *v, const char *name, long long lo, long long hi, long long *out) {
    if (PyBool_Check(v) || PyArray_IsScalar(v, Bool) || !(PyLong_Check(v) || PyArray_IsScalar(v, Integer))) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %s", name, Py_TYPE(v)->tp_name);
        return -1;
    }
    PyObject *i = PyNumber_Index(v);
    if (!i) return -1;
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(i, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        Py_DECREF(i);
        return -1;
    }
    if (overflow) { /* (not the value: it may have thousands of digits) */
        PyErr_Format(PyExc_ValueError, "%s is out of range [%lld, %lld] (beyond 64 bits)", name, lo, hi);
        Py_DECREF(i);
        return -1;
    }
    if (x < lo || x > hi) {
        if (lo == 0 && hi == 1)
            PyErr_Format(PyExc_ValueError, "%s = %lld is out of range (0 or 1)", name, x);
        else
            PyErr_Format(PyExc_ValueError, "%s = %lld is out of range [%lld, %lld]", name, x, lo, hi);
        Py_DECREF(i);
        return -1;
    }
    Py_DECREF(i);
    *out = x;
    return 0;
}

static int config_field_value(const config_field *f, PyObject *v, adpq_config *cfg) {
    char *dst = (char *)cfg + f->offset;
    char name[64];
    snprintf(name, sizeof(name), "config['%s']", f->name);
    if (f->kind == 'd') {
        if (PyBool_Check(v) || PyArray_IsScalar(v, Bool) ||
            !(PyFloat_Check(v) || PyLong_Check(v) || PyArray_IsScalar(v, Floating) || PyArray_IsScalar(v, Integer))) {
            PyErr_Format(PyExc_TypeError, "%s must be a float, got %s", name, Py_TYPE(v)->tp_name);
            return -1;
        }
        PyObject *fl = PyNumber_Float(v);
        if (!fl) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "%s is out of range of a float", name);
            }
            return -1;
        }
        const double x = PyFloat_AS_DOUBLE(fl);
        Py_DECREF(fl);
        memcpy(dst, &x, sizeof(x));
        return 0;
    }
    if (f->kind == 'f' && (PyBool_Check(v) || PyArray_IsScalar(v, Bool))) {
        const int y = PyObject_IsTrue(v);
        if (y < 0) return -1;
        memcpy(dst, &y, sizeof(y));
        return 0;
    }
    long long x;
    const long long lo = f->kind == 'f' ? 0 : f->kind == 'L' ? LLONG_MIN : INT_MIN;
    const long long hi = f->kind == 'f' ? 1 : f->kind == 'L' ? LLONG_MAX : INT_MAX;
    if (pyarg_int(v, name, lo, hi, &x)) return -1;
    if (f->kind == 'L') {
        const int64_t y = (int64_t)x;
        memcpy(dst, &y, sizeof(y));
    } else {
        const int y = (int)x;
        memcpy(dst, &y, sizeof(y));
    }
    return 0;
}

int pyarg_config(PyObject *obj, adpq_config *cfg) {
    if (!PyDict_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "config must be a dict of the adpq_config fields (bits, group_size, ...), got %s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    memset(cfg, 0, sizeof(*cfg));
    for (Py_ssize_t i = 0; i < N_CONFIG_FIELDS; i++) {
        PyObject *v = PyDict_GetItemString(obj, CONFIG_FIELDS[i].name); /* (borrowed) */
        if (!v) {
            PyErr_Format(PyExc_TypeError, "config is missing '%s'", CONFIG_FIELDS[i].name);
            return -1;
        }
        if (config_field_value(&CONFIG_FIELDS[i], v, cfg)) return -1;
    }
    if (PyDict_Size(obj) != N_CONFIG_FIELDS) { /* every field is there: some other key too */
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(obj, &pos, &key, &value)) {
            int known = 0;
            for (Py_ssize_t i = 0; i < N_CONFIG_FIELDS && !known; i++)
                known = PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, CONFIG_FIELDS[i].name) == 0;
            if (!known) {
                PyErr_Format(PyExc_TypeError, "config has an unknown key %R (route is a keyword of quantize)", key);
                return -1;
            }
        }
    }
    cfg->route = ADPQ_ROUTE_AUTO;
    return 0;
}

int pyarg_route(const char *route, adpq_config *cfg) {
    if (!route || !strcmp(route, "auto"))
        cfg->route = ADPQ_ROUTE_AUTO;
    else if (!strcmp(route, "one_pass"))
        cfg->route = ADPQ_ROUTE_ONE_PASS;
    else if (!strcmp(route, "two_pass"))
        cfg->route = ADPQ_ROUTE_TWO_PASS;
    else {
        PyErr_Format(PyExc_ValueError, "route must be 'auto', 'one_pass' or 'two_pass', got '%s'", route);
        return -1;
    }
    return 0;
}

PyObject *pyarg_raise_status(adpq_status st, const char *err) {
    PyObject *exc = st == ADPQ_ERR_NOMEM ? PyExc_MemoryError : PyExc_ValueError;
    PyErr_SetString(exc, err[0] ? err : "adpq: error");
    return NULL;
}

/* A 2-D weight array as the core sees it: rows contiguous, any positive row stride. */
int pyarg_matrix(PyObject *obj, int dtype, adpq_matrix *m) {
    if (!PyArray_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "w must be a numpy.ndarray");
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int itemsize = dtype == ADPQ_F32 ? 4 : 2;
    if (dtype != ADPQ_F32 && dtype != ADPQ_F16 && dtype != ADPQ_BF16) {
        PyErr_SetString(PyExc_ValueError, "unknown dtype code");
        return -1;
    }
    if (PyArray_NDIM(a) != 2) {
        PyErr_SetString(PyExc_ValueError, "w must be 2-D here");
        return -1;
    }
    if (PyArray_ITEMSIZE(a) != itemsize) {
        PyErr_SetString(PyExc_TypeError, "w itemsize does not match its dtype code");
        return -1;
    }
    npy_intp *st = PyArray_STRIDES(a), *sh = PyArray_DIMS(a);
    if (sh[0] < 1 || sh[1] < 1) {
        PyErr_SetString(PyExc_ValueError, "w is empty");
        return -1;
    }
    if ((sh[1] > 1 && st[1] != itemsize) || (sh[0] > 1 && (st[0] <= 0 || st[0] % itemsize))) {
        PyErr_SetString(PyExc_ValueError, "w must have contiguous rows and a positive row stride");
        return -1;
    }
    if (!PyArray_ISALIGNED(a)) {
        PyErr_SetString(PyExc_ValueError, "w must be aligned");
        return -1;
    }
    m->data = PyArray_DATA(a);
    m->col_mul = NULL;
    m->dtype = dtype;
    m->rows = sh[0];
    m->cols = sh[1];
    m->row_stride = sh[0] > 1 ? st[0] / itemsize : sh[1];
    if (m->row_stride < m->cols) {
        PyErr_SetString(PyExc_ValueError, "w rows overlap");
        return -1;
    }
    return 0;
}

/* Optional column factors: None, or a contiguous float32 vector of cols finite values. */
int pyarg_col_mul(PyObject *obj, adpq_matrix *m) {
    if (obj == NULL || obj == Py_None) return 0;
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32 ||
        PyArray_NDIM((PyArrayObject *)obj) != 1 || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj)) {
        PyErr_SetString(PyExc_TypeError, "col_mul must be a contiguous 1-D float32 array or None");
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_DIM(a, 0) != m->cols) {
        PyErr_Format(PyExc_ValueError, "col_mul has %lld values for %lld columns", (long long)PyArray_DIM(a, 0),
                     (long long)m->cols);
        return -1;
    }
    const float *f = (const float *)PyArray_DATA(a);
    for (int64_t j = 0; j < m->cols; j++)
        if (!isfinite(f[j])) {
            PyErr_SetString(PyExc_ValueError, "col_mul must be finite");
            return -1;
        }
    m->col_mul = f;
    return 0;
}

/* Checks that obj is a C-contiguous array of exactly `nbytes` bytes and returns its data. */
int pyarg_array(PyObject *obj, const char *name, npy_intp nbytes, void **data) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray", name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous", name);
        return -1;
    }
    if (PyArray_NBYTES(a) != nbytes) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd for this shape and config", name,
                     (Py_ssize_t)PyArray_NBYTES(a), (Py_ssize_t)nbytes);
        return -1;
    }
    *data = PyArray_DATA(a);
    return 0;
}

/* The stored arrays of a quantized matrix, by name (the keys of quantize's result); None is absent. */
static const char *const QARRAY_NAMES[] = {"codes",           "scales",         "zeros",         "outlier_counts",
                                           "outlier_indices", "outlier_scales", "outlier_zeros", "outlier_values"};
enum { QA_CODES, QA_SCALES, QA_ZEROS, QA_COUNTS, QA_INDICES, QA_OSCALES, QA_OZEROS, QA_VALUES, QA_N };

static int parse_arrays(PyObject *d, PyObject *arr[QA_N]) {
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    for (int i = 0; i < QA_N; i++) arr[i] = NULL;
    while (PyDict_Next(d, &pos, &key, &value)) {
        int i = 0;
        while (i < QA_N && !(PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, QARRAY_NAMES[i]) == 0)) i++;
        if (i == QA_N) {
            PyErr_Format(PyExc_TypeError,
                         "arrays has an unknown key %R (codes, scales, zeros, outlier_counts, outlier_indices, "
                         "outlier_scales, outlier_zeros, outlier_values)",
                         key);
            return -1;
        }
        arr[i] = value == Py_None ? NULL : value;
    }
    return 0;
}

/* An array the config needs: present, C-contiguous, of exactly `nbytes` bytes. */
static int need_array(PyObject *arr[QA_N], int which, npy_intp nbytes, void **data) {
    if (!arr[which]) {
        PyErr_Format(PyExc_ValueError, "arrays['%s'] is required for this config", QARRAY_NAMES[which]);
        return -1;
    }
    return pyarg_array(arr[which], QARRAY_NAMES[which], nbytes, data);
}

/* The arguments of dequantize (see its docstring; also error_stats' `quantized` dict) into q, cfg and
 * the column factors (cm.col_mul); the arrays stay owned by the caller's objects (owners: NULL, or
 * 2 slots for borrowed references to the arrays dict and the col_mul object or NULL). */
int pyarg_qmatrix(PyObject *args, PyObject *kwargs, const char *format, adpq_qmatrix *q, adpq_config *cfg,
                  adpq_matrix *cm, PyObject **owners) {
    static char *kwlist[] = {"arrays", "rows", "cols", "config", "num_outliers", "num_outlier_groups", "col_mul", NULL};
    PyObject *arrays, *cfgd, *col_mul = NULL, *arr[QA_N];
    long long rows, cols, n_out, n_grp;
    adpq_layout lay;
    char err[ADPQ_ERRLEN] = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, format, kwlist, &PyDict_Type, &arrays, &rows, &cols, &cfgd, &n_out,
                                     &n_grp, &col_mul))
        return -1;
    if (owners) { /* (borrowed) */
        owners[0] = arrays;
        owners[1] = col_mul == Py_None ? NULL : col_mul;
    }
    if (pyarg_config(cfgd, cfg) || parse_arrays(arrays, arr)) return -1;
    adpq_status st = adpq_layout_of(rows, cols, cfg, &lay, err);
    if (st) {
        pyarg_raise_status(st, err);
        return -1;
    }
    memset(cm, 0, sizeof(*cm)); /* (only its cols and col_mul: the column factors, checked) */
    cm->cols = cols;
    if (pyarg_col_mul(col_mul, cm)) return -1;
    if (n_out < 0 || n_grp < 0 || n_out > rows * cols || n_grp > lay.num_groups) {
        PyErr_SetString(PyExc_ValueError, "outlier counts out of range");
        return -1;
    }
    memset(q, 0, sizeof(*q));
    q->rows = rows;
    q->cols = cols;
    q->num_outliers = n_out;
    q->num_outlier_groups = n_grp;
    npy_intp sb = lay.scale_bytes;
    if (need_array(arr, QA_CODES, lay.code_bytes, (void **)&q->codes)) return -1;
    if (need_array(arr, QA_SCALES, lay.num_groups * sb, &q->scales)) return -1;
    if (!cfg->symmetric && need_array(arr, QA_ZEROS, lay.num_groups * sb, &q->zeros)) return -1;
    if (n_out > 0) {
        if (need_array(arr, QA_COUNTS, lay.num_groups * lay.count_bytes, &q->outlier_counts)) return -1;
        if (need_array(arr, QA_INDICES, (n_out * lay.index_bits + 7) / 8, (void **)&q->outlier_indices)) return -1;
        if (cfg->outlier_format == ADPQ_OUTLIERS_GROUP) {
            if (need_array(arr, QA_OSCALES, n_grp * sb, &q->outlier_scales)) return -1;
            if (!cfg->symmetric && need_array(arr, QA_OZEROS, n_grp * sb, &q->outlier_zeros)) return -1;
        } else if (need_array(arr, QA_VALUES, n_out * 2, (void **)&q->outlier_values)) {
            return -1;
        }
    }
    return 0;
}

int pyarg_import_numpy(void) {
    import_array1(-1);
    return 0;
}
