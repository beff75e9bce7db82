/* kernels.c - the one place that chooses a kernel set: the process default that each public entry
 * point reads once (api.c) and passes down. "auto" is AVX2 when the CPU has AVX2, F16C and FMA
 * (the matmul kernels use FMA). */
#include <stdatomic.h>

#include "internal.h"

/* atomic: another thread may set the default while an entry point reads it */
static _Atomic(const adpq_kernels *) default_kernels = NULL;

int adpq_avx2_supported(void) {
#ifdef ADPQ_HAVE_AVX2_KERNELS
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

const adpq_kernels *adpq_kernels_by_name(const char *name) {
    if (strcmp(name, "scalar") == 0) return &adpq_kernels_scalar;
#ifdef ADPQ_HAVE_AVX2_KERNELS
    if (strcmp(name, "avx2") == 0) return adpq_avx2_supported() ? &adpq_kernels_avx2 : NULL;
    if (strcmp(name, "auto") == 0) return adpq_avx2_supported() ? &adpq_kernels_avx2 : &adpq_kernels_scalar;
#else
    if (strcmp(name, "auto") == 0) return &adpq_kernels_scalar;
#endif
    return NULL;
}

int adpq_set_kernels(const char *name) {
    const adpq_kernels *K = name ? adpq_kernels_by_name(name) : NULL;
    if (!K) return -1;
    atomic_store(&default_kernels, K);
    return 0;
}

const adpq_kernels *adpq_active_kernels(void) {
    const adpq_kernels *K = atomic_load(&default_kernels);
    if (!K) {
        K = adpq_kernels_by_name("auto");
        atomic_store(&default_kernels, K);
    }
    return K;
}

const char *adpq_kernels_name(void) { return adpq_active_kernels()->name; }
