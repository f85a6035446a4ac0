// Neural-network kernels of the model proxy (OpenCL C 1.2, float32 arithmetic).
//
// Host wrappers: nessa/accel/nn_ops.py; numpy references: nessa/accel/reference/nn.py.
//
// Layout: activations are NCHW (1-D ops use H = 1), contiguous. Every float buffer argument is followed by an
// element offset (`*_off`): the host allocates activations with GUARD floats of slack before and after the data
// (nn_ops.GUARD), so the vectorized conv may read a few elements past a row edge; those lanes are masked out.
// Weights are dequantized from int8 to float32 on the host when a proxy is loaded (once), so kernels see float32.
//
// Compile-time specialization: the host builds nn.cl with -D options where the platform allows it (PoCL):
//   NN_TP   output pixels per work-item (vector width: 4, 8 or 16; default 16)
//   NN_TCO  output channels per work-item (4, 8 or 16; default 8)
//   NN_KH, NN_KW  the conv kernel size; NN_SW  the conv's horizontal stride (1 or 2: vector loads; 0: gather)
// Without them (an FPGA xclbin is built from this file as is) the same kernels run from their runtime arguments.
//
// Every kernel guards its global id (`if (gid >= n) return;`), so global sizes are rounded up to the work-group.

#ifndef NN_TP
#define NN_TP 16
#endif
#ifndef NN_TCO
#define NN_TCO 8
#endif

#if NN_TP == 16
typedef float16 vecf;
typedef int16 veci;
#define VLOADF vload16
#define VSTOREF vstore16
#define LANE_IDS ((veci)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))
#elif NN_TP == 8
typedef float8 vecf;
typedef int8 veci;
#define VLOADF vload8
#define VSTOREF vstore8
#define LANE_IDS ((veci)(0, 1, 2, 3, 4, 5, 6, 7))
#elif NN_TP == 4
typedef float4 vecf;
typedef int4 veci;
#define VLOADF vload4
#define VSTOREF vstore4
#define LANE_IDS ((veci)(0, 1, 2, 3))
#else
#error "NN_TP must be 4, 8 or 16"
#endif

#ifdef NN_KH
#define KH NN_KH
#else
#define KH kh_
#endif
#ifdef NN_KW
#define KW NN_KW
#else
#define KW kw_
#endif

// TP lanes of one input row, lane j at p[j * sw], zero where mask m is 0. The vector paths may read up to
// 2 * NN_TP elements past p (host guard); the gather path reads only valid lanes.
#if defined(NN_SW) && NN_SW == 1
#define SW 1
#define LOAD_LANES(p, m) select((vecf)(0.0f), VLOADF(0, (p)), (m))
#define LOAD_FULL(p) VLOADF(0, (p))
#elif defined(NN_SW) && NN_SW == 2
#define SW 2
#if NN_TP == 16
#define LOAD_FULL(p) ((vecf)(vload16(0, (p)).even, vload16(0, (p) + 16).even))
#elif NN_TP == 8
#define LOAD_FULL(p) (vload16(0, (p)).even)
#else
#define LOAD_FULL(p) (vload8(0, (p)).even)
#endif
#define LOAD_LANES(p, m) select((vecf)(0.0f), LOAD_FULL(p), (m))
#else
#define SW sw_
#define LOAD_LANES(p, m) gather_lanes((p), sw_, (m))
#define LOAD_FULL(p) gather_lanes((p), sw_, (veci)(-1))
#endif

inline vecf gather_lanes(__global const float* p, const int stride, const veci m) {
    int mk[NN_TP];
    VSTOREF(m, 0, mk);
    float t[NN_TP];
    for (int j = 0; j < NN_TP; ++j) t[j] = mk[j] ? p[j * stride] : 0.0f;
    return VLOADF(0, t);
}

// One multiply-accumulate step: lanes v times the NN_TCO weights at wk into the accumulators.
#define MAC_STEP(v, wk)                                        \
    _Pragma("unroll") for (int t = 0; t < NN_TCO; ++t) {       \
        acc[t] = mad((v), (vecf)((wk)[t]), acc[t]);            \
    }

// Direct convolution, register-blocked: a work-item computes NN_TP consecutive output pixels of one output row
// (vector lanes) for NN_TCO output channels (one accumulator vector each). Each step loads one input vector and
// NN_TCO weights and issues NN_TCO vector FMAs. Weights are packed [Co/NN_TCO][Ci*KH*KW][NN_TCO] (zero-padded
// channels), bias [Co/NN_TCO*NN_TCO]. Optional residual add (flags & 2) and ReLU (flags & 1) after the bias.
// Global size: (round_up(N * Ho * ceil(Wo / NN_TP), wg), ceil(Co / NN_TCO)).
__kernel void nn_conv(__global const float* restrict x, const int x_off, __global const float* restrict w,
                      __global const float* restrict bias, __global const float* restrict res, const int res_off,
                      __global float* restrict out, const int out_off, const int N, const int Ci, const int H,
                      const int W, const int Co, const int Ho, const int Wo, const int kh_, const int kw_,
                      const int sh, const int sw_, const int ph, const int pw, const int flags) {
    const int segs = (Wo + NN_TP - 1) / NN_TP;
    const int gid = get_global_id(0);
    if (gid >= N * Ho * segs) return;
    const int cb = get_global_id(1);
    const int seg = gid % segs;
    const int row_id = gid / segs;
    const int oh = row_id % Ho;
    const int n = row_id / Ho;
    const int ow0 = seg * NN_TP;
    const int ih0 = oh * sh - ph;
    const int iw0 = ow0 * SW - pw;
    const int K = Ci * KH * KW;
    __global const float* xn = x + x_off + (size_t)n * Ci * H * W;
    __global const float* wb = w + (size_t)cb * K * NN_TCO;

    vecf acc[NN_TCO];
    _Pragma("unroll") for (int t = 0; t < NN_TCO; ++t) { acc[t] = (vecf)(bias[cb * NN_TCO + t]); }

    const veci cols = LANE_IDS * SW + iw0;
    const int interior = iw0 >= 0 && iw0 + (KW - 1) + (NN_TP - 1) * SW < W;
    if (interior) {
        for (int ci = 0; ci < Ci; ++ci) {
            __global const float* xc = xn + (size_t)ci * H * W;
            __global const float* wc = wb + ci * KH * KW * NN_TCO;
            for (int kh = 0; kh < KH; ++kh) {
                const int ih = ih0 + kh;
                if (ih < 0 || ih >= H) continue;
                __global const float* row = xc + ih * W + iw0;
                __global const float* wk = wc + kh * KW * NN_TCO;
                for (int kw = 0; kw < KW; ++kw) {
                    const vecf v = LOAD_FULL(row + kw);
                    MAC_STEP(v, wk + kw * NN_TCO)
                }
            }
        }
    } else {
        for (int ci = 0; ci < Ci; ++ci) {
            __global const float* xc = xn + (size_t)ci * H * W;
            __global const float* wc = wb + ci * KH * KW * NN_TCO;
            for (int kh = 0; kh < KH; ++kh) {
                const int ih = ih0 + kh;
                if (ih < 0 || ih >= H) continue;
                __global const float* row = xc + ih * W + iw0;
                __global const float* wk = wc + kh * KW * NN_TCO;
                for (int kw = 0; kw < KW; ++kw) {
                    const veci c = cols + kw;
                    const veci m = (c >= (veci)(0)) & (c < (veci)(W));
                    const vecf v = LOAD_LANES(row + kw, m);
                    MAC_STEP(v, wk + kw * NN_TCO)
                }
            }
        }
    }

    const int rem = min(NN_TP, Wo - ow0);
    const int relu = flags & 1;
    const int has_res = flags & 2;
    _Pragma("unroll") for (int t = 0; t < NN_TCO; ++t) {
        const int co = cb * NN_TCO + t;
        if (co < Co) {
            const size_t o = ((size_t)(n * Co + co) * Ho + oh) * Wo + ow0;
            vecf r = acc[t];
            if (rem == NN_TP) {
                if (has_res) r += VLOADF(0, res + res_off + o);
                if (relu) r = fmax(r, (vecf)(0.0f));
                VSTOREF(r, 0, out + out_off + o);
            } else {
                float tmp[NN_TP];
                VSTOREF(r, 0, tmp);
                for (int j = 0; j < rem; ++j) {
                    float v = tmp[j];
                    if (has_res) v += res[res_off + o + j];
                    if (relu) v = fmax(v, 0.0f);
                    out[out_off + o + j] = v;
                }
            }
        }
    }
}

// Fully connected layer out = x @ w^T + bias (optional ReLU, flags & 1); x (N, F), w (M, F) row-major. A
// work-item computes a 4 x 4 block of (sample, output) with float8 dot products along F.
// Global size: (round_up(ceil(N / 4), wg0), round_up(ceil(M / 4), wg1)).
__kernel void nn_linear(__global const float* restrict x, const int x_off, __global const float* restrict w,
                        __global const float* restrict bias, const int has_bias, __global float* restrict out,
                        const int out_off, const int N, const int F, const int M, const int flags) {
    const int i0 = get_global_id(0) * 4;
    const int j0 = get_global_id(1) * 4;
    if (i0 >= N || j0 >= M) return;
    __global const float* xr[4];
    __global const float* wr[4];
    _Pragma("unroll") for (int a = 0; a < 4; ++a) {
        xr[a] = x + x_off + (size_t)min(i0 + a, N - 1) * F;
        wr[a] = w + (size_t)min(j0 + a, M - 1) * F;
    }
    float8 acc[4][4];
    _Pragma("unroll") for (int a = 0; a < 4; ++a) {
        _Pragma("unroll") for (int b = 0; b < 4; ++b) { acc[a][b] = (float8)(0.0f); }
    }
    int f = 0;
    for (; f + 8 <= F; f += 8) {
        float8 xv[4];
        float8 wv[4];
        _Pragma("unroll") for (int a = 0; a < 4; ++a) {
            xv[a] = vload8(0, xr[a] + f);
            wv[a] = vload8(0, wr[a] + f);
        }
        _Pragma("unroll") for (int a = 0; a < 4; ++a) {
            _Pragma("unroll") for (int b = 0; b < 4; ++b) { acc[a][b] = mad(xv[a], wv[b], acc[a][b]); }
        }
    }
    float s[4][4];
    _Pragma("unroll") for (int a = 0; a < 4; ++a) {
        _Pragma("unroll") for (int b = 0; b < 4; ++b) {
            const float8 v = acc[a][b];
            const float4 h = v.lo + v.hi;
            s[a][b] = (h.x + h.y) + (h.z + h.w);
        }
    }
    for (; f < F; ++f) {
        _Pragma("unroll") for (int a = 0; a < 4; ++a) {
            _Pragma("unroll") for (int b = 0; b < 4; ++b) { s[a][b] = mad(xr[a][f], wr[b][f], s[a][b]); }
        }
    }
    for (int a = 0; a < 4; ++a) {
        const int i = i0 + a;
        if (i >= N) break;
        for (int b = 0; b < 4; ++b) {
            const int j = j0 + b;
            if (j >= M) break;
            float v = s[a][b] + (has_bias ? bias[j] : 0.0f);
            if (flags & 1) v = fmax(v, 0.0f);
            out[out_off + (size_t)i * M + j] = v;
        }
    }
}

// out = max(x, 0), n elements.
__kernel void nn_relu(__global const float* restrict x, const int x_off, __global float* restrict out,
                      const int out_off, const int n) {
    const int i = get_global_id(0);
    if (i >= n) return;
    out[out_off + i] = fmax(x[x_off + i], 0.0f);
}

// out = a + b (then ReLU if flags & 1), n elements.
__kernel void nn_add(__global const float* restrict a, const int a_off, __global const float* restrict b,
                     const int b_off, __global float* restrict out, const int out_off, const int n, const int flags) {
    const int i = get_global_id(0);
    if (i >= n) return;
    float v = a[a_off + i] + b[b_off + i];
    if (flags & 1) v = fmax(v, 0.0f);
    out[out_off + i] = v;
}

// Max (mode 0) or average (mode 1, zero padding counted in the divisor) pooling of NC planes H x W to Ho x Wo;
// one output element per work-item. 1-D pooling uses H = Ho = kh = sh = 1, ph = 0.
__kernel void nn_pool(__global const float* restrict x, const int x_off, __global float* restrict out,
                      const int out_off, const int NC, const int H, const int W, const int Ho, const int Wo,
                      const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                      const int mode) {
    const int i = get_global_id(0);
    if (i >= NC * Ho * Wo) return;
    const int ow = i % Wo;
    const int t = i / Wo;
    const int oh = t % Ho;
    const int nc = t / Ho;
    __global const float* xp = x + x_off + (size_t)nc * H * W;
    float acc = mode == 0 ? -INFINITY : 0.0f;
    for (int a = 0; a < kh; ++a) {
        const int ih = oh * sh - ph + a;
        if (ih < 0 || ih >= H) continue;
        for (int b = 0; b < kw; ++b) {
            const int iw = ow * sw - pw + b;
            if (iw < 0 || iw >= W) continue;
            const float v = xp[ih * W + iw];
            acc = mode == 0 ? fmax(acc, v) : acc + v;
        }
    }
    out[out_off + i] = mode == 0 ? acc : acc / (float)(kh * kw);
}

// Mean of each of NC rows of S elements: (N, C, S) -> (N, C).
__kernel void nn_global_avgpool(__global const float* restrict x, const int x_off, __global float* restrict out,
                                const int out_off, const int NC, const int S) {
    const int i = get_global_id(0);
    if (i >= NC) return;
    __global const float* xp = x + x_off + (size_t)i * S;
    float4 acc = (float4)(0.0f);
    int s = 0;
    for (; s + 4 <= S; s += 4) acc += vload4(0, xp + s);
    float total = (acc.x + acc.y) + (acc.z + acc.w);
    for (; s < S; ++s) total += xp[s];
    out[out_off + i] = total / (float)S;
}

// x (N, C, inner) raw samples -> (x * scale - mean[c]) / std[c] float32; nmean is 1 (one value) or C. The uint8
// input is a plain buffer of the raw batch (no offset); the float one may be a device activation.
__kernel void nn_normalize_u8(__global const uchar* restrict x, __global float* restrict out, const int out_off,
                              __global const float* restrict mean, __global const float* restrict stdv,
                              const float scale, const int inner, const int C, const int nmean, const int n) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const int c = nmean == 1 ? 0 : (i / inner) % C;
    out[out_off + i] = ((float)x[i] * scale - mean[c]) / stdv[c];
}

__kernel void nn_normalize_f32(__global const float* restrict x, const int x_off, __global float* restrict out,
                               const int out_off, __global const float* restrict mean,
                               __global const float* restrict stdv, const float scale, const int inner, const int C,
                               const int nmean, const int n) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const int c = nmean == 1 ? 0 : (i / inner) % C;
    out[out_off + i] = (x[x_off + i] * scale - mean[c]) / stdv[c];
}

// The classifier head, fused: per sample i (one work-item), p = softmax(z_i), grad_i = p - onehot(y_i) and the
// cross-entropy loss_i = logsumexp(z_i) - z_i[y_i]. z (N, C); labels int64 in [0, C) (checked by the host).
__kernel void nn_softmax_xent(__global const float* restrict z, const int z_off, __global const long* restrict y,
                              __global float* restrict grad, const int grad_off, __global float* restrict loss,
                              const int loss_off, const int N, const int C) {
    const int i = get_global_id(0);
    if (i >= N) return;
    __global const float* zi = z + z_off + (size_t)i * C;
    float m = -INFINITY;
    for (int c = 0; c < C; ++c) m = fmax(m, zi[c]);
    float s = 0.0f;
    for (int c = 0; c < C; ++c) s += exp(zi[c] - m);
    const float inv = 1.0f / s;
    const int yi = (int)y[i];
    __global float* gi = grad + grad_off + (size_t)i * C;
    for (int c = 0; c < C; ++c) gi[c] = exp(zi[c] - m) * inv - (c == yi ? 1.0f : 0.0f);
    loss[loss_off + i] = log(s) + m - zi[yi];
}
