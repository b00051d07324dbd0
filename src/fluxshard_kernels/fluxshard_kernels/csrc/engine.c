/* FluxShard incremental engine: the per-layer hot loops on the CPU (gather with halo, scatter
 * with a fused activation, the in-place bilinear cache warp of the moving pixels) and the
 * per-frame image updates (integer block-MV warp, pasting recomputed blocks).
 *
 * Feature maps are float32 block storage (fluxshard_kernels.sparse.FMap): pixel (y, x),
 * channel c at base[y * rs + x * cs + c] (channels-last: a pixel's channels are contiguous;
 * cs may exceed C for a channel slice of a wider map). Every function is a plain loop over
 * the blocks or pixels it is given, so its cost follows the number of active blocks.
 * The torch code in sparse.py / incremental.py is the reference; tests compare them.
 * The per-layer kernels are this module's METH_FASTCALL functions (the end of this file); the
 * per-frame ones are loaded through ctypes (fluxshard_kernels.native). Both release the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FS_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define FS_PAUSE() __asm__ __volatile__("yield")
#else
#define FS_PAUSE() ((void)0)
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* out (n, P, P, C) contiguous = the P x P window of each block (ri, ci): storage rows
 * off + r * step .. + P, columns likewise. Pixels outside the valid storage rectangle
 * [vy0, vy1) x [vx0, vx1) read `fill` (0 for convs: the dense zero padding; -inf for
 * max-pools). */
void fs_gather(const float *src, int64_t rs, int64_t cs, int C, int vy0, int vy1, int vx0,
               int vx1, float fill, const int64_t *ri, const int64_t *ci, int n, int off,
               int step, int P, float *out) {
    const size_t row_bytes = (size_t)C * sizeof(float);
    for (int i = 0; i < n; ++i) {
        const int y0 = off + (int)ri[i] * step, x0 = off + (int)ci[i] * step;
        float *o = out + (size_t)i * P * P * C;
        for (int py = 0; py < P; ++py) {
            const int y = y0 + py;
            float *orow = o + (size_t)py * P * C;
            if (y < vy0 || y >= vy1) {
                for (int k = 0; k < P * C; ++k) orow[k] = fill;
                continue;
            }
            const float *srow = src + (ptrdiff_t)y * rs;
            for (int px = 0; px < P; ++px) {
                const int x = x0 + px;
                float *op = orow + (size_t)px * C;
                if (x < vx0 || x >= vx1) {
                    for (int k = 0; k < C; ++k) op[k] = fill;
                } else {
                    memcpy(op, srow + (ptrdiff_t)x * cs, row_bytes);
                }
            }
        }
    }
}

/* Write y (n, b, b, C) contiguous into blocks (ri, ci) of b pixels, at storage offset
 * `margin`, only inside the valid h x w region (the padding beyond it stays zero). */
void fs_scatter(float *dst, int64_t rs, int64_t cs, int C, int margin, int h, int w,
                const float *y, const int64_t *ri, const int64_t *ci, int n, int b) {
    for (int i = 0; i < n; ++i) {
        const int fy = (int)ri[i] * b, fx = (int)ci[i] * b;
        const int bh = fy + b > h ? h - fy : b, bw = fx + b > w ? w - fx : b;
        const float *yi = y + (size_t)i * b * b * C;
        for (int py = 0; py < bh; ++py) {
            float *drow = dst + (ptrdiff_t)(margin + fy + py) * rs;
            const float *srow = yi + (size_t)py * b * C;
            if (cs == C) { /* the row of the block is one contiguous run */
                memcpy(drow + (ptrdiff_t)(margin + fx) * cs, srow, (size_t)bw * C * sizeof(float));
                continue;
            }
            for (int px = 0; px < bw; ++px)
                memcpy(drow + (ptrdiff_t)(margin + fx + px) * cs, srow + (size_t)px * C,
                       (size_t)C * sizeof(float));
        }
    }
}

/* The rows of a convolution as a matrix product (im2col) for the active blocks only:
 * out (n * bo * bo, k * k * C) contiguous, row (i, oy, ox) = the k x k x C input window of
 * output pixel (oy, ox) of block (ri[i], ci[i]), which starts at storage
 * (off + ri * bo * s + oy * s, off + ci * bo * s + ox * s); pixels outside the valid storage
 * rectangle read `fill`. */
void fs_im2col(const float *src, int64_t rs, int64_t cs, int C, int vy0, int vy1, int vx0,
               int vx1, float fill, const int64_t *ri, const int64_t *ci, int n, int off,
               int k, int s, int bo, float *out) {
    const size_t cb = (size_t)C * sizeof(float);
    const size_t row_len = (size_t)k * k * C;
    for (int i = 0; i < n; ++i) {
        const int by = off + (int)ri[i] * bo * s, bx = off + (int)ci[i] * bo * s;
        for (int oy = 0; oy < bo; ++oy) {
            for (int ox = 0; ox < bo; ++ox) {
                float *o = out + (((size_t)i * bo + oy) * bo + ox) * row_len;
                const int y0 = by + oy * s, x0 = bx + ox * s;
                for (int ky = 0; ky < k; ++ky) {
                    const int y = y0 + ky;
                    float *ok = o + (size_t)ky * k * C;
                    if (y < vy0 || y >= vy1) {
                        for (size_t q = 0; q < (size_t)k * C; ++q) ok[q] = fill;
                        continue;
                    }
                    const float *srow = src + (ptrdiff_t)y * rs;
                    if (x0 >= vx0 && x0 + k <= vx1 && cs == C) {
                        memcpy(ok, srow + (ptrdiff_t)x0 * cs, (size_t)k * cb);
                        continue;
                    }
                    for (int kx = 0; kx < k; ++kx) {
                        const int x = x0 + kx;
                        if (x < vx0 || x >= vx1) {
                            for (int q = 0; q < C; ++q) ok[kx * C + q] = fill;
                        } else {
                            memcpy(ok + (size_t)kx * C, srow + (ptrdiff_t)x * cs, cb);
                        }
                    }
                }
            }
        }
    }
}

/* o = wa a + wb b + wc c + wd d over C channels; o never aliases the inputs (restrict lets
 * the compiler vectorise the loop). */
static inline void bilinear(float *restrict o, const float *restrict a, const float *restrict b,
                            const float *restrict c, const float *restrict d, float wa, float wb,
                            float wc, float wd, int C) {
    for (int k = 0; k < C; ++k) o[k] = wa * a[k] + wb * b[k] + wc * c[k] + wd * d[k];
}

/* One bilinear sample o (C) of an h x w map (base: its pixel (0, 0)) at (y, x) (already
 * clamped), as grid_sample(bilinear, border, align_corners=True) takes it. */
static inline void warp_sample(const float *base, int64_t rs, int64_t cs, int C, int h,
                               int w, float y, float x, float *o) {
    const int y0 = (int)floorf(y), x0 = (int)floorf(x);
    const float wy = y - (float)y0, wx = x - (float)x0;
    const int y1 = y0 + 1 < h ? y0 + 1 : h - 1, x1 = x0 + 1 < w ? x0 + 1 : w - 1;
    const float *a = base + (ptrdiff_t)y0 * rs + (ptrdiff_t)x0 * cs;
    if (wy == 0.0f && wx == 0.0f) {
        memcpy(o, a, (size_t)C * sizeof(float));
        return;
    }
    const float wa = (1.0f - wx) * (1.0f - wy), wb = wx * (1.0f - wy);
    const float wc = (1.0f - wx) * wy, wd = wx * wy;
    bilinear(o, a, base + (ptrdiff_t)y0 * rs + (ptrdiff_t)x1 * cs,
             base + (ptrdiff_t)y1 * rs + (ptrdiff_t)x0 * cs,
             base + (ptrdiff_t)y1 * rs + (ptrdiff_t)x1 * cs, wa, wb, wc, wd, C);
}

/* Pixel (y, x) lies in a `skip` block (uint8 srows x scols, blocks of b pixels; beyond the
 * grid counts as its last row / column; NULL: no block is skipped). */
static inline int in_skip(const uint8_t *skip, int srows, int scols, int b, int y, int x) {
    if (skip == NULL) return 0;
    const int r = y / b < srows ? y / b : srows - 1, c = x / b < scols ? x / b : scols - 1;
    return skip[(size_t)r * scols + c] != 0;
}

/* fs_warp less the pixels in `skip` blocks (uint8 srows x scols, blocks of b pixels; a pixel
 * beyond the grid counts in its last row / column; NULL: none): those are recomputed right
 * after. tmp holds n * C values (sample i at i * C); `threads` > 1 splits both phases over
 * OpenMP threads (every sample is read before any pixel is written). */
void fs_warp_skip(float *t, int64_t rs, int64_t cs, int C, int margin, int h, int w,
                  const int32_t *ys, const int32_t *xs, const float *sy, const float *sx, int n,
                  float *tmp, const uint8_t *skip, int srows, int scols, int b, int threads) {
    const float *base = t + (ptrdiff_t)margin * rs + (ptrdiff_t)margin * cs;
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#pragma omp for schedule(static)
        for (int i = 0; i < n; ++i) {
            if (in_skip(skip, srows, scols, b, ys[i], xs[i])) continue;
            warp_sample(base, rs, cs, C, h, w, sy[i], sx[i], tmp + (size_t)i * C);
        }
#pragma omp for schedule(static)
        for (int i = 0; i < n; ++i) {
            if (in_skip(skip, srows, scols, b, ys[i], xs[i])) continue;
            memcpy(t + (ptrdiff_t)(margin + ys[i]) * rs + (ptrdiff_t)(margin + xs[i]) * cs,
                   tmp + (size_t)i * C, (size_t)C * sizeof(float));
        }
    }
}

/* A residual add without the gather / scatter round trip: blocks (ri, ci) of b pixels of
 * dst := a + b, at storage offset `margin`, inside the valid h x w region; every map has its
 * own row / pixel strides. */
void fs_add_blocks(const float *a, int64_t ars, int64_t acs, const float *bb, int64_t brs,
                   int64_t bcs, float *dst, int64_t drs, int64_t dcs, int C, int margin, int h,
                   int w, const int64_t *ri, const int64_t *ci, int n, int b) {
    for (int i = 0; i < n; ++i) {
        const int fy = (int)ri[i] * b, fx = (int)ci[i] * b;
        const int bh = fy + b > h ? h - fy : b, bw = fx + b > w ? w - fx : b;
        for (int py = 0; py < bh; ++py) {
            const ptrdiff_t y = margin + fy + py, x0 = margin + fx;
            for (int px = 0; px < bw; ++px) {
                const float *pa = a + y * ars + (x0 + px) * acs;
                const float *pb = bb + y * brs + (x0 + px) * bcs;
                float *pd = dst + y * drs + (x0 + px) * dcs;
                for (int k = 0; k < C; ++k) pd[k] = pa[k] + pb[k];
            }
        }
    }
}

/* Nearest 2x upsampling of blocks: dst block (ri, ci) of 2b pixels := src block (ri, ci) of
 * b pixels, each source pixel repeated 2 x 2 (valid dst region h x w only). */
void fs_upsample2x_blocks(const float *src, int64_t srs, int64_t scs, float *dst, int64_t drs,
                          int64_t dcs, int C, int margin, int h, int w, const int64_t *ri,
                          const int64_t *ci, int n, int b) {
    const int bo = 2 * b;
    for (int i = 0; i < n; ++i) {
        const int fy = (int)ri[i] * bo, fx = (int)ci[i] * bo;
        const int bh = fy + bo > h ? h - fy : bo, bw = fx + bo > w ? w - fx : bo;
        for (int py = 0; py < bh; ++py) {
            const ptrdiff_t y = margin + fy + py, sy = margin + ((fy + py) >> 1);
            for (int px = 0; px < bw; ++px)
                memcpy(dst + y * drs + (ptrdiff_t)(margin + fx + px) * dcs,
                       src + sy * srs + (ptrdiff_t)(margin + ((fx + px) >> 1)) * scs,
                       (size_t)C * sizeof(float));
        }
    }
}

/* out[i] = 1 where row i (d floats) of a differs bitwise from row i of b, else 0; both
 * (n, d) contiguous (the head decode redoes the changed anchors only). */
void fs_diff_rows(const float *a, const float *b, int64_t n, int64_t d, uint8_t *out) {
    const size_t rb = (size_t)d * sizeof(float);
    for (int64_t i = 0; i < n; ++i) out[i] = memcmp(a + i * d, b + i * d, rb) != 0;
}

/* The moving pixels of an h x w feature map at `stride` (FramePlan._moving): for each image
 * block (r, c) of `bs` pixels (R x Cc grid, row-major) whose MV (field[(r * Cc + c) * 2 +
 * {0: x, 1: y}], input px) is not zero, the feature pixels (i, j) it holds, i.e. those with
 * min(i * stride / bs, R - 1) = r (a run of rows: the last block row takes the rest of the
 * map) and likewise j: destination (ys, xs) and the clamped source (sy, sx) = (i + mv_y /
 * stride, j + mv_x / stride). Writes at most h * w entries; returns how many. */
int64_t fs_warp_plan(const float *field, int R, int Cc, int bs, int stride, int h, int w,
                     int32_t *ys, int32_t *xs, float *sy, float *sx) {
    int64_t n = 0;
    const float fs = (float)stride, ymax = (float)(h - 1), xmax = (float)(w - 1);
    for (int r = 0; r < R; ++r) {
        int i0 = (r * bs + stride - 1) / stride;
        int i1 = r == R - 1 ? h : ((r + 1) * bs + stride - 1) / stride;
        if (i0 > h) i0 = h;
        if (i1 > h) i1 = h;
        if (i0 >= i1) continue;
        for (int c = 0; c < Cc; ++c) {
            const float mx = field[((size_t)r * Cc + c) * 2], my = field[((size_t)r * Cc + c) * 2 + 1];
            if (mx == 0.0f && my == 0.0f) continue;
            int j0 = (c * bs + stride - 1) / stride;
            int j1 = c == Cc - 1 ? w : ((c + 1) * bs + stride - 1) / stride;
            if (j0 > w) j0 = w;
            if (j1 > w) j1 = w;
            const float fy = my / fs, fx = mx / fs;
            for (int i = i0; i < i1; ++i) {
                float y = (float)i + fy;
                y = y < 0.0f ? 0.0f : (y > ymax ? ymax : y);
                for (int j = j0; j < j1; ++j) {
                    float x = (float)j + fx;
                    x = x < 0.0f ? 0.0f : (x > xmax ? xmax : x);
                    ys[n] = i;
                    xs[n] = j;
                    sy[n] = y;
                    sx[n] = x;
                    ++n;
                }
            }
        }
    }
    return n;
}

/* out (hh, ww) := any pixel of each s x s cell of the (h, w) 0/1 byte mask m (cells beyond
 * the mask are empty; rows beyond hh * s or columns beyond ww * s are not read). */
static float *fs_scratch(int i, size_t n);

void fs_pool_any(const uint8_t *m, int h, int w, int s, uint8_t *out, int hh, int ww) {
    const int hm = h < hh * s ? h : hh * s, wm = w < ww * s ? w : ww * s;
    uint8_t *acc = (uint8_t *)fs_scratch(0, (size_t)wm / sizeof(float) + 1);
    memset(out, 0, (size_t)hh * ww);
    if (acc == NULL) return;
    for (int oy = 0; oy * s < hm; ++oy) {
        /* OR the cell's rows together (a vectorised byte loop), then any per cell */
        const int y1 = oy * s + s < hm ? oy * s + s : hm;
        memcpy(acc, m + (size_t)oy * s * w, (size_t)wm);
        for (int y = oy * s + 1; y < y1; ++y) {
            const uint8_t *restrict row = m + (size_t)y * w;
            uint8_t *restrict a = acc;
            for (int x = 0; x < wm; ++x) a[x] |= row[x];
        }
        uint8_t *restrict o = out + (size_t)oy * ww;
        if (s == 2) { /* the common step (each stride from the half stride's) */
            const int full = wm / 2;
            for (int ox = 0; ox < full; ++ox) o[ox] = (acc[2 * ox] | acc[2 * ox + 1]) != 0;
            if (wm & 1) o[full] = acc[wm - 1] != 0;
            continue;
        }
        for (int ox = 0, x0 = 0; x0 < wm; ++ox, x0 += s) {
            const int x1 = x0 + s < wm ? x0 + s : wm;
            uint8_t any = 0;
            for (int x = x0; x < x1; ++x) any |= acc[x];
            o[ox] = any != 0;
        }
    }
}

/* Columns [c_off, c_off + C) of rows a0 + y * w + x of the (n, ld) rows := the C channels
 * of pixel (y, x) of an h x w map (channels-last: pixel (y, x) at src + y * rs + x * cs),
 * marking changed[row] = 1 where they differ bitwise from what the rows held (the head's
 * raw outputs, kept from frame to frame: one pass instead of a copy and a comparison). */
void fs_rows_update(const float *src, int64_t rs, int64_t cs, int C, int h, int w,
                    float *rows, int64_t ld, int c_off, int64_t a0, uint8_t *changed) {
    const size_t cb = (size_t)C * sizeof(float);
    for (int y = 0; y < h; ++y) {
        for (int x = 0; x < w; ++x) {
            const int64_t r = a0 + (int64_t)y * w + x;
            float *o = rows + r * ld + c_off;
            const float *sp = src + (ptrdiff_t)y * rs + (ptrdiff_t)x * cs;
            if (memcmp(o, sp, cb) != 0) {
                memcpy(o, sp, cb);
                changed[r] = 1;
            }
        }
    }
}

/* The network input from a letterboxed BGR uint8 canvas (H, W, 3), block by block: a block of
 * bs x bs pixels that differs from `prev` (the canvas last written; all blocks when `force`)
 * is written to the float32 storage `dst` (channels-last, 3 channels, valid region at storage
 * offset `margin`) as RGB in [0, 1] (k / 255 in float32, as the numpy table) and copied into
 * `prev`. */
void fs_input_blocks(const uint8_t *canvas, uint8_t *prev, int H, int W, int bs, float *dst,
                     int64_t rs, int64_t cs, int margin, int force) {
    float unit[256];
    for (int k = 0; k < 256; ++k) unit[k] = (float)k / 255.0f;
    const size_t rowb = (size_t)W * 3;
    for (int y0 = 0; y0 < H; y0 += bs) {
        const int y1 = y0 + bs < H ? y0 + bs : H;
        for (int x0 = 0; x0 < W; x0 += bs) {
            const int x1 = x0 + bs < W ? x0 + bs : W;
            const size_t nb = (size_t)(x1 - x0) * 3;
            int dirty = force;
            for (int y = y0; y < y1 && !dirty; ++y)
                dirty = memcmp(canvas + y * rowb + (size_t)x0 * 3, prev + y * rowb + (size_t)x0 * 3,
                               nb) != 0;
            if (!dirty) continue;
            for (int y = y0; y < y1; ++y) {
                const uint8_t *s = canvas + y * rowb + (size_t)x0 * 3;
                float *d = dst + (ptrdiff_t)(margin + y) * rs + (ptrdiff_t)(margin + x0) * cs;
                for (int x = 0; x < x1 - x0; ++x, s += 3, d += cs) {
                    d[0] = unit[s[2]];
                    d[1] = unit[s[1]];
                    d[2] = unit[s[0]];
                }
                memcpy(prev + y * rowb + (size_t)x0 * 3, canvas + y * rowb + (size_t)x0 * 3, nb);
            }
        }
    }
}

/* One input of a concatenation straight into the rows of the 1x1 convolution that reads
 * it: row (i, py, px) of `out` (row stride `ld` floats) gets, at columns [c_off, c_off + C),
 * the C channels of pixel (ri * b + py, ci * b + px) of the map (valid h x w region at
 * storage offset `margin`; zeros outside it). */
void fs_rows_into(const float *src, int64_t rs, int64_t cs, int C, int margin, int h, int w,
                  const int64_t *ri, const int64_t *ci, int n, int b, float *out, int64_t ld,
                  int c_off) {
    const size_t cb = (size_t)C * sizeof(float);
    for (int i = 0; i < n; ++i) {
        const int fy = (int)ri[i] * b, fx = (int)ci[i] * b;
        for (int py = 0; py < b; ++py) {
            const int y = fy + py;
            for (int px = 0; px < b; ++px) {
                const int x = fx + px;
                float *o = out + (((int64_t)i * b + py) * b + px) * ld + c_off;
                if (y >= h || x >= w) {
                    memset(o, 0, cb);
                } else {
                    memcpy(o, src + (ptrdiff_t)(margin + y) * rs + (ptrdiff_t)(margin + x) * cs, cb);
                }
            }
        }
    }
}

/* dst = src warped by integer block MVs (source = destination + mv, clamped at the border),
 * H x W x C uint8, contiguous; blocks without motion are row copies. */
void fs_warp_image(const uint8_t *src, uint8_t *dst, int H, int W, int C, int bs, int rows,
                   int cols, const int32_t *mvx, const int32_t *mvy) {
    /* row by row: a run of blocks without motion is one copy of the row's bytes; a moving
     * block is one copy of its in-frame source span plus the clamped pixels at its ends */
    const size_t rowb = (size_t)W * C;
    for (int r = 0; r < rows; ++r) {
        const int y0 = r * bs, y1 = y0 + bs < H ? y0 + bs : H;
        const int32_t *bx = mvx + (size_t)r * cols, *by = mvy + (size_t)r * cols;
        for (int y = y0; y < y1; ++y) {
            uint8_t *d = dst + (size_t)y * rowb;
            for (int c = 0; c < cols;) {
                const int x0 = c * bs;
                if (bx[c] == 0 && by[c] == 0) {
                    int c2 = c + 1;
                    while (c2 < cols && bx[c2] == 0 && by[c2] == 0) ++c2;
                    const int x1 = c2 * bs < W ? c2 * bs : W;
                    memcpy(d + (size_t)x0 * C, src + (size_t)y * rowb + (size_t)x0 * C,
                           (size_t)(x1 - x0) * C);
                    c = c2;
                    continue;
                }
                const int dx = bx[c], x1 = x0 + bs < W ? x0 + bs : W;
                int sy = y + by[c];
                sy = sy < 0 ? 0 : (sy >= H ? H - 1 : sy);
                const uint8_t *s = src + (size_t)sy * rowb;
                /* destination x whose source x + dx lies inside [0, W) */
                int a = x0 + dx < 0 ? -dx : x0, e = x1 + dx > W ? W - dx : x1;
                if (a > x1) a = x1;
                if (e < a) e = a;
                for (int x = x0; x < a; ++x) memcpy(d + (size_t)x * C, s, (size_t)C);
                if (e > a)
                    memcpy(d + (size_t)a * C, s + (size_t)(a + dx) * C, (size_t)(e - a) * C);
                for (int x = e; x < x1; ++x)
                    memcpy(d + (size_t)x * C, s + (size_t)(W - 1) * C, (size_t)C);
                ++c;
            }
        }
    }
}

/* dst's blocks idx (row-major block indices of bs pixels, cols per row) := src's, H x W x C
 * uint8, contiguous. */
void fs_paste_blocks(const uint8_t *src, uint8_t *dst, int H, int W, int C, int bs, int cols,
                     const int64_t *idx, int n) {
    const size_t rowb = (size_t)W * C;
    for (int i = 0; i < n; ++i) {
        const int r = (int)(idx[i] / cols), c = (int)(idx[i] % cols);
        const int y0 = r * bs, x0 = c * bs;
        const int y1 = y0 + bs < H ? y0 + bs : H, x1 = x0 + bs < W ? x0 + bs : W;
        if (y0 >= H || x0 >= W) continue;
        for (int y = y0; y < y1; ++y)
            memcpy(dst + (size_t)y * rowb + (size_t)x0 * C,
                   src + (size_t)y * rowb + (size_t)x0 * C, (size_t)(x1 - x0) * C);
    }
}

/* ---- One convolution layer in one call: im2col, matrix product, bias, SiLU, scatter ----
 * The matrix product is the BLAS sgemm that torch itself uses (its Fortran `sgemm_`, found
 * in torch's library at run time and handed over by fs_set_blas), called as torch's addmm
 * calls it (column-major, the weight matrix first), so the products equal addmm's. */
typedef void (*fs_sgemm_t)(const char *, const char *, const int *, const int *, const int *,
                           const float *, const float *, const int *, const float *,
                           const int *, const float *, float *, const int *);
typedef int (*fs_threads_t)(int);
static fs_sgemm_t fs_sgemm_fn = NULL;
static fs_threads_t fs_threads_fn = NULL;

static void fs_pick_silu(void);

void fs_set_blas(void *sgemm, void *threads) {
    fs_pick_silu(); /* once, from Python, before any layer runs */
    fs_sgemm_fn = (fs_sgemm_t)sgemm;
    fs_threads_fn = (fs_threads_t)threads;
}

/* Per-thread work buffers (the im2col rows and the product), grown on demand. */
static __thread float *fs_buf[3] = {NULL, NULL, NULL};
static __thread size_t fs_cap[3] = {0, 0, 0};

static float *fs_scratch(int i, size_t n) {
    if (fs_cap[i] < n) {
        free(fs_buf[i]);
        fs_buf[i] = (float *)malloc(n * sizeof(float));
        fs_cap[i] = fs_buf[i] ? n : 0;
    }
    return fs_buf[i];
}

/* exp(x) for the SiLU: Cephes' single-precision polynomial (about 2 ulp), branch-free so
 * that the loops calling it vectorise. Finite math here only (min/max as vector
 * instructions); a NaN input is not something the folded convolutions produce. */
#pragma GCC push_options
#pragma GCC optimize("finite-math-only")
static inline __attribute__((always_inline)) float fs_expf(float x) {
    x = fminf(fmaxf(x, -87.0f), 88.0f);
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round */
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

/* o = SiLU(x) over n values: AVX2 + FMA where the CPU has them (chosen once), else SSE2. */
__attribute__((target("avx2,fma"))) static void fs_silu_avx2(float *restrict o,
                                                             const float *restrict x, int n) {
    for (int j = 0; j < n; ++j) o[j] = x[j] / (1.0f + fs_expf(-x[j]));
}

static void fs_silu_base(float *restrict o, const float *restrict x, int n) {
    for (int j = 0; j < n; ++j) o[j] = x[j] / (1.0f + fs_expf(-x[j]));
}

/* The YOLO detection head's decode (``Detect.decode_columns``) of anchors idx[0..k) (0..k when
 * idx is NULL) of raw outputs whose value c of anchor a is at src[a * sa + c * sc] (rows or
 * columns): per anchor, the four sides' distributions over R bins (softmax, weighted by the
 * DFL weights) give the box (cx, cy, w, h, input pixels) at its anchor (ax, ay) and stride st,
 * then the nc class scores (sigmoid), into out[j * os + a], j < 4 + nc. Each anchor on its
 * own, in a fixed order: a subset decodes to the same values as the whole, on any number of
 * threads (`threads` > 1: the anchors split over OpenMP). */
static void fs_decode_rows(const float *src, int64_t sa, int64_t sc, const int64_t *idx,
                           int k, const float *ax, const float *ay, const float *st,
                           const float *dflw, int R, int nc, float *out, int64_t os,
                           int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && k > 512)
    for (int i = 0; i < k; ++i) {
        const int64_t a = idx != NULL ? idx[i] : i;
        const float *r = src + a * sa;
        float d[4], e[64];
        for (int j = 0; j < 4; ++j) {
            const float *q = r + (int64_t)j * R * sc;
            float m = q[0], sum = 0.0f, acc = 0.0f;
            for (int t = 1; t < R; ++t) m = q[t * sc] > m ? q[t * sc] : m;
            for (int t = 0; t < R; ++t) e[t] = fs_expf(q[t * sc] - m);
            for (int t = 0; t < R; ++t) sum += e[t];
            for (int t = 0; t < R; ++t) acc += e[t] * dflw[t];
            d[j] = acc / sum;
        }
        const float x1 = ax[a] - d[0], y1 = ay[a] - d[1], x2 = ax[a] + d[2], y2 = ay[a] + d[3];
        const float s = st[a];
        out[a] = (x1 + x2) / 2 * s;
        out[os + a] = (y1 + y2) / 2 * s;
        out[2 * os + a] = (x2 - x1) * s;
        out[3 * os + a] = (y2 - y1) * s;
        const float *c = r + (int64_t)4 * R * sc;
        float *o = out + 4 * os + a;
        for (int j = 0; j < nc; ++j) o[j * os] = 1.0f / (1.0f + fs_expf(-c[j * sc]));
    }
}
#pragma GCC pop_options

static void (*fs_silu_row)(float *restrict, const float *restrict, int) = NULL;

static void fs_pick_silu(void) {
    __builtin_cpu_init();
    fs_silu_row = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                      ? fs_silu_avx2 : fs_silu_base;
}

/* dst blocks (ri, ci) of bo pixels := act(A W + bias), A the (n * bo * bo, K) im2col rows of
 * the output pixels (computed here from src when `a` is NULL, as fs_im2col), W (K, N)
 * row-major, bias (N) or NULL, act 1 = SiLU; written inside dst's valid h x w region only.
 * `threads`: the BLAS threads for the product (torch's setting). Returns -1 when no BLAS was
 * set or a buffer could not be had (nothing written), else 0. */
static int conv_part(const float *src, int64_t rs, int64_t cs, int C, int vy0, int vy1,
                     int vx0, int vx1, const int64_t *ri, const int64_t *ci, int n, int off,
                     int k, int s, int bo, const float *a, int K, const float *W,
                     const float *bias, int N, int act, float *dst, int64_t drs, int64_t dcs,
                     int margin, int h, int w) {
    if (n <= 0) return 0;
    const int M = n * bo * bo;
    if (a == NULL) {
        float *rows = fs_scratch(0, (size_t)M * K);
        if (rows == NULL) return -1;
        fs_im2col(src, rs, cs, C, vy0, vy1, vx0, vx1, 0.0f, ri, ci, n, off, k, s, bo, rows);
        a = rows;
    }
    float *y = fs_scratch(1, (size_t)M * N);
    if (y == NULL) return -1;
    if (bias != NULL)
        for (int m = 0; m < M; ++m) memcpy(y + (size_t)m * N, bias, (size_t)N * sizeof(float));
    const float one = 1.0f, beta = bias != NULL ? 1.0f : 0.0f;
    if (fs_threads_fn != NULL) fs_threads_fn(1); /* the threads split the blocks instead */
    fs_sgemm_fn("N", "N", &N, &M, &K, &one, W, &N, a, &K, &beta, y, &N);
    for (int i = 0; i < n; ++i) {
        const int fy = (int)ri[i] * bo, fx = (int)ci[i] * bo;
        const int bh = fy + bo > h ? h - fy : bo, bw = fx + bo > w ? w - fx : bo;
        for (int py = 0; py < bh; ++py) {
            float *drow = dst + (ptrdiff_t)(margin + fy + py) * drs;
            const float *yrow = y + ((size_t)i * bo + py) * bo * N;
            for (int px = 0; px < bw; ++px) {
                float *o = drow + (ptrdiff_t)(margin + fx + px) * dcs;
                if (act)
                    fs_silu_row(o, yrow + (size_t)px * N, N);
                else
                    memcpy(o, yrow + (size_t)px * N, (size_t)N * sizeof(float));
            }
        }
    }
    return 0;
}

/* `threads` > 1: the blocks split evenly over that many OpenMP threads, each with its own
 * work buffers and one BLAS thread (a fork costs microseconds, against tens for a Python
 * thread handoff). */
int fs_conv_blocks(const float *src, int64_t rs, int64_t cs, int C, int vy0, int vy1, int vx0,
                   int vx1, const int64_t *ri, const int64_t *ci, int n, int off, int k, int s,
                   int bo, const float *a, int K, const float *W, const float *bias, int N,
                   int act, int threads, float *dst, int64_t drs, int64_t dcs, int margin,
                   int h, int w) {
    if (fs_sgemm_fn == NULL && n > 0) return -1;
    if (threads > n) threads = n;
    if (threads <= 1)
        return conv_part(src, rs, cs, C, vy0, vy1, vx0, vx1, ri, ci, n, off, k, s, bo, a, K, W,
                         bias, N, act, dst, drs, dcs, margin, h, w);
    int rc = 0;
#pragma omp parallel num_threads(threads) reduction(| : rc)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const int i0 = (int)((int64_t)n * t / T), i1 = (int)((int64_t)n * (t + 1) / T);
        rc |= conv_part(src, rs, cs, C, vy0, vy1, vx0, vx1, ri + i0, ci + i0, i1 - i0, off, k,
                        s, bo, a != NULL ? a + (size_t)i0 * bo * bo * K : NULL, K, W, bias, N,
                        act, dst, drs, dcs, margin, h, w) != 0;
    }
    return rc ? -1 : 0;
}

/* The same for a depthwise convolution (groups = C): dst pixel (oy, ox) of block (ri, ci),
 * channel c := act(bias[c] + sum over the k x k window at storage (off + ri * bo * s +
 * oy * s, ...) of w[(ky * k + kx) * C + c] * src), the window's pixels outside the valid
 * storage rectangle counting as zero (the dense zero padding). No BLAS; -1 when the work
 * buffer could not be had. */
static int dw_part(const float *src, int64_t rs, int64_t cs, int C, int vy0, int vy1,
                   int vx0, int vx1, const int64_t *ri, const int64_t *ci, int n, int off,
                   int k, int s, int bo, const float *W, const float *bias, int act,
                   float *dst, int64_t drs, int64_t dcs, int margin, int h, int w);

int fs_dwconv_blocks(const float *src, int64_t rs, int64_t cs, int C, int vy0, int vy1,
                     int vx0, int vx1, const int64_t *ri, const int64_t *ci, int n, int off,
                     int k, int s, int bo, const float *W, const float *bias, int act,
                     float *dst, int64_t drs, int64_t dcs, int margin, int h, int w,
                     int threads) {
    if (fs_silu_row == NULL) fs_pick_silu();
    if (threads > n) threads = n;
    if (threads <= 1)
        return dw_part(src, rs, cs, C, vy0, vy1, vx0, vx1, ri, ci, n, off, k, s, bo, W, bias,
                       act, dst, drs, dcs, margin, h, w);
    int rc = 0;
#pragma omp parallel num_threads(threads) reduction(| : rc)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const int i0 = (int)((int64_t)n * t / T), i1 = (int)((int64_t)n * (t + 1) / T);
        rc |= dw_part(src, rs, cs, C, vy0, vy1, vx0, vx1, ri + i0, ci + i0, i1 - i0, off, k, s,
                      bo, W, bias, act, dst, drs, dcs, margin, h, w) != 0;
    }
    return rc ? -1 : 0;
}

static int dw_part(const float *src, int64_t rs, int64_t cs, int C, int vy0, int vy1,
                   int vx0, int vx1, const int64_t *ri, const int64_t *ci, int n, int off,
                   int k, int s, int bo, const float *W, const float *bias, int act,
                   float *dst, int64_t drs, int64_t dcs, int margin, int h, int w) {
    float *acc = fs_scratch(0, (size_t)C);
    if (acc == NULL && C > 0) return -1;
    for (int i = 0; i < n; ++i) {
        const int fy = (int)ri[i] * bo, fx = (int)ci[i] * bo;
        const int bh = fy + bo > h ? h - fy : bo, bw = fx + bo > w ? w - fx : bo;
        const int by = off + (int)ri[i] * bo * s, bx = off + (int)ci[i] * bo * s;
        for (int oy = 0; oy < bh; ++oy) {
            for (int ox = 0; ox < bw; ++ox) {
                if (bias != NULL)
                    memcpy(acc, bias, (size_t)C * sizeof(float));
                else
                    memset(acc, 0, (size_t)C * sizeof(float));
                for (int ky = 0; ky < k; ++ky) {
                    const int y = by + oy * s + ky;
                    if (y < vy0 || y >= vy1) continue;
                    for (int kx = 0; kx < k; ++kx) {
                        const int x = bx + ox * s + kx;
                        if (x < vx0 || x >= vx1) continue;
                        const float *restrict sp = src + (ptrdiff_t)y * rs + (ptrdiff_t)x * cs;
                        const float *restrict wp = W + (size_t)(ky * k + kx) * C;
                        float *restrict ap = acc;
                        for (int c = 0; c < C; ++c) ap[c] += wp[c] * sp[c];
                    }
                }
                float *o = dst + (ptrdiff_t)(margin + fy + oy) * drs +
                           (ptrdiff_t)(margin + fx + ox) * dcs;
                if (act)
                    fs_silu_row(o, acc, C);
                else
                    memcpy(o, acc, (size_t)C * sizeof(float));
            }
        }
    }
    return 0;
}

/* Max-pooling (k x k, stride s) into blocks (ri, ci) of bo pixels of dst: output pixel
 * (oy, ox) of a block, channel c := the largest value in its window at storage (off + ri * bo *
 * s + oy * s, ...) of src, pixels outside the valid storage rectangle not counting (torch's
 * -inf padding); written inside dst's valid h x w region only. -1 when the work buffer could
 * not be had. */
int fs_maxpool_blocks(const float *src, int64_t rs, int64_t cs, int C, int vy0, int vy1,
                      int vx0, int vx1, const int64_t *ri, const int64_t *ci, int n, int off,
                      int k, int s, int bo, float *dst, int64_t drs, int64_t dcs, int margin,
                      int h, int w) {
    float *acc = fs_scratch(0, (size_t)C);
    if (acc == NULL && C > 0) return -1;
    for (int i = 0; i < n; ++i) {
        const int fy = (int)ri[i] * bo, fx = (int)ci[i] * bo;
        const int bh = fy + bo > h ? h - fy : bo, bw = fx + bo > w ? w - fx : bo;
        const int by = off + (int)ri[i] * bo * s, bx = off + (int)ci[i] * bo * s;
        for (int oy = 0; oy < bh; ++oy) {
            for (int ox = 0; ox < bw; ++ox) {
                for (int c = 0; c < C; ++c) acc[c] = -INFINITY;
                for (int ky = 0; ky < k; ++ky) {
                    const int y = by + oy * s + ky;
                    if (y < vy0 || y >= vy1) continue;
                    for (int kx = 0; kx < k; ++kx) {
                        const int x = bx + ox * s + kx;
                        if (x < vx0 || x >= vx1) continue;
                        const float *restrict sp = src + (ptrdiff_t)y * rs + (ptrdiff_t)x * cs;
                        float *restrict ap = acc;
                        for (int c = 0; c < C; ++c) ap[c] = sp[c] > ap[c] ? sp[c] : ap[c];
                    }
                }
                memcpy(dst + (ptrdiff_t)(margin + fy + oy) * drs +
                           (ptrdiff_t)(margin + fx + ox) * dcs,
                       acc, (size_t)C * sizeof(float));
            }
        }
    }
    return 0;
}

/* ---- Python entry points of the per-layer kernels ---------------------------------------
 * The engine calls these a few hundred times a frame: as METH_FASTCALL functions of this
 * module their arguments cost ~30 ns each, against ~300 ns through ctypes. Each takes the
 * C function's arguments in order, pointers as Python ints (``tensor.data_ptr()``), the
 * `fill` value as a float, and releases the GIL for the call (two threads may split one). */

/* ---- The kernel queue ---------------------------------------------------------------------
 * A frame of the engine is a few hundred small kernel calls with Python in between. Queued
 * (the q_* entries), a call returns at once and one worker thread runs the calls in order,
 * while the caller's Python goes on to the next layer: on two cores the interpreter's work and
 * the kernels' overlap. Every unqueued entry, and ``sync``, first waits for the queue to empty,
 * so a reader of the maps (torch, numpy) that calls ``sync`` sees every queued write. The
 * worker spins for FS_SPIN_US after its last call (the next one usually comes within tens of
 * microseconds), then sleeps on a condition variable. A queued call that fails is reported
 * by the next ``sync``. The n_<name> entries run a call at once without waiting for the
 * queue: the caller has emptied it and queued the call's other half (two threads, one call). */
typedef int (*fs_run_t)(const long long *v, double f);
#define FS_QCAP 1024
#define FS_QARGS 28
#define FS_SPIN_US 60.0
typedef struct {
    fs_run_t run;
    double f;
    long long v[FS_QARGS];
} fs_qrec;
static fs_qrec fs_q[FS_QCAP];
static _Atomic long long fs_qhead = 0; /* next record to run (the worker advances it) */
static _Atomic long long fs_qtail = 0; /* next free record (the callers advance it) */
static _Atomic int fs_qidle = 0, fs_qwaiters = 0, fs_qfailed = 0;
static pthread_mutex_t fs_qmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fs_qwork = PTHREAD_COND_INITIALIZER, fs_qdone = PTHREAD_COND_INITIALIZER;
static int fs_qstarted = 0;
static _Atomic long long fs_qruns = 0, fs_qsignals = 0, fs_qbusy_ns = 0;

static double fs_now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static void *fs_qworker(void *arg) {
    (void)arg;
    for (;;) {
        const long long h = atomic_load(&fs_qhead);
        if (h == atomic_load(&fs_qtail)) { /* empty: spin a while, then sleep */
            const double t0 = fs_now_us();
            for (unsigned n = 1; h == atomic_load(&fs_qtail); ++n) {
                FS_PAUSE();
                if ((n & 63) == 0 && fs_now_us() - t0 > FS_SPIN_US) {
                    pthread_mutex_lock(&fs_qmu);
                    atomic_store(&fs_qidle, 1);
                    while (h == atomic_load(&fs_qtail)) pthread_cond_wait(&fs_qwork, &fs_qmu);
                    atomic_store(&fs_qidle, 0);
                    pthread_mutex_unlock(&fs_qmu);
                    break;
                }
            }
            continue;
        }
        const fs_qrec *r = &fs_q[h % FS_QCAP];
        const double b0 = fs_now_us();
        if (r->run(r->v, r->f) < 0) atomic_store(&fs_qfailed, 1);
        atomic_fetch_add(&fs_qbusy_ns, (long long)(1e3 * (fs_now_us() - b0)));
        atomic_fetch_add(&fs_qruns, 1);
        atomic_store(&fs_qhead, h + 1);
        if (atomic_load(&fs_qwaiters)) {
            pthread_mutex_lock(&fs_qmu);
            pthread_cond_broadcast(&fs_qdone);
            pthread_mutex_unlock(&fs_qmu);
        }
    }
    return NULL;
}

static void fs_qafter_fork(void) { /* the child has no worker: start afresh */
    fs_qstarted = 0;
    atomic_store(&fs_qhead, 0);
    atomic_store(&fs_qtail, 0);
    atomic_store(&fs_qidle, 0);
    atomic_store(&fs_qwaiters, 0);
    pthread_mutex_init(&fs_qmu, NULL);
    pthread_cond_init(&fs_qwork, NULL);
    pthread_cond_init(&fs_qdone, NULL);
}

/* Wait until every call queued before this one has run (GIL released by the caller). */
static void fs_qdrain(void) {
    const long long t = atomic_load(&fs_qtail);
    if (atomic_load(&fs_qhead) >= t) return;
    const double t0 = fs_now_us();
    for (unsigned n = 1; atomic_load(&fs_qhead) < t; ++n) {
        FS_PAUSE();
        if ((n & 63) == 0 && fs_now_us() - t0 > FS_SPIN_US) {
            pthread_mutex_lock(&fs_qmu);
            atomic_fetch_add(&fs_qwaiters, 1);
            while (atomic_load(&fs_qhead) < t) pthread_cond_wait(&fs_qdone, &fs_qmu);
            atomic_fetch_sub(&fs_qwaiters, 1);
            pthread_mutex_unlock(&fs_qmu);
            return;
        }
    }
}

/* Queue run(v, f) (GIL held: one caller at a time); -1 when no worker could be started. */
static int fs_qpush(fs_run_t run, const long long *v, Py_ssize_t nargs, double f) {
    if (!fs_qstarted) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&th, &at, fs_qworker, NULL);
        pthread_attr_destroy(&at);
        if (rc != 0) return -1;
        static int fork_hook = 0;
        if (!fork_hook) pthread_atfork(NULL, NULL, fs_qafter_fork);
        fork_hook = 1;
        fs_qstarted = 1;
    }
    const long long t = atomic_load(&fs_qtail);
    while (t - atomic_load(&fs_qhead) >= FS_QCAP) FS_PAUSE(); /* full: the worker frees one */
    fs_qrec *r = &fs_q[t % FS_QCAP];
    r->run = run;
    r->f = f;
    memcpy(r->v, v, (size_t)nargs * sizeof(long long));
    atomic_store(&fs_qtail, t + 1);
    if (atomic_load(&fs_qidle)) {
        atomic_fetch_add(&fs_qsignals, 1);
        pthread_mutex_lock(&fs_qmu);
        pthread_cond_signal(&fs_qwork);
        pthread_mutex_unlock(&fs_qmu);
    }
    return 0;
}

/* After a wait: a RuntimeError (and NULL) when a queued call failed since the last check. */
static int fs_qcheck(void) {
    if (atomic_exchange(&fs_qfailed, 0)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a queued engine kernel failed (no BLAS set or out of memory)");
        return -1;
    }
    return 0;
}

static PyObject *py_sync(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    (void)args;
    (void)nargs;
    if (atomic_load(&fs_qhead) < atomic_load(&fs_qtail)) {
        Py_BEGIN_ALLOW_THREADS fs_qdrain();
        Py_END_ALLOW_THREADS
    }
    if (fs_qcheck() < 0) return NULL;
    Py_RETURN_NONE;
}

/* (calls queued now, calls run, worker wake-ups, worker busy ns) since the process started. */
static PyObject *py_queue_stats(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    (void)args;
    (void)nargs;
    return Py_BuildValue("(LLLL)", atomic_load(&fs_qtail) - atomic_load(&fs_qhead),
                         atomic_load(&fs_qruns), atomic_load(&fs_qsignals),
                         atomic_load(&fs_qbusy_ns));
}

/* v[i] := int(args[i]) (a float for i == fidx, into *f); -1 with a Python error set. */
static int fs_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, long long *v,
                   Py_ssize_t fidx, double *f, const char *name) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", name, want, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) {
        if (i == fidx) {
            *f = PyFloat_AsDouble(args[i]);
            if (*f == -1.0 && PyErr_Occurred()) return -1;
            v[i] = 0;
            continue;
        }
        v[i] = PyLong_AsLongLong(args[i]);
        if (v[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

#define PTR(T, i) ((T)(intptr_t)v[i])
#define I(i) ((int)v[i])
/* An entry (py_<name>: waits for the queue, then runs; q_<name>: queues the call) over
 * run_<name>(v, f), which returns < 0 when the C function could not run (RuntimeError(msg)). */
#define FS_PY(pyname, nargs_, fidx, msg)                                                      \
    static PyObject *py_##pyname(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {   \
        long long v[nargs_];                                                                  \
        double f = 0.0;                                                                       \
        int rc;                                                                               \
        (void)self;                                                                           \
        if (fs_args(args, nargs, nargs_, v, fidx, &f, #pyname) < 0) return NULL;              \
        Py_BEGIN_ALLOW_THREADS fs_qdrain();                                                   \
        rc = run_##pyname(v, f);                                                              \
        Py_END_ALLOW_THREADS if (fs_qcheck() < 0) return NULL;                                \
        if (rc < 0) {                                                                         \
            PyErr_SetString(PyExc_RuntimeError, #pyname ": " msg);                            \
            return NULL;                                                                      \
        }                                                                                     \
        Py_RETURN_NONE;                                                                       \
    }                                                                                         \
    __attribute__((unused)) static PyObject *q_##pyname(PyObject *self,                     \
                                                        PyObject *const *args,              \
                                                        Py_ssize_t nargs) {                 \
        long long v[nargs_];                                                                  \
        double f = 0.0;                                                                       \
        if (fs_args(args, nargs, nargs_, v, fidx, &f, #pyname) < 0) return NULL;              \
        if (fs_qpush(run_##pyname, v, nargs_, f) < 0) return py_##pyname(self, args, nargs);  \
        Py_RETURN_NONE;                                                                       \
    }                                                                                         \
    __attribute__((unused)) static PyObject *n_##pyname(PyObject *self,                     \
                                                        PyObject *const *args,              \
                                                        Py_ssize_t nargs) {                 \
        long long v[nargs_];                                                                  \
        double f = 0.0;                                                                       \
        int rc;                                                                               \
        (void)self;                                                                           \
        if (fs_args(args, nargs, nargs_, v, fidx, &f, #pyname) < 0) return NULL;              \
        Py_BEGIN_ALLOW_THREADS rc = run_##pyname(v, f);                                       \
        Py_END_ALLOW_THREADS if (rc < 0) {                                                    \
            PyErr_SetString(PyExc_RuntimeError, #pyname ": " msg);                            \
            return NULL;                                                                      \
        }                                                                                     \
        Py_RETURN_NONE;                                                                       \
    }
#define FS_ENTRY(pyname, nargs_, fidx, call)                                                  \
    static int run_##pyname(const long long *v, double f) {                                   \
        (void)f;                                                                              \
        call;                                                                                 \
        return 0;                                                                             \
    }                                                                                         \
    FS_PY(pyname, nargs_, fidx, "failed")

/* An entry whose C function returns < 0 when it could not run: RuntimeError(msg) then. */
#define FS_ENTRY_RC(pyname, nargs_, msg, call)                                                \
    static int run_##pyname(const long long *v, double f) {                                   \
        (void)f;                                                                              \
        return call;                                                                          \
    }                                                                                         \
    FS_PY(pyname, nargs_, -1, msg)

FS_ENTRY(gather, 16, 8,
         fs_gather(PTR(const float *, 0), v[1], v[2], I(3), I(4), I(5), I(6), I(7), (float)f,
                   PTR(const int64_t *, 9), PTR(const int64_t *, 10), I(11), I(12), I(13),
                   I(14), PTR(float *, 15)))
FS_ENTRY(scatter, 12, -1,
         fs_scatter(PTR(float *, 0), v[1], v[2], I(3), I(4), I(5), I(6), PTR(const float *, 7),
                    PTR(const int64_t *, 8), PTR(const int64_t *, 9), I(10), I(11)))
FS_ENTRY(im2col, 17, 8,
         fs_im2col(PTR(const float *, 0), v[1], v[2], I(3), I(4), I(5), I(6), I(7), (float)f,
                   PTR(const int64_t *, 9), PTR(const int64_t *, 10), I(11), I(12), I(13),
                   I(14), I(15), PTR(float *, 16)))
/* warp_skip with tmp 0 takes the calling thread's own work buffer (a queued warp). */
static int fs_warp_skip_any(float *t, int64_t rs, int64_t cs, int C, int margin, int h, int w,
                            const int32_t *ys, const int32_t *xs, const float *sy,
                            const float *sx, int n, float *tmp, const uint8_t *skip, int srows,
                            int scols, int b, int threads) {
    if (tmp == NULL && (tmp = fs_scratch(2, (size_t)n * C + 1)) == NULL) return -1;
    fs_warp_skip(t, rs, cs, C, margin, h, w, ys, xs, sy, sx, n, tmp, skip, srows, scols, b,
                 threads);
    return 0;
}
FS_ENTRY_RC(warp_skip, 18, "out of memory",
            fs_warp_skip_any(PTR(float *, 0), v[1], v[2], I(3), I(4), I(5), I(6),
                             PTR(const int32_t *, 7), PTR(const int32_t *, 8),
                             PTR(const float *, 9), PTR(const float *, 10), I(11),
                             PTR(float *, 12), PTR(const uint8_t *, 13), I(14), I(15), I(16),
                             I(17)))
FS_ENTRY(add_blocks, 17, -1,
         fs_add_blocks(PTR(const float *, 0), v[1], v[2], PTR(const float *, 3), v[4], v[5],
                       PTR(float *, 6), v[7], v[8], I(9), I(10), I(11), I(12),
                       PTR(const int64_t *, 13), PTR(const int64_t *, 14), I(15), I(16)))
FS_ENTRY(upsample2x_blocks, 14, -1,
         fs_upsample2x_blocks(PTR(const float *, 0), v[1], v[2], PTR(float *, 3), v[4], v[5],
                              I(6), I(7), I(8), I(9), PTR(const int64_t *, 10),
                              PTR(const int64_t *, 11), I(12), I(13)))
FS_ENTRY_RC(conv_blocks, 28, "no BLAS set or out of memory",
            fs_conv_blocks(PTR(const float *, 0), v[1], v[2], I(3), I(4), I(5), I(6), I(7),
                           PTR(const int64_t *, 8), PTR(const int64_t *, 9), I(10), I(11),
                           I(12), I(13), I(14), PTR(const float *, 15), I(16),
                           PTR(const float *, 17), PTR(const float *, 18), I(19), I(20), I(21),
                           PTR(float *, 22), v[23], v[24], I(25), I(26), I(27)))
FS_ENTRY_RC(maxpool_blocks, 21, "out of memory",
            fs_maxpool_blocks(PTR(const float *, 0), v[1], v[2], I(3), I(4), I(5), I(6), I(7),
                              PTR(const int64_t *, 8), PTR(const int64_t *, 9), I(10), I(11),
                              I(12), I(13), I(14), PTR(float *, 15), v[16], v[17], I(18),
                              I(19), I(20)))
FS_ENTRY_RC(dwconv_blocks, 25, "out of memory",
            fs_dwconv_blocks(PTR(const float *, 0), v[1], v[2], I(3), I(4), I(5), I(6), I(7),
                             PTR(const int64_t *, 8), PTR(const int64_t *, 9), I(10), I(11),
                             I(12), I(13), I(14), PTR(const float *, 15),
                             PTR(const float *, 16), I(17), PTR(float *, 18), v[19], v[20],
                             I(21), I(22), I(23), I(24)))

static PyObject *py_warp_plan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    long long v[11];
    double f = 0.0;
    int64_t n;
    (void)self;
    if (fs_args(args, nargs, 11, v, -1, &f, "warp_plan") < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS n = fs_warp_plan(PTR(const float *, 0), I(1), I(2), I(3), I(4), I(5),
                                            I(6), PTR(int32_t *, 7), PTR(int32_t *, 8),
                                            PTR(float *, 9), PTR(float *, 10));
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong((long long)n);
}

static PyObject *py_pool_any(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    long long v[7];
    double f = 0.0;
    (void)self;
    if (fs_args(args, nargs, 7, v, -1, &f, "pool_any") < 0) return NULL;
    fs_pool_any(PTR(const uint8_t *, 0), I(1), I(2), I(3), PTR(uint8_t *, 4), I(5), I(6));
    Py_RETURN_NONE;
}

static PyObject *py_set_blas(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    long long v[2];
    double f = 0.0;
    (void)self;
    if (fs_args(args, nargs, 2, v, -1, &f, "set_blas") < 0) return NULL;
    fs_set_blas(PTR(void *, 0), PTR(void *, 1));
    Py_RETURN_NONE;
}

FS_ENTRY(rows_update, 11, -1,
         fs_rows_update(PTR(const float *, 0), v[1], v[2], I(3), I(4), I(5), PTR(float *, 6),
                        v[7], I(8), v[9], PTR(uint8_t *, 10)))
FS_ENTRY(decode_rows, 14, -1,
         fs_decode_rows(PTR(const float *, 0), v[1], v[2], PTR(const int64_t *, 3), I(4),
                        PTR(const float *, 5), PTR(const float *, 6), PTR(const float *, 7),
                        PTR(const float *, 8), I(9), I(10), PTR(float *, 11), v[12], I(13)))
FS_ENTRY(rows_into, 14, -1,
         fs_rows_into(PTR(const float *, 0), v[1], v[2], I(3), I(4), I(5), I(6),
                      PTR(const int64_t *, 7), PTR(const int64_t *, 8), I(9), I(10),
                      PTR(float *, 11), v[12], I(13)))

#define FS_DEF(name) {#name, (PyCFunction)(void (*)(void))py_##name, METH_FASTCALL, NULL}
#define FS_DEFQ(name)                                                                         \
    FS_DEF(name), {"q_" #name, (PyCFunction)(void (*)(void))q_##name, METH_FASTCALL, NULL},     \
        {"n_" #name, (PyCFunction)(void (*)(void))n_##name, METH_FASTCALL, NULL}
static PyMethodDef fs_methods[] = {
    FS_DEF(gather),     FS_DEF(scatter),    FS_DEF(im2col),
    FS_DEFQ(add_blocks), FS_DEFQ(upsample2x_blocks), FS_DEFQ(rows_into),
    FS_DEFQ(conv_blocks), FS_DEFQ(dwconv_blocks), FS_DEFQ(maxpool_blocks), FS_DEF(set_blas), FS_DEF(rows_update),
    FS_DEF(decode_rows), FS_DEF(warp_plan), FS_DEFQ(warp_skip), FS_DEF(pool_any), FS_DEF(sync), FS_DEF(queue_stats),
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef fs_module = {PyModuleDef_HEAD_INIT, "_engine", NULL, -1, fs_methods};
PyMODINIT_FUNC PyInit__engine(void) { return PyModule_Create(&fs_module); }
