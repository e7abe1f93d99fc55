/* Small dense products of the passes' K x K blocks, for lvd.pc._gemm (compiled on first use
 * with the machine's C compiler, -O3 -march=native; loaded with ctypes, driven by numba).
 *
 * The passes multiply, per (node, group), a [B, K] row block of a level tensor by a K x K edge
 * table (K = 16 .. 256, lvd.pc._gemm.MAX_K). torch's batched matmul runs these shapes at a fraction of the machine's
 * speed (measured at K = 32, B = 512: 58-66 GFLOP/s on one core of the 2-vCPU AMD EPYC, against
 * 100-114 for the kernels below). Each output tile of ROWS rows x 32 columns (16 where K is an
 * odd multiple of 16) lives in registers while the inner loop runs over the shared dimension:
 * per step one row of the right-hand operand (two 16-float vectors) is loaded and multiplied by
 * ROWS broadcast scalars. GCC's vector extensions keep the code portable: a 16-float vector is
 * one AVX-512 register, two AVX registers or four SSE/NEON ones.
 *
 * Every output entry is one sum over the shared dimension in its order, so results do not
 * depend on how callers split rows between threads.
 */
#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__)
#define ROWS 8 /* 16 accumulators of 16 floats: half the 32 vector registers */
#else
#define ROWS 4 /* 4 rows x 2 vectors of 16 floats: 16 AVX registers of 8 floats */
#endif
#define INL static inline __attribute__((always_inline))

typedef float vec __attribute__((vector_size(64)));

INL vec ld(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
INL void st(float *p, vec v) { memcpy(p, &v, sizeof v); }

/* C[r, 0:W] = sum_k A[r * lda + k * sa] * Bm[k * ldb + 0:W] for r < R (W = 16 * NV). */
INL void tile(const float *A, long lda, long sa, const float *Bm, long ldb, float *C, long ldc, long K,
              const int R, const int NV) {
    vec acc[ROWS][2];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = (vec){0};
    for (long k = 0; k < K; k++) {
        vec b0 = ld(Bm + k * ldb), b1 = NV > 1 ? ld(Bm + k * ldb + 16) : b0;
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float a = A[r * lda + k * sa];
            acc[r][0] += a * b0;
            if (NV > 1) acc[r][1] += a * b1;
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) st(C + r * ldc + 16 * v, acc[r][v]);
}

/* C[0:rows, j0:j0 + W] = A[0:rows, :] Bm[:, j0:j0 + W] (A's rows lda apart, Bm's rows ldb apart). */
INL void panel(const float *A, long lda, const float *Bm, long ldb, float *C, long ldc, long rows, long K,
               const int NV) {
    long r = 0;
    for (; r + ROWS <= rows; r += ROWS) tile(A + r * lda, lda, 1, Bm, ldb, C + r * ldc, ldc, K, ROWS, NV);
    for (; r < rows; r++) tile(A + r * lda, lda, 1, Bm, ldb, C + r * ldc, ldc, K, 1, NV);
}

/* C[rows, K] = A[rows, K] B[K, K] (row-major, contiguous). */
void lvd_nn(const float *A, const float *Bm, float *C, long rows, long K) {
    long j = 0;
    for (; j + 32 <= K; j += 32) panel(A, K, Bm + j, K, C + j, K, rows, K, 2);
    if (j < K) panel(A, K, Bm + j, K, C + j, K, rows, K, 1);
}

/* G[i, :] = sum_b R[b, i] U[b, :] for i0 <= i < i1 (R, U [rows, K]; G [K, K]). */
void lvd_tn(const float *R, const float *U, float *G, long rows, long K, long i0, long i1) {
    for (long j = 0; j < K; j += 32) {
        int two = K - j >= 32;
        long i = i0;
        for (; i + ROWS <= i1; i += ROWS) {
            if (two) tile(R + i, 1, K, U + j, K, G + i * K + j, K, rows, ROWS, 2);
            else tile(R + i, 1, K, U + j, K, G + i * K + j, K, rows, ROWS, 1);
        }
        for (; i < i1; i++) {
            if (two) tile(R + i, 1, K, U + j, K, G + i * K + j, K, rows, 1, 2);
            else tile(R + i, 1, K, U + j, K, G + i * K + j, K, rows, 1, 1);
        }
    }
}

/* The tile height compiled in (the drivers split tn's rows of G in multiples of it). */
long lvd_rows(void) { return ROWS; }
