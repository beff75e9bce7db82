/* adpqmodule_matmul.c - the matmul of the CPython wrapper: _core.matmul_plan builds a MatmulPlan (the
 * C plan, and references to the NumPy arrays it points into, so that they outlive it), and
 * _core.matmul(plan, x, out=None, mode=0, threads=1) runs it without the GIL (x and out float32, or uint16
 * arrays of bfloat16 bits: converted in C). matmul is called for
 * every linear layer of every generated token: it takes METH_FASTCALL arguments (positional or by
 * keyword, no dict built) and checks x and out with a few field reads. */
#define NO_IMPORT_ARRAY /* (adpqmodule_args.c holds NumPy's API table) */
#include "adpqmodule_args.h"

typedef struct {
    PyObject_HEAD adpq_matmul_plan plan;
    PyObject *arrays;  /* a copy of the arrays dict: the arrays the plan points into */
    PyObject *col_mul; /* the float32 column factors, or NULL */
} MatmulPlan;

static void plan_dealloc(PyObject *o) {
    MatmulPlan *p = (MatmulPlan *)o;
    adpq_matmul_release(&p->plan);
    Py_XDECREF(p->arrays);
    Py_XDECREF(p->col_mul);
    Py_TYPE(o)->tp_free(o);
}

static PyObject *plan_repr(PyObject *o) {
    const MatmulPlan *p = (const MatmulPlan *)o;
    return PyUnicode_FromFormat("<adpq._core.MatmulPlan %lld x %lld, %d bits, %lld outliers>", (long long)p->plan.q.rows,
                                (long long)p->plan.q.cols, p->plan.cfg.bits, (long long)p->plan.q.num_outliers);
}

static PyObject *plan_get(PyObject *o, void *which) {
    const MatmulPlan *p = (const MatmulPlan *)o;
    return PyLong_FromLongLong(which ? (long long)p->plan.q.cols : (long long)p->plan.q.rows);
}

static PyGetSetDef plan_getset[] = {
    {"rows", plan_get, NULL, "output features (rows of the quantized matrix)", NULL},
    {"cols", plan_get, NULL, "input features (columns of the quantized matrix)", (void *)1},
    {NULL, NULL, NULL, NULL, NULL}};

static PyObject *plan_mode_used(PyObject *o, PyObject *args) {
    long long n;
    int mode;
    if (!PyArg_ParseTuple(args, "Li:mode_used", &n, &mode)) return NULL;
    return PyLong_FromLong(adpq_matmul_mode_used(&((const MatmulPlan *)o)->plan, (int64_t)n, mode));
}

static PyMethodDef plan_methods[] = {
    {"mode_used", plan_mode_used, METH_VARARGS,
     "mode_used(n, mode): the mode a call with n activation rows runs in (int8 falls back to float 0)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject MatmulPlanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "adpq._core.MatmulPlan",
    .tp_basicsize = sizeof(MatmulPlan),
    .tp_dealloc = plan_dealloc,
    .tp_repr = plan_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A quantized matrix prepared for _core.matmul (made by _core.matmul_plan)",
    .tp_getset = plan_getset,
    .tp_methods = plan_methods,
};

/* (the type is not a module attribute: plans come from matmul_plan only) */
int pymm_ready(void) { return PyType_Ready(&MatmulPlanType); }

PyObject *pymm_plan(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    adpq_qmatrix q;
    adpq_config cfg;
    adpq_matrix cm;
    PyObject *owners[2];
    char err[ADPQ_ERRLEN] = {0};
    if (pyarg_qmatrix(args, kwargs, "O!LLOLL|O:matmul_plan", &q, &cfg, &cm, owners)) return NULL;
    MatmulPlan *p = PyObject_New(MatmulPlan, &MatmulPlanType);
    if (!p) return NULL;
    memset(&p->plan, 0, sizeof(p->plan));
    p->col_mul = NULL;
    p->arrays = PyDict_Copy(owners[0]); /* (a later change to the caller's dict cannot free an array) */
    if (!p->arrays) {
        Py_DECREF(p);
        return NULL;
    }
    Py_XINCREF(owners[1]);
    p->col_mul = owners[1];
    adpq_status st;
    Py_BEGIN_ALLOW_THREADS st = adpq_matmul_prepare(&q, &cfg, cm.col_mul, &p->plan, err);
    Py_END_ALLOW_THREADS if (st) {
        Py_DECREF(p);
        return pyarg_raise_status(st, err);
    }
    return (PyObject *)p;
}

/* the arguments of matmul by position: plan, x, out, mode, threads */
enum { MA_PLAN, MA_X, MA_OUT, MA_MODE, MA_THREADS, MA_N };
static const char *const MA_NAMES[MA_N] = {"plan", "x", "out", "mode", "threads"};

static int matmul_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject *v[MA_N]) {
    for (int i = 0; i < MA_N; i++) v[i] = NULL;
    if (nargs > MA_N) {
        PyErr_Format(PyExc_TypeError, "matmul takes at most %d arguments (%zd given)", MA_N, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) v[i] = args[i];
    const Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nk; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int i = 0;
        while (i < MA_N && PyUnicode_CompareWithASCIIString(key, MA_NAMES[i]) != 0) i++;
        if (i == MA_N) {
            PyErr_Format(PyExc_TypeError, "matmul got an unexpected keyword argument %R", key);
            return -1;
        }
        if (v[i]) {
            PyErr_Format(PyExc_TypeError, "matmul got multiple values for argument '%s'", MA_NAMES[i]);
            return -1;
        }
        v[i] = args[nargs + k];
    }
    if (!v[MA_PLAN] || !v[MA_X]) {
        PyErr_Format(PyExc_TypeError, "matmul missing required argument '%s'", v[MA_PLAN] ? "x" : "plan");
        return -1;
    }
    return 0;
}

static int int_arg(PyObject *o, const char *name, int dflt, int *out) {
    if (!o) {
        *out = dflt;
        return 0;
    }
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    const long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v > 1 << 20) {
        PyErr_Format(PyExc_ValueError, "%s = %ld is out of range", name, v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

PyObject *pymm_matmul(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    (void)self;
    PyObject *v[MA_N];
    int mode, threads;
    if (matmul_args(args, nargs, kwnames, v) || int_arg(v[MA_MODE], "mode", 0, &mode) ||
        int_arg(v[MA_THREADS], "threads", 1, &threads))
        return NULL;
    if (!PyObject_TypeCheck(v[MA_PLAN], &MatmulPlanType)) {
        PyErr_Format(PyExc_TypeError, "plan must be a MatmulPlan (from matmul_plan), got %s", Py_TYPE(v[MA_PLAN])->tp_name);
        return NULL;
    }
    const adpq_matmul_plan *plan = &((MatmulPlan *)v[MA_PLAN])->plan;
    const int64_t rows = plan->q.rows, cols = plan->q.cols;
    PyObject *xo = v[MA_X];
    if (!PyArray_Check(xo) ||
        (PyArray_TYPE((PyArrayObject *)xo) != NPY_FLOAT32 && PyArray_TYPE((PyArrayObject *)xo) != NPY_UINT16)) {
        PyErr_Format(PyExc_TypeError, "x must be a float32 or uint16 (bfloat16 bits) numpy.ndarray, got %s",
                     PyArray_Check(xo) ? PyArray_DESCR((PyArrayObject *)xo)->typeobj->tp_name : Py_TYPE(xo)->tp_name);
        return NULL;
    }
    PyArrayObject *xa = (PyArrayObject *)xo;
    if (PyArray_NDIM(xa) != 2 || PyArray_DIM(xa, 1) != cols) {
        PyErr_Format(PyExc_ValueError, "x must be 2-D with %lld columns (the in_features), got %d-D with %lld",
                     (long long)cols, PyArray_NDIM(xa), PyArray_NDIM(xa) ? (long long)PyArray_DIM(xa, PyArray_NDIM(xa) - 1) : 0LL);
        return NULL;
    }
    const int xbf = PyArray_TYPE(xa) == NPY_UINT16, xe = xbf ? 2 : 4;
    const npy_intp n = PyArray_DIM(xa, 0), *st = PyArray_STRIDES(xa);
    if ((cols > 1 && st[1] != xe) || (n > 1 && (st[0] <= 0 || st[0] % xe || st[0] / xe < cols)) || !PyArray_ISALIGNED(xa)) {
        PyErr_SetString(PyExc_ValueError, "x must have contiguous, aligned, non-overlapping rows (a positive row stride)");
        return NULL;
    }
    const int64_t xs = n > 1 ? st[0] / xe : cols;
    PyObject *out = v[MA_OUT];
    int ybf = 0;
    if (out && out != Py_None) {
        PyArrayObject *oa = (PyArrayObject *)out;
        if (!PyArray_Check(out) || (PyArray_TYPE(oa) != NPY_FLOAT32 && PyArray_TYPE(oa) != NPY_UINT16) ||
            !PyArray_IS_C_CONTIGUOUS(oa) || !PyArray_ISWRITEABLE(oa)) {
            PyErr_SetString(PyExc_TypeError, "out must be None or a writeable C-contiguous float32 or uint16 (bfloat16 "
                                             "bits) numpy.ndarray");
            return NULL;
        }
        ybf = PyArray_TYPE(oa) == NPY_UINT16;
        if (PyArray_NDIM(oa) != 2 || PyArray_DIM(oa, 0) != n || PyArray_DIM(oa, 1) != rows) {
            PyErr_Format(PyExc_ValueError, "out must have shape (%lld, %lld) (x's rows, the out_features)", (long long)n,
                         (long long)rows);
            return NULL;
        }
        const char *o0 = PyArray_BYTES(oa), *o1 = o0 + PyArray_NBYTES(oa), *x0 = PyArray_BYTES(xa);
        const char *x1 = x0 + (n > 0 ? ((n - 1) * xs + cols) * xe : 0);
        if (n > 0 && o0 < x1 && x0 < o1) {
            PyErr_SetString(PyExc_ValueError, "out overlaps x");
            return NULL;
        }
        Py_INCREF(out);
    } else {
        npy_intp dims[2] = {n, (npy_intp)rows};
        out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
        if (!out) return NULL;
    }
    char err[ADPQ_ERRLEN] = {0};
    adpq_status st_;
    const void *x = PyArray_DATA(xa);
    void *y = PyArray_DATA((PyArrayObject *)out);
    Py_BEGIN_ALLOW_THREADS st_ = adpq_matmul_typed(plan, x, xbf ? ADPQ_BF16 : ADPQ_F32, n, xs, y, ybf ? ADPQ_BF16 : ADPQ_F32,
                                                   rows, mode, threads, err);
    Py_END_ALLOW_THREADS if (st_) {
        Py_DECREF(out);
        return pyarg_raise_status(st_, err);
    }
    return out;
}
