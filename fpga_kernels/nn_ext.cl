// The proxy's extended vocabulary (OpenCL C 1.2, float32): activations, softmax, LayerNorm, GroupNorm, batched
// matmul (attention is two of them around a softmax), embedding lookup, and N-d strided copy / broadcast / mean
// kernels for the layout ops (permute, concat, slice, constants repeated over the batch).
//
// Host wrappers: nessa/accel/nn_ops.py; numpy references: nessa/accel/reference/nn.py. Every float buffer argument
// is followed by an element offset, as in nn.cl. N-d kernels take their shapes and strides in a small int buffer
// `meta` (rank <= NN_MAX_RANK); strides are in elements, 0 for a broadcast axis.

#define NN_MAX_RANK 8

// Elementwise: mode 0 relu, 1 gelu (erf), 2 silu, 3 sigmoid, 4 tanh, 5 x * alpha + beta.
__kernel void nn_unary(__global const float* restrict x, const int x_off, __global float* restrict out,
                       const int out_off, const int n, const int mode, const float alpha, const float beta) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const float v = x[x_off + i];
    float r;
    if (mode == 0) r = fmax(v, 0.0f);
    else if (mode == 1) r = 0.5f * v * (1.0f + erf(v * 0.70710678118654752f));
    else if (mode == 2) r = v / (1.0f + exp(-v));
    else if (mode == 3) r = 1.0f / (1.0f + exp(-v));
    else if (mode == 4) r = tanh(v);
    else r = v * alpha + beta;
    out[out_off + i] = r;
}

// Softmax of each of `rows` rows of `cols` elements; one row per work-item.
__kernel void nn_softmax_rows(__global const float* restrict x, const int x_off, __global float* restrict out,
                              const int out_off, const int rows, const int cols) {
    const int r = get_global_id(0);
    if (r >= rows) return;
    __global const float* xp = x + x_off + (size_t)r * cols;
    __global float* op = out + out_off + (size_t)r * cols;
    float m = -INFINITY;
    for (int j = 0; j < cols; ++j) m = fmax(m, xp[j]);
    float total = 0.0f;
    for (int j = 0; j < cols; ++j) {
        const float e = exp(xp[j] - m);
        op[j] = e;
        total += e;
    }
    const float inv = 1.0f / total;
    for (int j = 0; j < cols; ++j) op[j] *= inv;
}

// LayerNorm of each row of `cols` elements: (x - mean) / sqrt(var + eps) * w + b (b when has_b).
__kernel void nn_layernorm_rows(__global const float* restrict x, const int x_off, __global const float* restrict w,
                                __global const float* restrict b, const int has_b, __global float* restrict out,
                                const int out_off, const int rows, const int cols, const float eps) {
    const int r = get_global_id(0);
    if (r >= rows) return;
    __global const float* xp = x + x_off + (size_t)r * cols;
    __global float* op = out + out_off + (size_t)r * cols;
    float mean = 0.0f;
    for (int j = 0; j < cols; ++j) mean += xp[j];
    mean /= (float)cols;
    float var = 0.0f;
    for (int j = 0; j < cols; ++j) {
        const float d = xp[j] - mean;
        var += d * d;
    }
    const float inv = rsqrt(var / (float)cols + eps);
    for (int j = 0; j < cols; ++j) op[j] = (xp[j] - mean) * inv * w[j] + (has_b ? b[j] : 0.0f);
}

// GroupNorm of x (N, C, inner) in `groups` groups; one (sample, group) per work-item; per-channel affine.
__kernel void nn_groupnorm(__global const float* restrict x, const int x_off, __global const float* restrict w,
                           __global const float* restrict b, const int has_b, __global float* restrict out,
                           const int out_off, const int N, const int C, const int inner, const int groups,
                           const float eps) {
    const int id = get_global_id(0);
    if (id >= N * groups) return;
    const int cg = C / groups;
    const int g = id % groups;
    const size_t base = (size_t)id * cg * inner;
    const int count = cg * inner;
    __global const float* xp = x + x_off + base;
    __global float* op = out + out_off + base;
    float mean = 0.0f;
    for (int j = 0; j < count; ++j) mean += xp[j];
    mean /= (float)count;
    float var = 0.0f;
    for (int j = 0; j < count; ++j) {
        const float d = xp[j] - mean;
        var += d * d;
    }
    const float inv = rsqrt(var / (float)count + eps);
    for (int j = 0; j < count; ++j) {
        const int c = g * cg + j / inner;
        op[j] = (xp[j] - mean) * inv * w[c] + (has_b ? b[c] : 0.0f);
    }
}

// out[p, i, j] = alpha * sum_k a[p, i, k] * B(p, k, j) with B = b[p, k, j] (trans_b 0) or b[p, j, k] (trans_b 1);
// p < batch, a (batch, M, K), out (batch, M, Nc). One output element per work-item (gid0 = j, gid1 = p * M + i).
__kernel void nn_bmm(__global const float* restrict a, const int a_off, __global const float* restrict b,
                     const int b_off, __global float* restrict out, const int out_off, const int batch, const int M,
                     const int K, const int Nc, const int trans_b, const float alpha) {
    const int j = get_global_id(0);
    const int row = get_global_id(1);
    if (j >= Nc || row >= batch * M) return;
    const int p = row / M;
    __global const float* ap = a + a_off + (size_t)row * K;
    __global const float* bp = b + b_off + (size_t)p * K * Nc;
    float acc = 0.0f;
    if (trans_b) {
        __global const float* bj = bp + (size_t)j * K;
        for (int k = 0; k < K; ++k) acc = fma(ap[k], bj[k], acc);
    } else {
        for (int k = 0; k < K; ++k) acc = fma(ap[k], bp[(size_t)k * Nc + j], acc);
    }
    out[out_off + (size_t)row * Nc + j] = alpha * acc;
}

// out[i, :] = w[round(idx[i]), :] for `rows` indices; an index outside [0, V) gives a row of NaN.
__kernel void nn_embedding(__global const float* restrict idx, const int idx_off, __global const float* restrict w,
                           __global float* restrict out, const int out_off, const int rows, const int D,
                           const int V) {
    const int d = get_global_id(0);
    const int r = get_global_id(1);
    if (d >= D || r >= rows) return;
    const float f = rint(idx[idx_off + r]);
    const float v = (f >= 0.0f && f < (float)V) ? w[(size_t)((int)f) * D + d] : NAN;
    out[out_off + (size_t)r * D + d] = v;
}

// Offset of element `i` (row-major over shape) under `strides`.
inline size_t nn_offset(int i, const int rank, __global const int* shape, __global const int* strides) {
    size_t off = 0;
    for (int a = rank - 1; a >= 0; --a) {
        const int s = shape[a];
        off += (size_t)(i % s) * strides[a];
        i /= s;
    }
    return off;
}

// dst[dst_base + D(i)] = src[src_base + S(i)] for the `total` elements i of an N-d shape; meta = shape | src
// strides | dst strides (rank ints each). Permute, concat (one launch per part), slice and batch repeats.
__kernel void nn_copy_nd(__global const float* restrict src, const int src_off, __global float* restrict dst,
                         const int dst_off, const int total, const int rank, __global const int* restrict meta) {
    const int i = get_global_id(0);
    if (i >= total) return;
    dst[dst_off + nn_offset(i, rank, meta, meta + 2 * rank)] = src[src_off + nn_offset(i, rank, meta, meta + rank)];
}

// out[i] = a[A(i)] + b[B(i)] (mode 0) or a[A(i)] * b[B(i)] (mode 1), out contiguous; meta = out shape | a strides
// | b strides (0 on broadcast axes).
__kernel void nn_binary_nd(__global const float* restrict a, const int a_off, __global const float* restrict b,
                           const int b_off, __global float* restrict out, const int out_off, const int total,
                           const int rank, __global const int* restrict meta, const int mode) {
    const int i = get_global_id(0);
    if (i >= total) return;
    const float x = a[a_off + nn_offset(i, rank, meta, meta + rank)];
    const float y = b[b_off + nn_offset(i, rank, meta, meta + 2 * rank)];
    out[out_off + i] = mode == 0 ? x + y : x * y;
}

// Mean over reduced axes: out[i] = mean_r src[K(i) + R(r)]; meta = kept shape | kept strides | reduced shape |
// reduced strides (rank_k, rank_k, rank_r, rank_r ints).
__kernel void nn_mean_nd(__global const float* restrict src, const int src_off, __global float* restrict out,
                         const int out_off, const int total, const int rank_k, const int rank_r, const int count,
                         __global const int* restrict meta) {
    const int i = get_global_id(0);
    if (i >= total) return;
    const size_t base = nn_offset(i, rank_k, meta, meta + rank_k);
    __global const int* rshape = meta + 2 * rank_k;
    float acc = 0.0f;
    for (int r = 0; r < count; ++r) acc += src[src_off + base + nn_offset(r, rank_r, rshape, rshape + rank_r)];
    out[out_off + i] = acc / (float)count;
}
