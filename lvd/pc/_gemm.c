/* Small dense products of the passes' K x K blocks, for lvd.pc._gemm (compiled on first use
 * with the machine's C compiler, -O3 -march=native; loaded with ctypes, driven by numba).
 *
 * The passes multiply, per (node, group), a [B, K] row block of a level tensor by a K x K edge
 * table (K a multiple of 16, at most lvd.pc.kernels.MAX_K). Each output tile of ROWS rows x
 * 2 VW columns lives in registers while the inner loop runs over the shared dimension: per
 * step one row of the right-hand operand (two vectors of VW floats) is loaded and multiplied
 * by ROWS broadcast scalars.
 *
 * The vector width and the tile height follow the instruction set the compiler targets, so
 * that the 2 ROWS accumulators, the two operand vectors and the broadcast fit the register
 * file:
 *   AVX-512 (32 registers of 16 floats): VW = 16, ROWS = 8 (16 accumulators);
 *   AVX/AVX2 (16 registers of 8 floats):  VW = 8,  ROWS = 6 (12 accumulators);
 *   otherwise (SSE, NEON: 4 floats):      VW = 4,  ROWS = 4 (8 accumulators).
 * A tile wider than the register file spills its accumulators to the stack on every step
 * (16-float vectors on AVX2 did: 537 of 828 instructions of lvd_nn touched the stack, and the
 * kernel ran at 1-3.5 GFLOP/s against torch's 20-63). Whether the kernels are used at all is
 * decided by measurement against torch on the machine (lvd.pc.kernels).
 *
 * Every output entry is one sum over the shared dimension in its order, so results do not
 * depend on how callers split rows between threads.
 */
#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__)
#define VW 16
#define ROWS 8
#elif defined(__AVX__)
#define VW 8
#define ROWS 6
#else
#define VW 4
#define ROWS 4
#endif
#define TW (2 * VW) /* tile width in floats */
#define INL static inline __attribute__((always_inline))

typedef float vec __attribute__((vector_size(4 * VW)));

INL vec ld(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
INL void st(float *p, vec v) { memcpy(p, &v, sizeof v); }

/* C[r, 0:W] = sum_k A[r * lda + k * sa] * Bm[k * ldb + 0:W] for r < R (W = VW * NV). */
INL void tile(const float *A, long lda, long sa, const float *Bm, long ldb, float *C, long ldc, long K,
              const int R, const int NV) {
    vec acc[ROWS][2];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = (vec){0};
    for (long k = 0; k < K; k++) {
        vec b0 = ld(Bm + k * ldb), b1 = NV > 1 ? ld(Bm + k * ldb + VW) : b0;
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float a = A[r * lda + k * sa];
            acc[r][0] += a * b0;
            if (NV > 1) acc[r][1] += a * b1;
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) st(C + r * ldc + VW * v, acc[r][v]);
}

/* C[0:rows, j0:j0 + W] = A[0:rows, :] Bm[:, j0:j0 + W] (A's rows lda apart, Bm's rows ldb apart). */
INL void panel(const float *A, long lda, const float *Bm, long ldb, float *C, long ldc, long rows, long K,
               const int NV) {
    long r = 0;
    for (; r + ROWS <= rows; r += ROWS) tile(A + r * lda, lda, 1, Bm, ldb, C + r * ldc, ldc, K, ROWS, NV);
    for (; r < rows; r++) tile(A + r * lda, lda, 1, Bm, ldb, C + r * ldc, ldc, K, 1, NV);
}

/* C[rows, K] = A[rows, K] B[K, K] (row-major, contiguous; K a multiple of 16, hence of VW). */
void lvd_nn(const float *A, const float *Bm, float *C, long rows, long K) {
    long j = 0;
    for (; j + TW <= K; j += TW) panel(A, K, Bm + j, K, C + j, K, rows, K, 2);
    for (; j < K; j += VW) panel(A, K, Bm + j, K, C + j, K, rows, K, 1);
}

/* G[i, :] = sum_b R[b, i] U[b, :] for i0 <= i < i1 (R, U [rows, K]; G [K, K]). */
void lvd_tn(const float *R, const float *U, float *G, long rows, long K, long i0, long i1) {
    for (long j = 0; j < K;) {
        int two = K - j >= TW;
        long i = i0;
        for (; i + ROWS <= i1; i += ROWS) {
            if (two) tile(R + i, 1, K, U + j, K, G + i * K + j, K, rows, ROWS, 2);
            else tile(R + i, 1, K, U + j, K, G + i * K + j, K, rows, ROWS, 1);
        }
        for (; i < i1; i++) {
            if (two) tile(R + i, 1, K, U + j, K, G + i * K + j, K, rows, 1, 2);
            else tile(R + i, 1, K, U + j, K, G + i * K + j, K, rows, 1, 1);
        }
        j += two ? TW : VW;
    }
}

/* The tile height compiled in (the drivers split tn's rows of G in multiples of it). */
long lvd_rows(void) { return ROWS; }

/* The vector width compiled in, in floats (16: AVX-512, 8: AVX/AVX2, 4: otherwise). */
long lvd_vector_width(void) { return VW; }
