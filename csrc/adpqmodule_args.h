/* adpqmodule_args.h - the Python boundary's argument conversions (adpqmodule_args.c), shared with
 * adpqmodule.c. Part of the extension, not of the C library. Each returns 0, or -1 with a Python
 * exception set. */
#ifndef ADPQ_MODULE_ARGS_H
#define ADPQ_MODULE_ARGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
/* one NumPy C-API table for both files of the extension: adpqmodule_args.c holds it and fills it
 * (pyarg_import_numpy), adpqmodule.c defines NO_IMPORT_ARRAY and uses it */
#define PY_ARRAY_UNIQUE_SYMBOL adpq_ARRAY_API
#include <numpy/arrayobject.h>

#include "adpq.h"

/* imports NumPy's C API (import_array) for the extension: 0, or -1 with an exception set */
int pyarg_import_numpy(void);
/* the C core's status as a Python exception (MemoryError or ValueError with err); returns NULL */
PyObject *pyarg_raise_status(adpq_status st, const char *err);
/* an int argument (Python or NumPy integer, not a bool) in [lo, hi] into *out; TypeError/ValueError
 * naming it otherwise */
int pyarg_int(PyObject *v, const char *name, long long lo, long long hi, long long *out);
/* a config dict with exactly adpq_config's fields (route aside) into cfg; route AUTO */
int pyarg_config(PyObject *obj, adpq_config *cfg);
/* "auto" (or NULL), "one_pass", "two_pass" into cfg->route */
int pyarg_route(const char *route, adpq_config *cfg);
/* a 2-D weight array of adpq_dtype `dtype` as the core sees it (contiguous rows, any row stride) */
int pyarg_matrix(PyObject *obj, int dtype, adpq_matrix *m);
/* None, or a contiguous float32 vector of m->cols finite values, into m->col_mul */
int pyarg_col_mul(PyObject *obj, adpq_matrix *m);
/* obj a C-contiguous array of exactly nbytes bytes: its data */
int pyarg_array(PyObject *obj, const char *name, npy_intp nbytes, void **data);
/* dequantize's arguments (arrays by name, rows, cols, config, num_outliers, num_outlier_groups,
 * col_mul; `format` names the caller in messages) into q, cfg and cm->col_mul; owners: NULL, or 2
 * slots that get borrowed references to the objects holding the data (the arrays dict, col_mul) */
int pyarg_qmatrix(PyObject *args, PyObject *kwargs, const char *format, adpq_qmatrix *q, adpq_config *cfg,
                  adpq_matrix *cm, PyObject **owners);

/* adpqmodule_matmul.c: the plan type and the two functions of the matmul (adpq._core.matmul_plan,
 * adpq._core.matmul) */
int pymm_ready(void);
PyObject *pymm_plan(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *pymm_matmul(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);

#endif
