/*
 * gradserve's element-wise derivative comparison in one pass over memory.
 *
 * The eager version (_check_impl._fused_compare) runs about seventeen torch
 * operations per block of elements, each a pass over it; at a million elements
 * (a 1,000 x 1,000 Jacobian) that was half of a check's time. Here every element
 * is read once and reduced to a few numbers per row.
 *
 * Every value is computed with exactly the IEEE operations, in the same order, of
 * the element-wise torch code it replaces, so the results are bit for bit the
 * same: the build turns off floating-point contraction (no fused multiply-add)
 * and uses no fast-math. The tests compare the two on every path.
 *
 * Loaded with ctypes (gradserve_workers/_native.py): no Python or torch headers,
 * so it builds in a second with any C compiler, and the workers fall back to the
 * eager code where it was not built.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* which source the library was built from (workers/setup.py defines it from this
 * file's SHA-256): _native.py loads only a library built from the source it ships,
 * since one built from another version could read its arguments wrongly or compute
 * other numbers */
#ifndef GS_SOURCE_ID
#define GS_SOURCE_ID 0
#endif
uint64_t gs_compare_rows_source(void) { return (uint64_t)GS_SOURCE_ID; }

/* columns per inner step: small enough for the row's scratch to stay in L1 */
#define STEP 128

/* columns c0 .. c0 + n of a row: the row itself when its columns are contiguous,
 * else gathered into buf */
static inline const double *step_of(const double *row, int64_t sc, int64_t c0, int64_t n,
                                    double *buf)
{
    if (sc == 1)
        return row + c0;
    for (int64_t j = 0; j < n; j++)
        buf[j] = row[(c0 + j) * sc];
    return buf;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GS_TARGETS __attribute__((target_clones("avx2", "default")))
#else
#define GS_TARGETS
#endif

/*
 * Per row (one point's row of a (points, rows, cols) layout):
 *
 *   ref     = minus ? (plus - minus) / two_eps : reference
 *   err     = |other - ref|
 *   allowed = |ref| * rtol + atol
 *   ratio   = err / allowed
 *   rel     = err / max(|ref|, tiny)
 *   screen  = (plus + minus - twice_f0) / allowed        (when twice_f0)
 *
 * and writes err_max, rel_max, ratio_max, ratio_arg (first column of the largest
 * ratio), screen_max (largest |screen|, NaN ignored) and row_ok (err <= allowed
 * everywhere). Strides are in elements: sp between points, sr between rows, sc
 * between columns (a transposed operand is read through a small row buffer).
 *
 * Returns 0, or 1 when an error or ratio is not finite (NaN, Inf; found at the end
 * of its row): the caller then runs the generic comparison, whose rules cover those.
 */
GS_TARGETS
int gs_compare_rows(int64_t points, int64_t rows, int64_t cols,
                    const double *plus, int64_t plus_sp, int64_t plus_sr, int64_t plus_sc,
                    const double *minus, int64_t minus_sp, int64_t minus_sr, int64_t minus_sc,
                    const double *other, int64_t other_sp, int64_t other_sr, int64_t other_sc,
                    const double *twice_f0, int64_t f0_sp, int64_t f0_sc,
                    double two_eps, double atol, double rtol, double tiny,
                    double *err_max, double *rel_max, double *ratio_max,
                    int64_t *ratio_arg, double *screen_max, uint8_t *row_ok)
{
    /* per-lane running values over a row's steps, reduced at the row's end: the
     * loops below are then element-wise selects, which vectorize without
     * reassociating anything */
    double ref[STEP], allowed[STEP], pbuf[STEP], mbuf[STEP], obuf[STEP], fbuf[STEP];
    double e_l[STEP], q_l[STEP], rl_l[STEP], s_l[STEP], chk_l[STEP];
    int64_t arg_l[STEP], bad_l[STEP];
    for (int64_t p = 0; p < points; p++) {
        for (int64_t r = 0; r < rows; r++) {
            const double *pl = plus + p * plus_sp + r * plus_sr;
            const double *mi = minus ? minus + p * minus_sp + r * minus_sr : NULL;
            const double *ot = other + p * other_sp + r * other_sr;
            const double *tf = twice_f0 ? twice_f0 + p * f0_sp : NULL;
            int64_t width = cols < STEP ? cols : STEP;
            for (int64_t j = 0; j < width; j++) {
                e_l[j] = 0.0;
                q_l[j] = -1.0;
                rl_l[j] = 0.0;
                s_l[j] = 0.0;
                chk_l[j] = 0.0;
                arg_l[j] = 0;
                bad_l[j] = 0;
            }
            for (int64_t c0 = 0; c0 < cols; c0 += STEP) {
                int64_t n = cols - c0 < STEP ? cols - c0 : STEP;
                const double *plc = step_of(pl, plus_sc, c0, n, pbuf);
                const double *otc = step_of(ot, other_sc, c0, n, obuf);
                const double *mic = mi ? step_of(mi, minus_sc, c0, n, mbuf) : NULL;
                if (mic) {
                    for (int64_t j = 0; j < n; j++)
                        ref[j] = (plc[j] - mic[j]) / two_eps;
                } else {
                    for (int64_t j = 0; j < n; j++)
                        ref[j] = plc[j];
                }
                for (int64_t j = 0; j < n; j++) {
                    double a = fabs(ref[j]);
                    double e = fabs(otc[j] - ref[j]);
                    double al = a * rtol;
                    al = al + atol;
                    double q = e / al;
                    double rl = e / (a < tiny ? tiny : a);
                    allowed[j] = al;
                    /* e - e and q - q are 0 unless e or q is NaN or Inf */
                    chk_l[j] = chk_l[j] + ((e - e) + (q - q));
                    bad_l[j] += e > al;
                    e_l[j] = e > e_l[j] ? e : e_l[j];
                    arg_l[j] = q > q_l[j] ? c0 + j : arg_l[j];
                    q_l[j] = q > q_l[j] ? q : q_l[j];
                    rl_l[j] = rl > rl_l[j] ? rl : rl_l[j];
                }
                if (tf && mic) {
                    const double *tfc = step_of(tf, f0_sc, c0, n, fbuf);
                    for (int64_t j = 0; j < n; j++) {
                        double s = plc[j] + mic[j];
                        s = s - tfc[j];
                        s = fabs(s / allowed[j]);
                        s_l[j] = s > s_l[j] ? s : s_l[j];  /* NaN never wins */
                    }
                }
            }
            double e_max = 0.0, q_max = -1.0, rl_max = 0.0, s_max = 0.0;
            int64_t q_arg = 0, bad = 0;
            for (int64_t j = 0; j < width; j++) {
                if (chk_l[j] != 0.0)
                    return 1;
                bad += bad_l[j];
                e_max = e_l[j] > e_max ? e_l[j] : e_max;
                rl_max = rl_l[j] > rl_max ? rl_l[j] : rl_max;
                s_max = s_l[j] > s_max ? s_l[j] : s_max;
                /* the first column among lanes that reach the largest ratio */
                if (q_l[j] > q_max || (q_l[j] == q_max && arg_l[j] < q_arg)) {
                    q_max = q_l[j];
                    q_arg = arg_l[j];
                }
            }
            int64_t k = p * rows + r;
            err_max[k] = e_max;
            rel_max[k] = rl_max;
            ratio_max[k] = q_max;
            ratio_arg[k] = q_arg;
            screen_max[k] = s_max;
            row_ok[k] = (uint8_t)(bad == 0);
        }
    }
    return 0;
}
