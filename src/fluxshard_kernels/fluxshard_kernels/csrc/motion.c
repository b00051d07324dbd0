/* FluxShard block motion search (CPU). Predictive block matching on 8-bit luma:
 * each block evaluates its predictors (given ones plus the already-searched left, top and
 * top-right neighbours of this pass), walks a small diamond from the best, then checks the
 * 8-neighbourhood. Cost: sum of absolute differences over the in-frame part of the block.
 *
 * Conventions (shared with fluxshard_kernels.motion and proxy.warp_image_int):
 *   mv = (dx, dy), source = destination + mv, integer pixels; the reference is read with edge
 *   clamping, implemented by a replicate-padded copy with `pad` pixels on each side, so every
 *   |dx|, |dy| <= limit <= pad is valid.
 * The Python reference implementation (motion._search_reference) follows the same steps and
 * tie-breaking; tests check they agree exactly.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

static inline uint32_t sad_block(const uint8_t *a, int as, const uint8_t *b, int bstride,
                                 int h, int w) {
    uint32_t s = 0;
    for (int y = 0; y < h; ++y) {
        const uint8_t *p = a + (ptrdiff_t)y * as;
        const uint8_t *q = b + (ptrdiff_t)y * bstride;
        uint32_t r = 0;
        for (int x = 0; x < w; ++x) {
            int d = (int)p[x] - (int)q[x];
            r += (uint32_t)(d < 0 ? -d : d);
        }
        s += r;
    }
    return s;
}

typedef struct {
    const uint8_t *cur; int cs;
    const uint8_t *ref; int rs;   /* ref points at image (0,0) inside the padded buffer */
    int y0, x0, h, w, limit;
} ctx_t;

static inline uint32_t cost_at(const ctx_t *c, int dx, int dy) {
    return sad_block(c->cur + (ptrdiff_t)c->y0 * c->cs + c->x0, c->cs,
                     c->ref + (ptrdiff_t)(c->y0 + dy) * c->rs + (c->x0 + dx), c->rs,
                     c->h, c->w);
}

/* try candidate; keeps the first best (strictly smaller cost wins) */
static inline void try_cand(const ctx_t *c, int dx, int dy, int *bx, int *by, uint32_t *best) {
    if (dx > c->limit || dx < -c->limit || dy > c->limit || dy < -c->limit) return;
    if (dx == *bx && dy == *by && *best != UINT32_MAX) return;
    uint32_t s = cost_at(c, dx, dy);
    if (s < *best) { *best = s; *bx = dx; *by = dy; }
}

/* Search all blocks of a (H, W) frame cut into `bsz` blocks (rows x cols grid).
 * preds: rows*cols*npred*2 int32 (dx, dy) predictors per block (may repeat).
 * out_mv: rows*cols*2 int32; out_sad: rows*cols uint32. */
void fs_block_search(const uint8_t *cur, int cs, const uint8_t *ref, int rs, int H, int W,
                     int bsz, int rows, int cols, const int32_t *preds, int npred, int limit,
                     int diamond_iters, int32_t *out_mv, uint32_t *out_sad) {
    static const int dia[4][2] = {{0, -1}, {-1, 0}, {1, 0}, {0, 1}};
    static const int sq[8][2] = {{-1, -1}, {0, -1}, {1, -1}, {-1, 0}, {1, 0},
                                 {-1, 1}, {0, 1}, {1, 1}};
    for (int r = 0; r < rows; ++r) {
        for (int q = 0; q < cols; ++q) {
            int b = r * cols + q;
            ctx_t c = {cur, cs, ref, rs, r * bsz, q * bsz,
                       (H - r * bsz) < bsz ? (H - r * bsz) : bsz,
                       (W - q * bsz) < bsz ? (W - q * bsz) : bsz, limit};
            int bx = 0, by = 0;
            uint32_t best = UINT32_MAX;
            try_cand(&c, 0, 0, &bx, &by, &best);
            for (int k = 0; k < npred; ++k) {
                const int32_t *p = preds + ((ptrdiff_t)b * npred + k) * 2;
                try_cand(&c, p[0], p[1], &bx, &by, &best);
            }
            if (q > 0) try_cand(&c, out_mv[(b - 1) * 2], out_mv[(b - 1) * 2 + 1], &bx, &by, &best);
            if (r > 0) {
                int t = b - cols;
                try_cand(&c, out_mv[t * 2], out_mv[t * 2 + 1], &bx, &by, &best);
                if (q + 1 < cols)
                    try_cand(&c, out_mv[(t + 1) * 2], out_mv[(t + 1) * 2 + 1], &bx, &by, &best);
            }
            for (int it = 0; it < diamond_iters; ++it) {
                int cx = bx, cy = by;
                for (int k = 0; k < 4; ++k) try_cand(&c, cx + dia[k][0], cy + dia[k][1], &bx, &by, &best);
                if (bx == cx && by == cy) break;
            }
            int cx = bx, cy = by;
            for (int k = 0; k < 8; ++k) try_cand(&c, cx + sq[k][0], cy + sq[k][1], &bx, &by, &best);
            out_mv[b * 2] = bx;
            out_mv[b * 2 + 1] = by;
            out_sad[b] = best;
        }
    }
}

/* Importable as a module too (setuptools builds it as an extension); used through ctypes. */
static struct PyModuleDef fs_module = {PyModuleDef_HEAD_INIT, "_motion", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__motion(void) { return PyModule_Create(&fs_module); }
