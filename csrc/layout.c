/* layout.c - the pieces every driver shares: the version, error text, dtype names, and the array
 * layout derived from (rows, cols, config) with the checks of a config. */
#include <math.h>
#include <stdio.h>

#include "internal.h"

const char *adpq_version(void) { return ADPQ_VERSION; }

void adpq_set_err(char *err, const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, ADPQ_ERRLEN, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- layout */

const char *adpq_dtype_name(int d) { return d == ADPQ_F16 ? "float16" : d == ADPQ_BF16 ? "bfloat16" : "float32"; }

adpq_status adpq_layout_of(int64_t rows, int64_t cols, const adpq_config *cfg, adpq_layout *lay, char *err) {
    if (rows < 1 || cols < 1) {
        adpq_set_err(err, "matrix must have at least one row and one column (got %lld x %lld)", (long long)rows,
                     (long long)cols);
        return ADPQ_ERR_ARG;
    }
    if (rows > INT64_MAX / 8 / cols) {
        adpq_set_err(err, "matrix too large (%lld x %lld)", (long long)rows, (long long)cols);
        return ADPQ_ERR_ARG;
    }
    if (cfg->bits != 2 && cfg->bits != 3 && cfg->bits != 4 && cfg->bits != 8) {
        adpq_set_err(err, "bits must be 2, 3, 4 or 8 (got %d)", cfg->bits);
        return ADPQ_ERR_ARG;
    }
    if (cfg->group_size != -1 && cfg->group_size < ADPQ_MIN_GROUP_SIZE) {
        adpq_set_err(err, "group_size must be -1 (one group per row) or >= %d (got %lld)", ADPQ_MIN_GROUP_SIZE,
                     (long long)cfg->group_size);
        return ADPQ_ERR_ARG;
    }
    if (cfg->scope != ADPQ_SCOPE_TENSOR && cfg->scope != ADPQ_SCOPE_GROUP) {
        adpq_set_err(err, "unknown outlier scope %d", cfg->scope);
        return ADPQ_ERR_ARG;
    }
    if (cfg->outlier_format != ADPQ_OUTLIERS_GROUP && cfg->outlier_format != ADPQ_OUTLIERS_FP16) {
        adpq_set_err(err, "unknown outlier format %d", cfg->outlier_format);
        return ADPQ_ERR_ARG;
    }
    if (cfg->scale_dtype != ADPQ_F16 && cfg->scale_dtype != ADPQ_BF16 && cfg->scale_dtype != ADPQ_F32) {
        adpq_set_err(err, "unknown scale dtype %d", cfg->scale_dtype);
        return ADPQ_ERR_ARG;
    }
    if (!(cfg->outlier_ratio >= 0.0 && cfg->outlier_ratio <= 0.5)) {
        adpq_set_err(err, "outlier_ratio must be in [0, 0.5] (got %g)", cfg->outlier_ratio);
        return ADPQ_ERR_ARG;
    }
    if (!(cfg->gamma > 0.0) || !isfinite(cfg->gamma)) {
        adpq_set_err(err, "gamma must be > 0 and finite (got %g)", cfg->gamma);
        return ADPQ_ERR_ARG;
    }
    if (cfg->use_lam && (!(cfg->lam >= 0.0) || !isfinite(cfg->lam))) {
        adpq_set_err(err, "lam must be >= 0 and finite (got %g)", cfg->lam);
        return ADPQ_ERR_ARG;
    }
    if (cfg->route != ADPQ_ROUTE_AUTO && cfg->route != ADPQ_ROUTE_ONE_PASS && cfg->route != ADPQ_ROUTE_TWO_PASS) {
        adpq_set_err(err, "unknown route %d", cfg->route);
        return ADPQ_ERR_ARG;
    }
    if (cfg->threads < 1) {
        adpq_set_err(err, "threads must be >= 1 (got %d)", cfg->threads);
        return ADPQ_ERR_ARG;
    }
    int64_t g = cfg->group_size == -1 ? cols : cfg->group_size;
    if (g > cols) g = cols;
    lay->group_size = g;
    lay->groups_per_row = (cols + g - 1) / g;
    lay->num_groups = rows * lay->groups_per_row;
    lay->code_bytes = (rows * cols * cfg->bits + 7) / 8;
    lay->count_bytes = g <= 255 ? 1 : g <= 65535 ? 2 : 4;
    int ib = 1;
    while (((int64_t)1 << ib) < g) ib++;
    lay->index_bits = ib;
    lay->scale_bytes = cfg->scale_dtype == ADPQ_F32 ? 4 : 2;
    return ADPQ_OK;
}

