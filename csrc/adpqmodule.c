/* adpqmodule.c - the thin CPython/NumPy wrapper over the C core (adpq._core).
 * It checks arguments and array sizes, releases the GIL around the C work, and moves results
 * into NumPy arrays. It does no arithmetic on weights. Arguments have names (keywords, a config
 * dict with adpq_config's field names, arrays by name: adpqmodule_args.c converts them);
 * python/adpq/_core.pyi documents them. The
 * Python layer (adpq/core/) converts user input (dtypes, 1-D, strides) before calling here; these
 * checks are the last line. */
#define NO_IMPORT_ARRAY /* (adpqmodule_args.c holds NumPy's API table) */
#include "adpqmodule_args.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h" /* adpq_select_kth_largest, for its test */

static PyObject *new_array_from(const void *src, npy_intp n, int typenum) {
    PyObject *arr = PyArray_SimpleNew(1, &n, typenum);
    if (arr && n > 0 && src) memcpy(PyArray_DATA((PyArrayObject *)arr), src, (size_t)PyArray_NBYTES((PyArrayObject *)arr));
    return arr;
}

static int set_item(PyObject *d, const char *key, PyObject *v) {
    if (!v) return -1;
    int rc = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return rc;
}

static int count_typenum(int bytes) { return bytes == 1 ? NPY_UINT8 : bytes == 2 ? NPY_UINT16 : NPY_UINT32; }

static PyObject *py_quantize(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"w", "dtype", "config", "col_mul", "route", NULL};
    PyObject *w, *cfgd;
    int dtype;
    adpq_config cfg;
    adpq_matrix m;
    adpq_layout lay;
    char err[ADPQ_ERRLEN] = {0};
    PyObject *col_mul = NULL;
    const char *route = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OiO|O$s:quantize", kwlist, &w, &dtype, &cfgd, &col_mul, &route))
        return NULL;
    if (pyarg_config(cfgd, &cfg) || pyarg_route(route, &cfg) || pyarg_matrix(w, dtype, &m) || pyarg_col_mul(col_mul, &m))
        return NULL;
    adpq_status st = adpq_layout_of(m.rows, m.cols, &cfg, &lay, err);
    if (st) return pyarg_raise_status(st, err);

    int stype = cfg.scale_dtype == ADPQ_F32 ? NPY_FLOAT32 : NPY_UINT16;
    npy_intp cdim = lay.code_bytes, sdim[2] = {m.rows, lay.groups_per_row};
    PyObject *codes = PyArray_SimpleNew(1, &cdim, NPY_UINT8);
    PyObject *scales = PyArray_SimpleNew(2, sdim, stype);
    PyObject *zeros = cfg.symmetric ? NULL : PyArray_SimpleNew(2, sdim, stype);
    PyObject *out = PyDict_New();
    if (!codes || !scales || (!cfg.symmetric && !zeros) || !out) goto fail;

    adpq_qmatrix q;
    memset(&q, 0, sizeof(q));
    q.codes = (uint8_t *)PyArray_DATA((PyArrayObject *)codes);
    q.scales = PyArray_DATA((PyArrayObject *)scales);
    q.zeros = zeros ? PyArray_DATA((PyArrayObject *)zeros) : NULL;
    Py_BEGIN_ALLOW_THREADS st = adpq_quantize(&m, &cfg, &q, err);
    Py_END_ALLOW_THREADS if (st) {
        Py_DECREF(codes);
        Py_DECREF(scales);
        Py_XDECREF(zeros);
        Py_DECREF(out);
        return pyarg_raise_status(st, err);
    }
    int ok = set_item(out, "codes", codes) == 0 && set_item(out, "scales", scales) == 0 &&
             set_item(out, "_passes", PyLong_FromLong(q.passes)) == 0 &&
             set_item(out, "_fixed_groups", PyLong_FromLongLong(q.fixed_groups)) == 0;
    codes = scales = NULL;
    if (ok && zeros) {
        ok = set_item(out, "zeros", zeros) == 0;
        zeros = NULL;
    }
    if (ok && q.num_outliers > 0) {
        int sb = lay.scale_bytes;
        npy_intp n_idx = (q.num_outliers * lay.index_bits + 7) / 8;
        PyObject *counts = PyArray_SimpleNew(2, sdim, count_typenum(lay.count_bytes));
        if (counts)
            memcpy(PyArray_DATA((PyArrayObject *)counts), q.outlier_counts,
                   (size_t)lay.num_groups * (size_t)lay.count_bytes);
        ok = set_item(out, "outlier_counts", counts) == 0;
        if (ok) ok = set_item(out, "outlier_indices", new_array_from(q.outlier_indices, n_idx, NPY_UINT8)) == 0;
        if (ok && q.outlier_scales) {
            (void)sb;
            ok = set_item(out, "outlier_scales", new_array_from(q.outlier_scales, q.num_outlier_groups, stype)) == 0;
        }
        if (ok && q.outlier_zeros)
            ok = set_item(out, "outlier_zeros", new_array_from(q.outlier_zeros, q.num_outlier_groups, stype)) == 0;
        if (ok && q.outlier_values)
            ok = set_item(out, "outlier_values", new_array_from(q.outlier_values, q.num_outliers, NPY_UINT16)) == 0;
    }
    adpq_free_outliers(&q);
    if (!ok) goto fail;
    return out;
fail:
    Py_XDECREF(codes);
    Py_XDECREF(scales);
    Py_XDECREF(zeros);
    Py_XDECREF(out);
    if (!PyErr_Occurred()) PyErr_NoMemory();
    return NULL;
}

static PyObject *py_outlier_mask(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"w", "dtype", "config", "col_mul", NULL};
    PyObject *w, *cfgd;
    int dtype;
    adpq_config cfg;
    adpq_matrix m;
    char err[ADPQ_ERRLEN] = {0};
    PyObject *col_mul = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OiO|O:outlier_mask", kwlist, &w, &dtype, &cfgd, &col_mul))
        return NULL;
    if (pyarg_config(cfgd, &cfg) || pyarg_matrix(w, dtype, &m) || pyarg_col_mul(col_mul, &m)) return NULL;
    npy_intp dims[2] = {m.rows, m.cols};
    PyObject *mask = PyArray_SimpleNew(2, dims, NPY_BOOL);
    if (!mask) return NULL;
    adpq_status st;
    Py_BEGIN_ALLOW_THREADS st = adpq_outlier_mask(&m, &cfg, (uint8_t *)PyArray_DATA((PyArrayObject *)mask), err);
    Py_END_ALLOW_THREADS if (st) {
        Py_DECREF(mask);
        return pyarg_raise_status(st, err);
    }
    return mask;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    adpq_qmatrix q;
    adpq_config cfg;
    adpq_matrix cm;
    char err[ADPQ_ERRLEN] = {0};
    if (pyarg_qmatrix(args, kwargs, "O!LLOLL|O:dequantize", &q, &cfg, &cm, NULL)) return NULL;
    npy_intp dims[2] = {q.rows, q.cols};
    PyObject *out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out) return NULL;
    adpq_status st;
    Py_BEGIN_ALLOW_THREADS st = adpq_dequantize(&q, &cfg, cm.col_mul, (float *)PyArray_DATA((PyArrayObject *)out), err);
    Py_END_ALLOW_THREADS if (st) {
        Py_DECREF(out);
        return pyarg_raise_status(st, err);
    }
    return out;
}

static PyObject *py_column_scales(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"w", "dtype", "threads", NULL};
    PyObject *w, *threads_o;
    int dtype;
    long long threads;
    adpq_matrix m;
    char err[ADPQ_ERRLEN] = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OiO:column_scales", kwlist, &w, &dtype, &threads_o)) return NULL;
    if (pyarg_int(threads_o, "threads", 1, INT_MAX, &threads) || pyarg_matrix(w, dtype, &m)) return NULL;
    npy_intp n = m.cols;
    PyObject *scales = PyArray_SimpleNew(1, &n, NPY_UINT16), *mul = PyArray_SimpleNew(1, &n, NPY_FLOAT32);
    if (!scales || !mul) {
        Py_XDECREF(scales);
        Py_XDECREF(mul);
        return NULL;
    }
    adpq_status st;
    Py_BEGIN_ALLOW_THREADS st = adpq_column_scales(&m, (int)threads, (uint16_t *)PyArray_DATA((PyArrayObject *)scales),
                                                   (float *)PyArray_DATA((PyArrayObject *)mul), err);
    Py_END_ALLOW_THREADS if (st) {
        Py_DECREF(scales);
        Py_DECREF(mul);
        return pyarg_raise_status(st, err);
    }
    return Py_BuildValue("(NN)", scales, mul);
}

static PyObject *py_error_stats(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"w", "dtype", "w_hat", "bins", "threads", "quantized", "kl_eps", NULL};
    PyObject *w, *what, *dq_args = NULL, *bins_o, *threads_o;
    int dtype, bins, threads;
    long long bins_ll, threads_ll;
    adpq_matrix m;
    adpq_qmatrix q;
    adpq_config cfg;
    adpq_matrix cm;
    char err[ADPQ_ERRLEN] = {0};
    double kl_eps = 1e-10;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OiOOO|Od:error_stats", kwlist, &w, &dtype, &what, &bins_o,
                                     &threads_o, &dq_args, &kl_eps))
        return NULL;
    /* bins: histograms of int64 per task; at most 2^20 bins keeps them bounded */
    if (pyarg_int(bins_o, "bins", 1, 1 << 20, &bins_ll) || pyarg_int(threads_o, "threads", 1, INT_MAX, &threads_ll))
        return NULL;
    bins = (int)bins_ll;
    threads = (int)threads_ll;
    if (dq_args == Py_None) dq_args = NULL;
    if (dq_args && !PyDict_Check(dq_args)) {
        PyErr_SetString(PyExc_TypeError, "quantized must be a dict of dequantize's keyword arguments, or None");
        return NULL;
    }
    if (!(kl_eps > 0)) {
        PyErr_SetString(PyExc_ValueError, "the KL epsilon must be > 0");
        return NULL;
    }
    if (pyarg_matrix(w, dtype, &m)) return NULL;
    void *hat = NULL;
    if (what == Py_None) { /* w_hat: the dequantization of dq_args, row by row */
        if (!dq_args) {
            PyErr_SetString(PyExc_TypeError, "error_stats needs w_hat or quantized (dequantize's keyword arguments)");
            return NULL;
        }
        PyObject *none = PyTuple_New(0);
        const int bad = !none || pyarg_qmatrix(none, dq_args, "O!LLOLL|O:error_stats quantized", &q, &cfg, &cm, NULL);
        Py_XDECREF(none);
        if (bad) return NULL;
        if (q.rows != m.rows || q.cols != m.cols) {
            PyErr_Format(PyExc_ValueError, "w is %lld x %lld but the quantized matrix is %lld x %lld", (long long)m.rows,
                         (long long)m.cols, (long long)q.rows, (long long)q.cols);
            return NULL;
        }
        cfg.threads = threads;
    } else {
        if (pyarg_array(what, "w_hat", (npy_intp)(m.rows * m.cols * 4), &hat)) return NULL;
        if (PyArray_TYPE((PyArrayObject *)what) != NPY_FLOAT32) {
            PyErr_SetString(PyExc_TypeError, "w_hat must be float32");
            return NULL;
        }
    }
    npy_intp nb = bins;
    PyObject *hw = PyArray_SimpleNew(1, &nb, NPY_INT64), *hh = PyArray_SimpleNew(1, &nb, NPY_INT64);
    if (!hw || !hh) {
        Py_XDECREF(hw);
        Py_XDECREF(hh);
        return NULL;
    }
    adpq_error_stats s;
    adpq_status st;
    int64_t *hwp = (int64_t *)PyArray_DATA((PyArrayObject *)hw), *hhp = (int64_t *)PyArray_DATA((PyArrayObject *)hh);
    Py_BEGIN_ALLOW_THREADS st = hat ? adpq_error_stats_of(&m, (const float *)hat, bins, threads, &s, hwp, hhp, err)
                                    : adpq_error_stats_q(&m, &q, &cfg, cm.col_mul, bins, threads, &s, hwp, hhp, err);
    Py_END_ALLOW_THREADS if (st) {
        Py_DECREF(hw);
        Py_DECREF(hh);
        return pyarg_raise_status(st, err);
    }
    const double kl = adpq_kl_from_histograms(hwp, hhp, bins, kl_eps);
    return Py_BuildValue("{s:d,s:d,s:d,s:d,s:d,s:N,s:N,s:d}", "sum_sq_err", s.sum_sq_err, "sum_sq_ref", s.sum_sq_ref,
                         "max_abs_err", s.max_abs_err, "min", s.min, "max", s.max, "hist_w", hw, "hist_hat", hh,
                         "kl_divergence", kl);
}

static PyObject *py_layout(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"rows", "cols", "config", NULL};
    long long rows, cols;
    PyObject *cfgd;
    adpq_config cfg;
    adpq_layout lay;
    char err[ADPQ_ERRLEN] = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLO:layout", kwlist, &rows, &cols, &cfgd)) return NULL;
    if (pyarg_config(cfgd, &cfg)) return NULL;
    adpq_status st = adpq_layout_of(rows, cols, &cfg, &lay, err);
    if (st) return pyarg_raise_status(st, err);
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:i,s:i,s:i}", "group_size", (long long)lay.group_size, "groups_per_row",
                         (long long)lay.groups_per_row, "num_groups", (long long)lay.num_groups, "code_bytes",
                         (long long)lay.code_bytes, "count_bytes", lay.count_bytes, "index_bits", lay.index_bits,
                         "scale_bytes", lay.scale_bytes);
}

static PyObject *py_kth_largest(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"keys", "k", NULL};
    PyObject *obj;
    long long k;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OL:kth_largest", kwlist, &obj, &k)) return NULL;
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, NPY_UINT32, 1, 1, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ENSURECOPY);
    if (!a) return NULL;
    const npy_intp n = PyArray_SIZE(a);
    if (k < 1 || k > n) {
        Py_DECREF(a);
        PyErr_Format(PyExc_ValueError, "k must be in [1, %lld], got %lld", (long long)n, k);
        return NULL;
    }
    uint32_t v;
    Py_BEGIN_ALLOW_THREADS v = adpq_select_kth_largest((uint32_t *)PyArray_DATA(a), (int64_t)n, (int64_t)k);
    Py_END_ALLOW_THREADS Py_DECREF(a);
    return PyLong_FromUnsignedLong(v);
}

static PyObject *py_set_kernels(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"name", NULL};
    const char *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s:set_kernels", kwlist, &name)) return NULL;
    const char *prev = adpq_kernels_name();
    if (adpq_set_kernels(name) != 0) {
        PyErr_Format(PyExc_ValueError, "kernels '%s' are not available on this CPU (use 'scalar', 'avx2' or 'auto')",
                     name);
        return NULL;
    }
    return PyUnicode_FromString(prev);
}

static PyObject *py_kernels(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(adpq_kernels_name());
}

/* float32 -> float16 / bfloat16 bits with the core's conversion (tests compare with NumPy). */
static PyObject *py_round_f32(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "to", NULL};
    PyObject *obj;
    int to;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oi:round_f32", kwlist, &obj, &to)) return NULL;
    if (to != ADPQ_F16 && to != ADPQ_BF16) {
        PyErr_Format(PyExc_ValueError, "to must be 1 (float16) or 2 (bfloat16), got %d", to);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, NPY_FLOAT32, 1, 1, NPY_ARRAY_CARRAY_RO);
    if (!a) return NULL;
    npy_intp n = PyArray_SIZE(a);
    PyObject *out = PyArray_SimpleNew(1, &n, NPY_UINT16);
    if (!out) {
        Py_DECREF(a);
        return NULL;
    }
    const float *src = (const float *)PyArray_DATA(a);
    uint16_t *dst = (uint16_t *)PyArray_DATA((PyArrayObject *)out);
    for (npy_intp i = 0; i < n; i++) dst[i] = to == ADPQ_BF16 ? adpq_f32_to_bf16(src[i]) : adpq_f32_to_f16(src[i]);
    Py_DECREF(a);
    return out;
}

/* ---------------------------------------------------------------- file mappings
 * A checkpoint's tensors are mapped one at a time (safetensors_io.read_tensor). Python's mmap
 * module maps and unmaps with the GIL held; a pipeline of threads then waits on it, since unmapping
 * a touched range costs a TLB shootdown. Here both happen without the GIL. */

typedef struct {
    void *addr;
    size_t len;
} mapping;

static void mapping_free(PyObject *cap) {
    mapping *m = (mapping *)PyCapsule_GetPointer(cap, "adpq.mapping");
    if (!m) {
        PyErr_Clear();
        return;
    }
    Py_BEGIN_ALLOW_THREADS munmap(m->addr, m->len);
    Py_END_ALLOW_THREADS free(m);
}

static PyObject *py_map_range(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"path", "offset", "nbytes", NULL};
    PyObject *path;
    long long off, n;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&LL:map_range", kwlist, PyUnicode_FSConverter, &path, &off, &n))
        return NULL;
    if (off < 0 || n < 1) {
        Py_DECREF(path);
        PyErr_SetString(PyExc_ValueError, "map_range needs offset >= 0 and nbytes >= 1");
        return NULL;
    }
    const long long page = (long long)sysconf(_SC_PAGESIZE), start = off - off % page;
    const size_t len = (size_t)(n + (off - start));
    const char *cpath = PyBytes_AS_STRING(path);
    void *addr = MAP_FAILED;
    int err_no = 0, short_file = 0;
    Py_BEGIN_ALLOW_THREADS int fd = open(cpath, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err_no = errno;
    } else {
        struct stat st;
        if (fstat(fd, &st) != 0) err_no = errno;
        else if ((long long)st.st_size < off + n) short_file = 1; /* a mapping past the end would SIGBUS */
        else if ((addr = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)start)) == MAP_FAILED) err_no = errno;
        close(fd);
    }
    Py_END_ALLOW_THREADS if (addr == MAP_FAILED) {
        if (short_file)
            PyErr_Format(PyExc_ValueError, "the file ends before byte %lld", off + n);
        else {
            errno = err_no;
            PyErr_SetFromErrno(PyExc_OSError); /* (the caller names the file) */
        }
        Py_DECREF(path);
        return NULL;
    }
    Py_DECREF(path);
    mapping *m = (mapping *)malloc(sizeof(mapping));
    PyObject *cap = m ? PyCapsule_New(m, "adpq.mapping", mapping_free) : NULL;
    if (!cap) {
        munmap(addr, len);
        free(m);
        return m ? NULL : PyErr_NoMemory();
    }
    m->addr = addr;
    m->len = len;
    npy_intp dims = (npy_intp)n;
    PyObject *arr = PyArray_New(&PyArray_Type, 1, &dims, NPY_UINT8, NULL, (char *)addr + (off - start), 0,
                                NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL); /* read-only */
    if (!arr) {
        Py_DECREF(cap);
        return NULL;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)arr, cap) < 0) { /* (steals cap) */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* (functions with keywords, cast through void (*)(void) as CPython's own modules do) */
#define KW(f) ((PyCFunction)(void (*)(void))(f))
#define KWARGS (METH_VARARGS | METH_KEYWORDS)

/* adpqmodule_gptq.c */
PyObject *pygptq_inverse(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *pygptq(PyObject *self, PyObject *args, PyObject *kwargs);

/* python/adpq/_core.pyi documents each function's arguments, result and exceptions in full. */
static PyMethodDef methods[] = {
    {"map_range", KW(py_map_range), KWARGS,
     "map_range(path, offset, nbytes) -> read-only uint8 array of those bytes of the file, memory-mapped; mapped "
     "and unmapped (when the array is freed) without the GIL"},
    {"quantize", KW(py_quantize), KWARGS,
     "quantize(w, dtype, config, col_mul=None, *, route='auto') -> dict of arrays by name (codes, scales, zeros, "
     "outlier_*) and diagnostics (_passes, _fixed_groups). config: a dict of the adpq_config fields; col_mul: float32 "
     "column factors; route: 'auto' | 'one_pass' | 'two_pass' (the same output, a speed choice)"},
    {"outlier_mask", KW(py_outlier_mask), KWARGS,
     "outlier_mask(w, dtype, config, col_mul=None) -> bool array, the outliers quantize would choose"},
    {"dequantize", KW(py_dequantize), KWARGS,
     "dequantize(arrays, rows, cols, config, num_outliers, num_outlier_groups, col_mul=None) -> float32 array "
     "(arrays: quantize's arrays by name; col_mul: float32 factors each column is multiplied by, the column scales)"},
    {"layout", KW(py_layout), KWARGS, "layout(rows, cols, config) -> dict of the sizes every array follows"},
    {"column_scales", KW(py_column_scales), KWARGS,
     "column_scales(w, dtype, threads) -> (uint16 bfloat16 bits of the column scales c, float32 1 / c), "
     "from the mean |w| of each column (python/adpq/reference/columns.py)"},
    {"error_stats", KW(py_error_stats), KWARGS,
     "error_stats(w, dtype, w_hat, bins, threads, quantized=None, kl_eps=1e-10) -> dict of sums, histograms and "
     "their KL divergence (w_hat None: the dequantization of `quantized`, dequantize's keyword arguments as a dict, "
     "row by row, never stored whole)"},
    {"matmul_plan", KW(pymm_plan), KWARGS,
     "matmul_plan(arrays, rows, cols, config, num_outliers, num_outlier_groups, col_mul=None) -> MatmulPlan "
     "(dequantize's arguments): the arrays validated, the outliers as a sparse correction; it keeps the arrays"},
    {"matmul", (PyCFunction)(void (*)(void))pymm_matmul, METH_FASTCALL | METH_KEYWORDS,
     "matmul(plan, x, out=None, mode=0, threads=1) -> out: out[i, r] = sum_j x[i, j] * w_hat[r, j] (x: 2-D "
     "float32, contiguous rows; out: None or a C-contiguous float32 (n, rows) array; mode 0 float32, 1 int8 "
     "activations)"},
    {"gptq_inverse", KW(pygptq_inverse), KWARGS,
     "gptq_inverse(h, damp, act_order, threads) -> (U float32 (n, n), perm int64 (n,)): the upper U with U^T U = "
     "the damped, permuted h's inverse (h: float64 (n, n))"},
    {"gptq", KW(pygptq), KWARGS,
     "gptq(w, h, mask, scales, zeros, outlier_scales, outlier_zeros, *, bits, group_size, symmetric, integer_zero, "
     "scale_dtype, damp, block_size, act_order, refit, threads) -> dict: codes (packed), values, the four grids"},
    {"kth_largest", KW(py_kth_largest), KWARGS, "kth_largest(keys, k) -> the k-th largest of uint32 keys (tests)"},
    {"set_kernels", KW(py_set_kernels), KWARGS,
     "set_kernels(name) -> the previous name; name 'scalar' | 'avx2' | 'auto': the kernel set each later call reads "
     "once"},
    {"kernels", py_kernels, METH_NOARGS, "kernels() -> name of the kernel set calls use now"},
    {"round_f32", KW(py_round_f32), KWARGS, "round_f32(x, to) -> uint16 bits of float32 x as float16 (to=1) or bfloat16 (to=2)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_core", "adpq C core", -1, methods,
                                       NULL,                  NULL,    NULL,           NULL};

PyMODINIT_FUNC PyInit__core(void) {
    if (pyarg_import_numpy() || pymm_ready() < 0) return NULL;
    adpq_set_kernels("auto");
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddStringConstant(m, "VERSION", adpq_version()) < 0 ||
        PyModule_AddIntConstant(m, "MIN_GROUP_SIZE", ADPQ_MIN_GROUP_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
