// Harness for benchmarks/ggml_matvec.py: times ggml's CPU mul_mat exactly as llama.cpp's decode
// (n = 1) and prefill (n > 1) run it, through ggml's own backend API. Built at run time by
// ggml_matvec.py against a llama.cpp (or ggml) build: nothing of ggml is vendored here.
//
// The weight tensor lives either in the plain CPU buffer (ggml_vec_dot_<type>_q8_0 over rows) or,
// as llama.cpp does by default (llama_model_params.use_extra_bufts = true), in the CPU backend's
// "extra" buffer type CPU_REPACK, which reorders e.g. Q4_0 into block_q4_0x8 on AVX2 and runs the
// interleaved gemv/gemm kernels. Each timed call is one ggml_backend_graph_compute of a graph with a
// single GGML_OP_MUL_MAT: it quantizes the float32 activations to the weight's vec_dot_type (q8_0
// for q4_0/q8_0) and then runs the dot products, as in a llama.cpp decode step.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

// The CPU backend's extra buffer type of the given name ("CPU_REPACK"), or NULL.
static ggml_backend_buffer_type_t find_extra_buft(ggml_backend_t backend, const char * name) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    ggml_backend_dev_get_extra_bufts_t get_extra =
        (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    if (!get_extra) {
        return NULL;
    }
    for (ggml_backend_buffer_type_t * p = get_extra(dev); p && *p; ++p) {
        if (strcmp(ggml_backend_buft_name(*p), name) == 0) {
            return *p;
        }
    }
    return NULL;
}

// W: rows x cols float32 (row-major), X: n x cols float32, Y: n x rows float32 (out).
// type: enum ggml_type of the weights (GGML_TYPE_F32, GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, ...).
// repack: 1 to put the weights in CPU_REPACK as llama.cpp does by default (falls back to the plain
// buffer where ggml has no repacked layout for this type/shape/CPU), 0 for the plain CPU buffer.
// times: repeats seconds, one per graph compute after warmup untimed ones.
// info: "<buffer type name> <1 if the repacked kernels are used else 0> <bytes of packed weights>".
// Returns 0, or a negative error code (with a message in info).
int adpq_ggml_matmul_bench(int type, const float * W, int64_t rows, int64_t cols,
                           const float * X, int64_t n, int threads, int repack,
                           int warmup, int repeats, double * times, float * Y,
                           char * info, int info_len) {
    int rc = 0;
    ggml_backend_t backend = ggml_backend_cpu_init();
    if (!backend) {
        snprintf(info, info_len, "ggml_backend_cpu_init failed");
        return -1;
    }
    ggml_backend_cpu_set_n_threads(backend, threads);

    ggml_backend_buffer_type_t buft = ggml_backend_cpu_buffer_type();
    if (repack) {
        ggml_backend_buffer_type_t r = find_extra_buft(backend, "CPU_REPACK");
        if (r) {
            buft = r;
        }
    }

    // weights: their own context and buffer, as llama.cpp's model loader does
    struct ggml_init_params pw = { ggml_tensor_overhead() * 2, NULL, true };
    struct ggml_context * ctx_w = ggml_init(pw);
    struct ggml_tensor * w = ggml_new_tensor_2d(ctx_w, (enum ggml_type) type, cols, rows);
    ggml_set_name(w, "w");
    ggml_backend_buffer_t buf_w = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, buft);
    if (buf_w && buft != ggml_backend_cpu_buffer_type() && w->extra == NULL) {
        // no repacked layout for this type/shape on this CPU: llama.cpp keeps such a weight in the
        // plain CPU buffer (the repack buffer type's supports_op says no), and so do we
        ggml_backend_buffer_free(buf_w);
        ggml_free(ctx_w);
        buft  = ggml_backend_cpu_buffer_type();
        ctx_w = ggml_init(pw);
        w     = ggml_new_tensor_2d(ctx_w, (enum ggml_type) type, cols, rows);
        ggml_set_name(w, "w");
        buf_w = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, buft);
    }
    if (!buf_w) {
        snprintf(info, info_len, "weight buffer allocation failed");
        rc = -2;
        goto free_w;
    }
    ggml_backend_buffer_set_usage(buf_w, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

    const size_t wbytes = ggml_nbytes(w);
    if (type == GGML_TYPE_F32) {
        ggml_backend_tensor_set(w, W, 0, wbytes);
    } else {
        void * q = malloc(wbytes);
        size_t got = ggml_quantize_chunk((enum ggml_type) type, W, q, 0, rows, cols, NULL);
        if (got != wbytes) {
            free(q);
            snprintf(info, info_len, "ggml_quantize_chunk wrote %zu bytes, expected %zu", got, wbytes);
            rc = -3;
            goto free_bw;
        }
        ggml_backend_tensor_set(w, q, 0, wbytes);  // CPU_REPACK reorders the blocks here
        free(q);
    }

    // activations, output, graph
    {
        struct ggml_init_params pg = { ggml_tensor_overhead() * 8 + ggml_graph_overhead(), NULL, true };
        struct ggml_context * ctx_g = ggml_init(pg);
        struct ggml_tensor * x = ggml_new_tensor_2d(ctx_g, GGML_TYPE_F32, cols, n);
        ggml_set_name(x, "x");
        struct ggml_tensor * y = ggml_mul_mat(ctx_g, w, x);
        ggml_set_name(y, "y");
        struct ggml_cgraph * gf = ggml_new_graph(ctx_g);
        ggml_build_forward_expand(gf, y);
        ggml_backend_buffer_t buf_g = ggml_backend_alloc_ctx_tensors(ctx_g, backend);
        if (!buf_g) {
            snprintf(info, info_len, "activation buffer allocation failed");
            rc = -4;
        } else {
            ggml_backend_tensor_set(x, X, 0, ggml_nbytes(x));
            for (int i = 0; i < warmup && rc == 0; ++i) {
                if (ggml_backend_graph_compute(backend, gf) != GGML_STATUS_SUCCESS) {
                    snprintf(info, info_len, "ggml_backend_graph_compute failed");
                    rc = -5;
                }
            }
            for (int i = 0; i < repeats && rc == 0; ++i) {
                double t0 = now_s();
                enum ggml_status st = ggml_backend_graph_compute(backend, gf);
                times[i] = now_s() - t0;
                if (st != GGML_STATUS_SUCCESS) {
                    snprintf(info, info_len, "ggml_backend_graph_compute failed");
                    rc = -5;
                }
            }
            if (rc == 0) {
                ggml_backend_tensor_get(y, Y, 0, ggml_nbytes(y));
                snprintf(info, info_len, "%s %d %zu", ggml_backend_buft_name(buft), w->extra != NULL, wbytes);
            }
            ggml_backend_buffer_free(buf_g);
        }
        ggml_free(ctx_g);
    }

free_bw:
    ggml_backend_buffer_free(buf_w);
free_w:
    ggml_free(ctx_w);
    ggml_backend_free(backend);
    return rc;
}
