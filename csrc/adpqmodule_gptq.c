/* adpqmodule_gptq.c - the wrapper's GPTQ (adpq_gptq_inverse, adpq_gptq): _core.gptq_inverse and
 * _core.gptq (python/adpq/_core.pyi documents both). Every array is checked here (dtype, native byte
 * order, alignment, C order, shape), the C work runs without the GIL, and the grids come back as new
 * arrays (the caller's are never written). */
#define NO_IMPORT_ARRAY /* (adpqmodule_args.c holds NumPy's API table) */
#include "adpqmodule_args.h"

#include <limits.h>

/* obj: a C-contiguous, aligned, native-order 2-D array of typenum (or of typenum2 when not -1) and
 * shape (rows, cols) (-1: any, at least 1); NULL with TypeError/ValueError naming it otherwise */
static PyArrayObject *array2(PyObject *obj, const char *name, int typenum, int typenum2, const char *dtype_text,
                             npy_intp rows, npy_intp cols) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray, got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    const int t = PyArray_TYPE(a);
    if ((t != typenum && t != typenum2) || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_TypeError, "%s must be a %s array (native byte order), got dtype %R", name, dtype_text,
                     (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (PyArray_NDIM(a) != 2) {
        PyErr_Format(PyExc_ValueError, "%s must be 2-D, got %d dimensions", name, PyArray_NDIM(a));
        return NULL;
    }
    const npy_intp r = PyArray_DIM(a, 0), c = PyArray_DIM(a, 1);
    if ((rows >= 0 && r != rows) || (cols >= 0 && c != cols) || r < 1 || c < 1) {
        if (rows >= 0 && cols >= 0)
            PyErr_Format(PyExc_ValueError, "%s must have shape (%zd, %zd), got (%zd, %zd)", name, (Py_ssize_t)rows,
                         (Py_ssize_t)cols, (Py_ssize_t)r, (Py_ssize_t)c);
        else
            PyErr_Format(PyExc_ValueError, "%s must have at least one row and one column, got (%zd, %zd)", name,
                         (Py_ssize_t)r, (Py_ssize_t)c);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned", name);
        return NULL;
    }
    return a;
}

/* a bool, or an int 0/1, into *out */
static int flag_arg(PyObject *v, const char *name, int *out) {
    if (PyBool_Check(v) || PyArray_IsScalar(v, Bool)) {
        *out = PyObject_IsTrue(v);
        return *out < 0 ? -1 : 0;
    }
    long long x;
    if (pyarg_int(v, name, 0, 1, &x)) return -1;
    *out = (int)x;
    return 0;
}

static int float_arg(PyObject *v, const char *name, double *out) {
    if (PyBool_Check(v) || !(PyFloat_Check(v) || PyLong_Check(v) || PyArray_IsScalar(v, Floating) ||
                             PyArray_IsScalar(v, Integer))) {
        PyErr_Format(PyExc_TypeError, "%s must be a float, got %s", name, Py_TYPE(v)->tp_name);
        return -1;
    }
    *out = PyFloat_AsDouble(v);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* a 2-D float32 array copied (the result's grids) */
static PyObject *copy_f32(PyArrayObject *a) { return PyArray_NewCopy(a, NPY_CORDER); }

PyObject *pygptq_inverse(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"h", "damp", "act_order", "threads", NULL};
    PyObject *h_o, *damp_o, *act_o, *threads_o;
    double damp;
    int act_order;
    long long threads;
    char err[ADPQ_ERRLEN] = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO:gptq_inverse", kwlist, &h_o, &damp_o, &act_o, &threads_o))
        return NULL;
    PyArrayObject *h = array2(h_o, "h", NPY_FLOAT64, -1, "float64", -1, -1);
    if (!h || float_arg(damp_o, "damp", &damp) || flag_arg(act_o, "act_order", &act_order) ||
        pyarg_int(threads_o, "threads", 1, INT_MAX, &threads))
        return NULL;
    const npy_intp n = PyArray_DIM(h, 0);
    if (PyArray_DIM(h, 1) != n) {
        PyErr_Format(PyExc_ValueError, "h must be square, got shape (%zd, %zd)", (Py_ssize_t)n,
                     (Py_ssize_t)PyArray_DIM(h, 1));
        return NULL;
    }
    npy_intp udim[2] = {n, n};
    PyObject *u = PyArray_SimpleNew(2, udim, NPY_FLOAT32), *perm = PyArray_SimpleNew(1, &udim[0], NPY_INT64);
    if (!u || !perm) {
        Py_XDECREF(u);
        Py_XDECREF(perm);
        return NULL;
    }
    adpq_status st;
    Py_BEGIN_ALLOW_THREADS st = adpq_gptq_inverse((const double *)PyArray_DATA(h), (int64_t)n, damp, act_order,
                                                  (int)threads, (float *)PyArray_DATA((PyArrayObject *)u),
                                                  (int64_t *)PyArray_DATA((PyArrayObject *)perm), err);
    Py_END_ALLOW_THREADS if (st) {
        Py_DECREF(u);
        Py_DECREF(perm);
        return pyarg_raise_status(st, err);
    }
    return Py_BuildValue("(NN)", u, perm);
}

/* the keyword-only arguments of gptq, all required */
enum { K_BITS, K_GROUP, K_SYM, K_INTZ, K_SDTYPE, K_DAMP, K_BLOCK, K_ACT, K_REFIT, K_THREADS, K_N };

PyObject *pygptq(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"w",          "h",      "mask",         "scales",      "zeros",      "outlier_scales",
                             "outlier_zeros", "bits", "group_size", "symmetric",   "integer_zero", "scale_dtype",
                             "damp",       "block_size", "act_order", "refit",     "threads",    NULL};
    PyObject *w_o, *h_o, *mask_o, *s_o, *z_o, *so_o, *zo_o, *k[K_N] = {NULL};
    char err[ADPQ_ERRLEN] = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOO|$OOOOOOOOOO:gptq", kwlist, &w_o, &h_o, &mask_o, &s_o,
                                     &z_o, &so_o, &zo_o, &k[K_BITS], &k[K_GROUP], &k[K_SYM], &k[K_INTZ],
                                     &k[K_SDTYPE], &k[K_DAMP], &k[K_BLOCK], &k[K_ACT], &k[K_REFIT], &k[K_THREADS]))
        return NULL;
    for (int i = 0; i < K_N; i++)
        if (!k[i]) {
            PyErr_Format(PyExc_TypeError, "gptq() missing required keyword argument '%s'", kwlist[7 + i]);
            return NULL;
        }
    adpq_gptq_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    long long bits, group, sdtype, block, threads;
    if (pyarg_int(k[K_BITS], "bits", 2, 8, &bits) || pyarg_int(k[K_GROUP], "group_size", -1, INT64_MAX, &group) ||
        flag_arg(k[K_SYM], "symmetric", &cfg.symmetric) || flag_arg(k[K_INTZ], "integer_zero", &cfg.integer_zero) ||
        pyarg_int(k[K_SDTYPE], "scale_dtype", 0, 2, &sdtype) || float_arg(k[K_DAMP], "damp", &cfg.damp) ||
        pyarg_int(k[K_BLOCK], "block_size", 1, INT64_MAX, &block) || flag_arg(k[K_ACT], "act_order", &cfg.act_order) ||
        flag_arg(k[K_REFIT], "refit", &cfg.refit) || pyarg_int(k[K_THREADS], "threads", 1, INT_MAX, &threads))
        return NULL;
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
        PyErr_Format(PyExc_ValueError, "bits must be 2, 3, 4 or 8 (got %lld)", bits);
        return NULL;
    }
    cfg.bits = (int)bits;
    cfg.group_size = (int64_t)group;
    cfg.scale_dtype = (int)sdtype;
    cfg.block_size = (int64_t)block;
    cfg.threads = (int)threads;

    PyArrayObject *w = array2(w_o, "w", NPY_FLOAT32, -1, "float32", -1, -1);
    if (!w) return NULL;
    const npy_intp rows = PyArray_DIM(w, 0), cols = PyArray_DIM(w, 1);
    if (group != -1 && group < 1) {
        PyErr_Format(PyExc_ValueError, "group_size must be -1 (one group per row) or >= 1 (got %lld)", group);
        return NULL;
    }
    const npy_intp gs = group == -1 || group > cols ? cols : (npy_intp)group, gpr = (cols + gs - 1) / gs;
    PyArrayObject *h = array2(h_o, "h", NPY_FLOAT64, -1, "float64", cols, cols);
    PyArrayObject *mask = h ? array2(mask_o, "mask", NPY_BOOL, NPY_UINT8, "bool or uint8", rows, cols) : NULL;
    PyArrayObject *s = mask ? array2(s_o, "scales", NPY_FLOAT32, -1, "float32", rows, gpr) : NULL;
    PyArrayObject *z = s ? array2(z_o, "zeros", NPY_FLOAT32, -1, "float32", rows, gpr) : NULL;
    if (!z) return NULL;
    if ((so_o == Py_None) != (zo_o == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "outlier_scales and outlier_zeros must both be arrays (outlier grids) or "
                                          "both None (float16 outliers)");
        return NULL;
    }
    PyArrayObject *so = NULL, *zo = NULL;
    if (so_o != Py_None) {
        so = array2(so_o, "outlier_scales", NPY_FLOAT32, -1, "float32", rows, gpr);
        zo = so ? array2(zo_o, "outlier_zeros", NPY_FLOAT32, -1, "float32", rows, gpr) : NULL;
        if (!zo) return NULL;
    }
    if ((uint64_t)rows > (uint64_t)INT64_MAX / 8 / (uint64_t)cols) {
        PyErr_SetString(PyExc_ValueError, "w is too large");
        return NULL;
    }
    npy_intp cdim = (npy_intp)(((int64_t)rows * (int64_t)cols * bits + 7) / 8), vdim[2] = {rows, cols};
    PyObject *codes = PyArray_SimpleNew(1, &cdim, NPY_UINT8), *values = PyArray_SimpleNew(2, vdim, NPY_FLOAT32);
    PyObject *s2 = copy_f32(s), *z2 = copy_f32(z);
    PyObject *so2 = so ? copy_f32(so) : NULL, *zo2 = zo ? copy_f32(zo) : NULL;
    PyObject *out = PyDict_New();
    if (!codes || !values || !s2 || !z2 || (so && (!so2 || !zo2)) || !out) goto fail;
    adpq_status st;
#define F32P(o) ((float *)PyArray_DATA((PyArrayObject *)(o)))
    Py_BEGIN_ALLOW_THREADS st = adpq_gptq((const float *)PyArray_DATA(w), (int64_t)rows, (int64_t)cols,
                                          (const double *)PyArray_DATA(h), (const uint8_t *)PyArray_DATA(mask), &cfg,
                                          F32P(s2), F32P(z2), so2 ? F32P(so2) : NULL, zo2 ? F32P(zo2) : NULL,
                                          (uint8_t *)PyArray_DATA((PyArrayObject *)codes), F32P(values), err);
    Py_END_ALLOW_THREADS
#undef F32P
    if (st) {
        pyarg_raise_status(st, err);
        goto fail;
    }
    if (PyDict_SetItemString(out, "codes", codes) || PyDict_SetItemString(out, "values", values) ||
        PyDict_SetItemString(out, "scales", s2) || PyDict_SetItemString(out, "zeros", z2) ||
        PyDict_SetItemString(out, "outlier_scales", so2 ? so2 : Py_None) ||
        PyDict_SetItemString(out, "outlier_zeros", zo2 ? zo2 : Py_None))
        goto fail;
    Py_DECREF(codes);
    Py_DECREF(values);
    Py_DECREF(s2);
    Py_DECREF(z2);
    Py_XDECREF(so2);
    Py_XDECREF(zo2);
    return out;
fail:
    Py_XDECREF(codes);
    Py_XDECREF(values);
    Py_XDECREF(s2);
    Py_XDECREF(z2);
    Py_XDECREF(so2);
    Py_XDECREF(zo2);
    Py_XDECREF(out);
    if (!PyErr_Occurred()) PyErr_NoMemory();
    return NULL;
}
