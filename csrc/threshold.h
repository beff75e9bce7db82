/* threshold.h - the tensor-scope threshold (threshold.c). Not the API. */
#ifndef ADPQ_THRESHOLD_H
#define ADPQ_THRESHOLD_H

#include "rows.h"

/* tensor scope, two passes: sets thr_key / tie_quota (allocated into *quota_out) */
int adpq_tensor_threshold(qctx *c, int64_t **quota_out, char *err);
/* tensor scope, solved, large enough for a sample, and cfg->route asking for it: quantizes in one
 * pass over the matrix, then fixes the groups whose outliers the sample's estimate got wrong;
 * ADPQ_ERR_AGAIN: the one pass was not taken or the sample was unlucky, and nothing is done
 * (use the two passes) */
#define ADPQ_ERR_AGAIN 100
int adpq_tensor_one_pass(qctx *c, int64_t **quota_out, char *err);

#endif
