/* Selection kernels (OpenCL C 1.2, float32): distances and similarities, facility-location gains and coverage
 * updates over a similarity block that stays on the device, fused nearest-selected / k-means assignment,
 * cross-covariance accumulation, and per-group top-k by radix select.
 *
 * Host code: nessa/accel/selection_ops.py. Numpy oracle: nessa/accel/reference/selection.py.
 *
 * A "value" is what a kernel computes from a pair of rows (mode): the squared distance, the distance,
 * exp(-dist/param) or the dot product (of pre-normalized rows, i.e. the cosine). A "similarity" is
 * offset + sign * value, set to 0 when below thr: max_minus_dist is offset M, sign -1; exp and cosine are offset 0,
 * sign 1; k-means is offset 0, sign -1, thr -inf (argmax of -||a-b||^2).
 *
 * Two pairwise-block kernels: sel_pairwise (register-blocked: each work-item computes an 8 x 32 block of dot products
 * from A and B packed by sel_pack_panels, then distances from the row norms, no barriers in the inner loop; what CPUs
 * (PoCL) and GPUs run) and
 * sel_pairwise_tiled (classic local-memory tiles of SEL_TS x SEL_TS; what the FPGA build uses, where __local arrays
 * become on-chip RAM). Every global size is rounded up and every work-item checks its bounds, so any size works.
 * Every reduction runs in a fixed order, so a result does not depend on which other items were computed in the same
 * launch (exact lazy greedy relies on this for the facility-location gains).
 */

#define SEL_TS 16
#define SEL_GL 64
#define SEL_RB 8 /* rows of the register block (and of sel_argmax_sim's block) */
#ifndef SEL_CB
#define SEL_CB 2 /* float16 columns of sel_pairwise's register block */
#endif

#define SEL_MODE_SQDIST 0
#define SEL_MODE_DIST 1
#define SEL_MODE_EXP 2
#define SEL_MODE_DOT 3

inline float sel_value(const float acc, const int mode, const float param) {
    if (mode == SEL_MODE_SQDIST) return acc;
    if (mode == SEL_MODE_DIST) return sqrt(acc);
    if (mode == SEL_MODE_EXP) return exp(-sqrt(acc) / param);
    return acc;
}

inline float sel_transform(const float v, const float offset, const float sign, const float thr) {
    const float s = offset + sign * v;
    return s < thr ? 0.0f : s;
}

/* One (SEL_TS x SEL_TS) tile of values between rows i0.. of A and rows j0.. of B, accumulated over d in chunks.
 * As[ly][kk] holds A[i0+ly, k0+kk]; Bt[kk][lx] holds B[j0+lx, k0+kk] (contiguous across lx for vector units). */
inline float sel_tile_acc(__global const float* A, __global const float* B, const int m, const int n, const int d,
                          const int mode, const int i0, const int j0, const int lx, const int ly,
                          __local float (*As)[SEL_TS + 1], __local float (*Bt)[SEL_TS + 1]) {
    float acc = 0.0f;
    for (int k0 = 0; k0 < d; k0 += SEL_TS) {
        const int c = k0 + lx;
        const int ra = i0 + ly;
        const int rb = j0 + ly;
        As[ly][lx] = (ra < m && c < d) ? A[(size_t)ra * d + c] : 0.0f;
        Bt[lx][ly] = (rb < n && c < d) ? B[(size_t)rb * d + c] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        const int kmax = min(SEL_TS, d - k0);
        if (mode == SEL_MODE_DOT) {
            for (int kk = 0; kk < kmax; ++kk) acc = fma(As[ly][kk], Bt[kk][lx], acc);
        } else {
            for (int kk = 0; kk < kmax; ++kk) {
                const float t = As[ly][kk] - Bt[kk][lx];
                acc = fma(t, t, acc);
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return acc;
}

/* Local-memory tiled variant of sel_pairwise (FPGA): out[i, j] = similarity(A[i], B[j]) for i < m, j < n, with B
 * (n x d) not transposed; group_max[group] = max value (before the transform) over the group's valid entries.
 * NDRange: (round_up(n, TS), round_up(m, TS)), local (TS, TS). */
__attribute__((reqd_work_group_size(SEL_TS, SEL_TS, 1)))
__kernel void sel_pairwise_tiled(__global const float* restrict A, __global const float* restrict B, __global float* restrict out,
                  const int m, const int n, const int d, const int mode, const float param, const float offset,
                  const float sign, const float thr, __global float* restrict group_max) {
    __local float As[SEL_TS][SEL_TS + 1];
    __local float Bt[SEL_TS][SEL_TS + 1];
    __local float red[SEL_TS * SEL_TS];
    const int lx = get_local_id(0);
    const int ly = get_local_id(1);
    const int j = get_global_id(0);
    const int i = get_global_id(1);
    const float acc = sel_tile_acc(A, B, m, n, d, mode, get_group_id(1) * SEL_TS, get_group_id(0) * SEL_TS, lx, ly,
                                   As, Bt);
    const float v = sel_value(acc, mode, param);
    const int valid = (i < m) && (j < n);
    const int lid = ly * SEL_TS + lx;
    red[lid] = valid ? v : -INFINITY;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = (SEL_TS * SEL_TS) / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] = fmax(red[lid], red[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) group_max[get_group_id(1) * get_num_groups(0) + get_group_id(0)] = red[0];
    if (valid) out[(size_t)i * n + j] = sel_transform(v, offset, sign, thr);
}

inline float8 sel_value8(const float8 acc, const int mode, const float param) {
    if (mode == SEL_MODE_SQDIST || mode == SEL_MODE_DOT) return acc;
    if (mode == SEL_MODE_DIST) return sqrt(acc);
    return exp(-sqrt(acc) / param);
}

inline float8 sel_transform8(const float8 v, const float offset, const float sign, const float thr) {
    const float8 s = offset + sign * v;
    return select(s, (float8)(0.0f), isless(s, (float8)(thr)));
}

inline float16 sel_value16(const float16 acc, const int mode, const float param) {
    if (mode == SEL_MODE_SQDIST || mode == SEL_MODE_DOT) return acc;
    if (mode == SEL_MODE_DIST) return sqrt(acc);
    return exp(-sqrt(acc) / param);
}

inline float16 sel_transform16(const float16 v, const float offset, const float sign, const float thr) {
    const float16 s = offset + sign * v;
    return select(s, (float16)(0.0f), isless(s, (float16)(thr)));
}

/* Bt[k, j] = B[j, k] for j < n, 0 for n <= j < n_pad: B (n x d) transposed to (d x n_pad), n_pad a multiple of 8.
 * NDRange: (n_pad, d). */
__kernel void sel_transpose_pad(__global const float* restrict B, __global float* restrict Bt, const int n,
                                const int d, const int n_pad) {
    const int j = get_global_id(0);
    const int k = get_global_id(1);
    if (j >= n_pad || k >= d) return;
    Bt[(size_t)k * n_pad + j] = j < n ? B[(size_t)j * d + k] : 0.0f;
}

/* SEL_RB rows of A (from i0, clamped to m - 1) against the 8 columns j0.. of Bt, accumulated over d. */
inline void sel_block8(__global const float* A, __global const float* Bt, const int m, const int n_pad, const int d,
                       const int mode, const int i0, const int j0, float8* acc) {
    const __global float* a[SEL_RB];
#pragma unroll
    for (int r = 0; r < SEL_RB; ++r) {
        acc[r] = (float8)(0.0f);
        a[r] = A + (size_t)min(i0 + r, m - 1) * d;
    }
    const __global float* bt = Bt + j0;
    if (mode == SEL_MODE_DOT) {
        for (int k = 0; k < d; ++k) {
            const float8 b = vload8(0, bt + (size_t)k * n_pad);
#pragma unroll
            for (int r = 0; r < SEL_RB; ++r) acc[r] = fma((float8)(a[r][k]), b, acc[r]);
        }
    } else {
        for (int k = 0; k < d; ++k) {
            const float8 b = vload8(0, bt + (size_t)k * n_pad);
#pragma unroll
            for (int r = 0; r < SEL_RB; ++r) {
                const float8 t = (float8)(a[r][k]) - b;
                acc[r] = fma(t, t, acc[r]);
            }
        }
    }
}

/* Panels for sel_pairwise: P[(p * d + k) * w + c] = X[p * w + c, k] - center[k] for rows < n, 0 for the padding
 * rows up to n_pad (a multiple of w), i.e. X shifted by center and cut into groups of w rows, each stored transposed
 * (d x w) and contiguous; and norms[r] = sum_k P[r, k]^2 accumulated by fma in k order, the same order sel_pairwise
 * accumulates its dot products in, so that a row's distance to itself comes out exactly 0.
 * The center (the mean of the rows of both operands for distances, 0 for dot products) is what keeps
 * ||a||^2 + ||b||^2 - 2 a.b precise in float32: its rounding error scales with the squared norms, so on rows that
 * cluster far from the origin (an untrained model's p - y: every row near (1/C, ..., 1/C - 1, ...)) the uncentered
 * form loses most digits of the small distances; centered, the norms are of the block's spread instead. Each
 * X - center is one correctly rounded subtraction (exact when the two are within a factor 2, Sterbenz).
 * NDRange: round_up(n_pad, GL). */
__kernel void sel_pack_panels(__global const float* restrict X, __global const float* restrict center,
                              __global float* restrict P, __global float* restrict norms, const int n, const int d,
                              const int w, const int n_pad) {
    const int r = get_global_id(0);
    if (r >= n_pad) return;
    const int p = r / w;
    const int c = r - p * w;
    __global float* dst = P + (size_t)p * d * w + c;
    float acc = 0.0f;
    if (r < n) {
        const __global float* src = X + (size_t)r * d;
        for (int k = 0; k < d; ++k) {
            const float v = src[k] - center[k];
            dst[(size_t)k * w] = v;
            acc = fma(v, v, acc);
        }
    } else {
        for (int k = 0; k < d; ++k) dst[(size_t)k * w] = 0.0f;
    }
    norms[r] = acc;
}

/* out[i, j] = similarity(A[i], B[j]) for i < m, j < n, from Ap = A packed in panels of SEL_RB rows and Bp = B packed
 * in panels of 16 rows (sel_pack_panels, both shifted by the same center; m_pad, n_pad their padded row counts) with
 * their squared norms; the distances come from the dot products of the centered rows, ||a||^2 + ||b||^2 - 2 a.b
 * clamped at 0. group_max[group] = max value (before
 * the transform) over the group's valid entries (the host reduces it to CRAIG's M). Each work-item computes an
 * SEL_RB x (16 * SEL_CB) block, holding its accumulators in registers with no barriers in the inner loop.
 * NDRange: (round_up(ceil(n_pad / (16 * SEL_CB)), 8), round_up(m_pad / SEL_RB, 8)), local (8, 8). */
__attribute__((reqd_work_group_size(8, 8, 1)))
__kernel void sel_pairwise(__global const float* restrict Ap, __global const float* restrict Bp,
                           __global const float* restrict an, __global const float* restrict bn,
                           __global float* restrict out, const int m, const int n, const int n_pad, const int d,
                           const int mode, const float param, const float offset, const float sign, const float thr,
                           __global float* restrict group_max) {
    __local float red[64];
    const int jp = get_global_id(0) * SEL_CB; /* first B panel */
    const int ip = get_global_id(1);          /* A panel */
    const int j0 = jp * 16;
    const int i0 = ip * SEL_RB;
    float vmax = -INFINITY;
    if (j0 < n && i0 < m) {
        float16 acc[SEL_RB][SEL_CB];
#pragma unroll
        for (int r = 0; r < SEL_RB; ++r)
#pragma unroll
            for (int c = 0; c < SEL_CB; ++c) acc[r][c] = (float16)(0.0f);
        const int panels = min(SEL_CB, (n_pad >> 4) - jp);
        const __global float* ap = Ap + (size_t)ip * d * SEL_RB;
        const __global float16* bp = (const __global float16*)Bp + (size_t)jp * d;
        if (panels == SEL_CB) {
            for (int k = 0; k < d; ++k) {
                float16 b[SEL_CB];
#pragma unroll
                for (int c = 0; c < SEL_CB; ++c) b[c] = bp[(size_t)c * d + k];
#pragma unroll
                for (int r = 0; r < SEL_RB; ++r) {
                    const float16 a = (float16)(ap[k * SEL_RB + r]);
#pragma unroll
                    for (int c = 0; c < SEL_CB; ++c) acc[r][c] = fma(a, b[c], acc[r][c]);
                }
            }
        } else { /* the last, partial column group: panels < SEL_CB */
            for (int k = 0; k < d; ++k) {
                float16 b[SEL_CB];
#pragma unroll
                for (int c = 0; c < SEL_CB; ++c) b[c] = c < panels ? bp[(size_t)c * d + k] : (float16)(0.0f);
#pragma unroll
                for (int r = 0; r < SEL_RB; ++r) {
                    const float16 a = (float16)(ap[k * SEL_RB + r]);
#pragma unroll
                    for (int c = 0; c < SEL_CB; ++c) acc[r][c] = fma(a, b[c], acc[r][c]);
                }
            }
        }
        const int rows = min(SEL_RB, m - i0);
        for (int c = 0; c < SEL_CB; ++c) {
            const int jc = j0 + c * 16;
            if (jc >= n) break;
            const int cols = min(16, n - jc);
            const float16 nb = vload16(0, bn + jc);
            for (int r = 0; r < rows; ++r) {
                float16 v = acc[r][c];
                if (mode != SEL_MODE_DOT) v = sel_value16(fmax(fma((float16)(-2.0f), v, an[i0 + r] + nb), 0.0f), mode, param);
                const float16 s = sel_transform16(v, offset, sign, thr);
                __global float* o = out + (size_t)(i0 + r) * n + jc;
                if (cols == 16) {
                    vstore16(s, 0, o);
                    const float8 h8 = fmax(v.lo, v.hi);
                    const float4 h = fmax(h8.lo, h8.hi);
                    vmax = fmax(vmax, fmax(fmax(h.s0, h.s1), fmax(h.s2, h.s3)));
                } else {
                    float ts[16];
                    float tv[16];
                    vstore16(s, 0, ts);
                    vstore16(v, 0, tv);
                    for (int q = 0; q < cols; ++q) {
                        o[q] = ts[q];
                        vmax = fmax(vmax, tv[q]);
                    }
                }
            }
        }
    }
    const int lid = get_local_id(1) * 8 + get_local_id(0);
    red[lid] = vmax;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = 32; s > 0; s >>= 1) {
        if (lid < s) red[lid] = fmax(red[lid], red[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) group_max[get_group_id(1) * get_num_groups(0) + get_group_id(0)] = red[0];
}

/* out[i] = X[i] / ||X[i]|| (a zero row stays zero). NDRange: round_up(n, GL). */
__kernel void sel_normalize_rows(__global const float* restrict X, __global float* restrict out, const int n,
                                 const int d) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const __global float* row = X + (size_t)i * d;
    float acc = 0.0f;
    for (int c = 0; c < d; ++c) acc = fma(row[c], row[c], acc);
    const float inv = acc > 0.0f ? rsqrt(acc) : 0.0f;
    __global float* o = out + (size_t)i * d;
    for (int c = 0; c < d; ++c) o[c] = row[c] * inv;
}

/* In place: S[t] = similarity from value S[t], for t < count (CRAIG's M - d once M is known). */
__kernel void sel_transform_values(__global float* restrict S, const long count, const float offset, const float sign,
                                   const float thr) {
    const size_t t = get_global_id(0);
    if (t < (size_t)count) S[t] = sel_transform(S[t], offset, sign, thr);
}

/* The gain of one candidate row (see sel_fl_gains); shared by every kernel that evaluates gains so that all of them
 * compute bit-identical values. */
inline float sel_fl_gain(const __global float* restrict row, const __global float* restrict best,
                         const __global float* restrict weights, const int n, const float offset, const float sign,
                         const float thr, const int weighted) {
    float16 acc = (float16)(0.0f);
    int i = 0;
    if (weighted) {
        for (; i + 16 <= n; i += 16) {
            const float16 t = sel_transform16(vload16(0, row + i), offset, sign, thr) - fmax(vload16(0, best + i), 0.0f);
            acc = fma(vload16(0, weights + i), fmax(t, 0.0f), acc);
        }
    } else {
        for (; i + 16 <= n; i += 16) {
            const float16 t = sel_transform16(vload16(0, row + i), offset, sign, thr) - fmax(vload16(0, best + i), 0.0f);
            acc += fmax(t, 0.0f);
        }
    }
    const float8 a8 = acc.lo + acc.hi;
    const float4 a4 = a8.lo + a8.hi;
    const float2 a2 = a4.lo + a4.hi;
    float total = a2.s0 + a2.s1;
    for (; i < n; ++i) {
        const float t = fmax(sel_transform(row[i], offset, sign, thr) - fmax(best[i], 0.0f), 0.0f);
        total += weighted ? weights[i] * t : t;
    }
    return total;
}

/* Coverage update of the 16 elements from i0 (fewer at the end) by candidate row `row`, its pos-th pick: where
 * s > best_i, best_i = s and assign_i = pos (strictly greater: the earlier pick keeps a tie). */
inline void sel_fl_cover16(const __global float* restrict row, __global float* restrict best,
                           __global int* restrict assign, const int i0, const int pos, const int n, const float offset,
                           const float sign, const float thr) {
    if (i0 + 16 <= n) {
        const float16 s = sel_transform16(vload16(0, row + i0), offset, sign, thr);
        const float16 b = vload16(0, best + i0);
        const int16 up = isgreater(s, b);
        vstore16(select(b, s, up), 0, best + i0);
        vstore16(select(vload16(0, assign + i0), (int16)(pos), up), 0, assign + i0);
    } else {
        for (int i = i0; i < n; ++i) {
            const float s = sel_transform(row[i], offset, sign, thr);
            if (s > best[i]) {
                best[i] = s;
                assign[i] = pos;
            }
        }
    }
}

/* Facility-location marginal gains: for the candidates ids[g], g < n_ids (one work-item each),
 *   out[g] = sum_i w_i * max(0, s(ids[g], i) - max(best_i, 0)),
 * with s from the stored value block S (m x n) by (offset, sign, thr). The sum runs in a fixed order (16 lanes over
 * the row, a fixed lane tree, then the tail), so a candidate's gain does not depend on the batch; as best only grows,
 * every term and so the float sum can only shrink (a stale gain is an upper bound). NDRange: round_up(n_ids, 8). */
__kernel void sel_fl_gains(__global const float* restrict S, __global const float* restrict best,
                           __global const float* restrict weights, __global const int* restrict ids, const int n_ids,
                           const int n, const float offset, const float sign, const float thr, const int weighted,
                           __global float* restrict out) {
    const int g = get_global_id(0);
    if (g >= n_ids) return;
    out[g] = sel_fl_gain(S + (size_t)ids[g] * n, best, weights, n, offset, sign, thr, weighted);
}

/* Coverage update after picking candidate j (its pos-th pick): where s(j, i) > best_i, best_i = s and
 * assign_i = pos (strictly greater: the earlier pick keeps a tie). Each work-item updates 16 elements.
 * NDRange: round_up(ceil(n / 16), GL). */
__kernel void sel_fl_add(__global const float* restrict S, __global float* restrict best, __global int* restrict assign,
                         const int j, const int pos, const int n, const float offset, const float sign,
                         const float thr) {
    const int i0 = get_global_id(0) * 16;
    if (i0 >= n) return;
    sel_fl_cover16(S + (size_t)j * n, best, assign, i0, pos, n, offset, sign, thr);
}

/* Max-heap order of (bound, id) pairs: the larger bound first, the lower id on ties (the greedy argmax rule). */
inline int sel_heap_above(const float va, const int ia, const float vb, const int ib) {
    return va > vb || (va == vb && ia < ib);
}

inline void sel_heap_down(__global float* restrict hv, __global int* restrict hi, const int size, int p) {
    const float v = hv[p];
    const int id = hi[p];
    for (;;) {
        int c = 2 * p + 1;
        if (c >= size) break;
        if (c + 1 < size && sel_heap_above(hv[c + 1], hi[c + 1], hv[c], hi[c])) ++c;
        if (!sel_heap_above(hv[c], hi[c], v, id)) break;
        hv[p] = hv[c];
        hi[p] = hi[c];
        p = c;
    }
    hv[p] = v;
    hi[p] = id;
}

/* Lazy greedy, k picks in one launch (one work-item: the whole loop runs on the device, no host round trip per pick).
 * bounds[t] is the current gain of candidate ids[t], t < count (from sel_fl_gains); they become a max-heap in
 * (hv, hi) (count entries), fresh[id] the pick step at which a bound was computed (m entries). Each step re-evaluates
 * the heap top until it is fresh, then picks it: as coverage only grows and sel_fl_gain is monotone, a stale bound
 * is a true float upper bound, so the order is exactly the naive greedy order (ties: the lowest id). Writes picks[t],
 * gains[t] (t < k, k <= count), evals[0] (gain evaluations made here), and updates best / assign (positions
 * first_pos + t). NDRange: (1), (1). */
__kernel void sel_fl_lazy(__global const float* restrict S, __global float* restrict best, __global int* restrict assign,
                          __global const float* restrict weights, __global const int* restrict ids,
                          __global const float* restrict bounds, const int count, const int k, const int first_pos,
                          const int n, const float offset, const float sign, const float thr, const int weighted,
                          __global float* restrict hv, __global int* restrict hi, __global int* restrict fresh,
                          __global int* restrict picks, __global float* restrict gains, __global int* restrict evals) {
    if (get_global_id(0) != 0) return;
    for (int t = 0; t < count; ++t) {
        hv[t] = bounds[t];
        hi[t] = ids[t];
        fresh[ids[t]] = 0;
    }
    for (int p = count / 2 - 1; p >= 0; --p) sel_heap_down(hv, hi, count, p);
    int size = count;
    int ev = 0;
    for (int step = 0; step < k; ++step) {
        for (;;) {
            const int j = hi[0];
            const __global float* row = S + (size_t)j * n;
            if (fresh[j] == step) {
                picks[step] = j;
                gains[step] = hv[0];
                --size;
                hv[0] = hv[size];
                hi[0] = hi[size];
                if (size > 0) sel_heap_down(hv, hi, size, 0);
                for (int i0 = 0; i0 < n; i0 += 16)
                    sel_fl_cover16(row, best, assign, i0, first_pos + step, n, offset, sign, thr);
                break;
            }
            hv[0] = sel_fl_gain(row, best, weights, n, offset, sign, thr, weighted);
            fresh[j] = step;
            ++ev;
            sel_heap_down(hv, hi, size, 0);
        }
    }
    evals[0] = ev;
}

/* Stochastic greedy, k picks in one launch (one work-item). Step t evaluates the available candidates (avail[j] != 0)
 * whose ranks among the available ones, in increasing id order, are positions[t * stride + q], q < counts[t]
 * (strictly increasing; the host draws them), and picks the first maximum (the lowest id on ties), exactly as the
 * host loop over the sorted sample. Writes picks, gains and updates avail, best, assign (positions first_pos + t).
 * NDRange: (1), (1). */
__kernel void sel_fl_stochastic(__global const float* restrict S, __global float* restrict best,
                                __global int* restrict assign, __global const float* restrict weights,
                                __global int* restrict avail, __global const int* restrict positions,
                                __global const int* restrict counts, const int stride, const int m, const int k,
                                const int first_pos, const int n, const float offset, const float sign,
                                const float thr, const int weighted, __global int* restrict picks,
                                __global float* restrict gains) {
    if (get_global_id(0) != 0) return;
    for (int step = 0; step < k; ++step) {
        const __global int* pos = positions + (size_t)step * stride;
        const int cnt = counts[step];
        float top = -INFINITY;
        int arg = -1;
        int rank = 0;
        int q = 0;
        for (int j = 0; j < m && q < cnt; ++j) {
            if (!avail[j]) continue;
            if (rank == pos[q]) {
                const float g = sel_fl_gain(S + (size_t)j * n, best, weights, n, offset, sign, thr, weighted);
                if (arg < 0 || g > top) {
                    top = g;
                    arg = j;
                }
                ++q;
            }
            ++rank;
        }
        picks[step] = arg;
        gains[step] = top;
        if (arg < 0) continue;
        avail[arg] = 0;
        const __global float* row = S + (size_t)arg * n;
        for (int i0 = 0; i0 < n; i0 += 16) sel_fl_cover16(row, best, assign, i0, first_pos + step, n, offset, sign, thr);
    }
}

/* Fused argmax: for every row i of X (n x d), the row of Y (k x d) with the largest similarity (the first one on
 * ties), without storing the n x k block. Yt is Y transposed and padded (d x k_pad). Each work-item keeps SEL_RB rows
 * of X and walks over Y eight columns at a time, each lane keeping its own running best (strictly greater, so the
 * earliest wins), then merges the lanes (largest value, then lowest index). NDRange: round_up(ceil(n / SEL_RB), 16). */
__kernel void sel_argmax_sim(__global const float* restrict X, __global const float* restrict Yt, const int n,
                             const int k, const int k_pad, const int d, const int mode, const float param,
                             const float offset, const float sign, const float thr, __global int* restrict out_idx,
                             __global float* restrict out_val) {
    const int i0 = get_global_id(0) * SEL_RB;
    if (i0 >= n) return;
    float8 bestv[SEL_RB];
    int8 besti[SEL_RB];
#pragma unroll
    for (int r = 0; r < SEL_RB; ++r) {
        bestv[r] = (float8)(-INFINITY);
        besti[r] = (int8)(-1);
    }
    const int8 lane = (int8)(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j0 = 0; j0 < k; j0 += 8) {
        float8 acc[SEL_RB];
        sel_block8(X, Yt, n, k_pad, d, mode, i0, j0, acc);
        const int8 jv = (int8)(j0) + lane;
        const int8 valid = jv < (int8)(k);
#pragma unroll
        for (int r = 0; r < SEL_RB; ++r) {
            const float8 s = sel_transform8(sel_value8(acc[r], mode, param), offset, sign, thr);
            const int8 up = valid & (isgreater(s, bestv[r]) | (besti[r] < (int8)(0)));
            bestv[r] = select(bestv[r], s, up);
            besti[r] = select(besti[r], jv, up);
        }
    }
    const int rows = min(SEL_RB, n - i0);
    for (int r = 0; r < rows; ++r) {
        float bv[8];
        int bi[8];
        vstore8(bestv[r], 0, bv);
        vstore8(besti[r], 0, bi);
        float best = -INFINITY;
        int idx = -1;
        for (int l = 0; l < 8; ++l) {
            if (bi[l] < 0) continue;
            if (idx < 0 || bv[l] > best || (bv[l] == best && bi[l] < idx)) {
                best = bv[l];
                idx = bi[l];
            }
        }
        out_idx[i0 + r] = idx;
        out_val[i0 + r] = best;
    }
}

/* out[c] = mean over the n rows of column c of X (n x p); one work-group per column. NDRange: p * GL, local GL. */
__attribute__((reqd_work_group_size(SEL_GL, 1, 1)))
__kernel void sel_column_mean(__global const float* restrict X, const int n, const int p, __global float* restrict out) {
    __local float red[SEL_GL];
    const int c = get_group_id(0);
    const int lid = get_local_id(0);
    float acc = 0.0f;
    if (c < p) {
        for (int r = lid; r < n; r += SEL_GL) acc += X[(size_t)r * p + c];
    }
    red[lid] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = SEL_GL / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] += red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0 && c < p) out[c] = red[0] / (float)n;
}

/* out[r, c] = sum_t (A[t, r] - ma[r]) * (B[t, c] - mb[c]) for A (n x p), B (n x q), accumulated over t in tiles.
 * NDRange: (round_up(q, TS), round_up(p, TS)), local (TS, TS). */
__attribute__((reqd_work_group_size(SEL_TS, SEL_TS, 1)))
__kernel void sel_cross_cov(__global const float* restrict A, __global const float* restrict B,
                   __global const float* restrict ma, __global const float* restrict mb, __global float* restrict out,
                   const int n, const int p, const int q) {
    __local float As[SEL_TS][SEL_TS + 1];
    __local float Bs[SEL_TS][SEL_TS + 1];
    const int lx = get_local_id(0);
    const int ly = get_local_id(1);
    const int r0 = get_group_id(1) * SEL_TS;
    const int c0 = get_group_id(0) * SEL_TS;
    float acc = 0.0f;
    for (int t0 = 0; t0 < n; t0 += SEL_TS) {
        const int t = t0 + ly;
        const int ra = r0 + lx;
        const int cb = c0 + lx;
        As[ly][lx] = (t < n && ra < p) ? A[(size_t)t * p + ra] - ma[ra] : 0.0f;
        Bs[ly][lx] = (t < n && cb < q) ? B[(size_t)t * q + cb] - mb[cb] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        const int tmax = min(SEL_TS, n - t0);
        for (int tt = 0; tt < tmax; ++tt) acc = fma(As[tt][ly], Bs[tt][lx], acc);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int r = r0 + ly;
    const int c = c0 + lx;
    if (r < p && c < q) out[(size_t)r * q + c] = acc;
}

/* Order-preserving unsigned key of a float (-0.0 counts as 0.0): larger float, larger key. */
inline uint sel_float_key(float f) {
    if (f == 0.0f) f = 0.0f;
    const uint u = as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* One radix-select step of per-group top-k: counts[g] += #{i in group g : key_i agrees with prefix[g] on the bits
 * in mask and has bit set}. NDRange: round_up(n, GL). */
__kernel void sel_topk_count(__global const float* restrict scores, __global const int* restrict groups,
                             __global const uint* restrict prefix, const uint mask, const uint bit,
                             __global int* restrict counts, const int n) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const uint key = sel_float_key(scores[i]);
    const int g = groups[i];
    if ((key & mask) == prefix[g] && (key & bit)) atomic_inc(&counts[g]);
}

/* flags[i] = 1 if key_i > thresh[g] (taken), 2 if equal (a tie at the cut), else 0. NDRange: round_up(n, GL). */
__kernel void sel_topk_mark(__global const float* restrict scores, __global const int* restrict groups,
                            __global const uint* restrict thresh, __global uchar* restrict flags, const int n) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const uint key = sel_float_key(scores[i]);
    const uint t = thresh[groups[i]];
    flags[i] = key > t ? (uchar)1 : (key == t ? (uchar)2 : (uchar)0);
}
