"""Winograd convolution F(4x4, 3x3) for stride-1 3x3 convolutions (Lavin and Gray, 2016).

A 4x4 tile of output needs a 6x6 tile of input. Each input tile d and each 3x3 filter g are
transformed, multiplied elementwise, and transformed back:

    Y = AT [ (G g GT) * (BT d B) ] A        # (4, 4): 36 multiplies where the direct way takes 144

Summed over the C input channels, the elementwise products become 36 matrix products, one per
position xi of the 6x6 tile, which BLAS does:

    V[xi] (T, C)  = input tiles, transformed       # T tiles of a group of images
    U[xi] (C, F)  = filters, transformed           # once per call
    M[xi] (T, F)  = V[xi] @ U[xi]                  # all three row-major
    out           = AT M A per tile, + bias        # written NCHW

The transforms run channels last (the C or F values of one tile position are contiguous), so
LLVM vectorises them across channels. All operands of the products are row-major: OpenBLAS's
kernel for two transposed operands was up to 2x faster on an AVX-512 Xeon but not safe with two
threads multiplying at once (docs/performance.md). Four times fewer multiplies than the
direct convolution; the transforms' constants (1/4, 1/6, 1/24, 8) cost some float32 precision,
measured in tests/test_kernels.py against the float64 reference. The input gradient of a
stride-1 3x3 convolution is itself one (the filters flipped, in and out swapped), so backward
uses the same code; the filters' gradient is a sum of 36 products too, dM (F, T) @ V (T, C),
where dM = A dout AT per tile. Both read one channels-last copy of dout. Maths:
``reference.conv2d_forward`` / ``conv2d_backward``.
"""
import numpy as np
from numba import njit
from numba import uint64 as u

from .pool import _beats, _max2
from .threads import JIT, parallel_for, workspace

# F(4x4, 3x3): BT (6, 6), G (6, 3), AT (4, 6)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


def applies(w_shape, stride, padding):
    """Whether a convolution of weights (F, C, KH, KW) with this stride and padding runs here:
    3x3, stride 1, padding at most 2, and channels enough for the products to pay (C, F >= 16;
    with 8 channels the im2col product measured faster)."""
    F, C, KH, KW = w_shape
    return (KH, KW) == (3, 3) and tuple(stride) == (1, 1) and max(padding) <= 2 and min(C, F) >= 16


@njit(**JIT)
def filters(w):
    """w (F, C, 3, 3) -> U (36, C, F): G g GT for each filter g = w[f, c], position-major, summed
    in float64; each U[xi] (C, F) row-major, as the products V[xi] (T, C) @ U[xi] want it.
    Loops over all F*C filters at once, which LLVM vectorises."""
    F, C = w.shape[0], w.shape[1]
    K = C * F
    g = np.empty((3, 3, K))                                         # g[i, j, c*F + f] = w[f, c, i, j]
    for c in range(C):
        for f in range(F):
            for i in range(3):
                for j in range(3):
                    g[i, j, c * F + f] = w[f, c, i, j]
    t = np.empty((6, 3, K))                                         # G g
    for a in range(6):
        for j in range(3):
            g0, g1, g2, dst = g[0, j], g[1, j], g[2, j], t[a, j]
            for k in range(K):
                dst[k] = G[a, 0] * g0[k] + G[a, 1] * g1[k] + G[a, 2] * g2[k]
    U = np.empty((36, K), w.dtype)
    for a in range(6):
        t0, t1, t2 = t[a, 0], t[a, 1], t[a, 2]
        for b in range(6):
            dst = U[6 * a + b]
            for k in range(K):
                dst[k] = t0[k] * G[b, 0] + t1[k] * G[b, 1] + t2[k] * G[b, 2]
    return U.reshape(36, C, F)


_kept = {}                                                          # id(w) -> (a copy of w, filters(w))


@njit(**JIT)
def _same(a, b):
    """Whether arrays a and b of one shape hold the same values (NaN differs from itself, as in
    np.array_equal): one pass, without np.array_equal's array of booleans."""
    a, b = a.ravel(), b.ravel()
    differ = False
    for i in range(a.size):
        differ |= a[i] != b[i]
    return not differ


def transformed(w):
    """``filters(w)`` for a layer's weights w (F, C, 3, 3), kept while w holds the same values:
    inference runs a net again and again on weights that do not change (the crop search: ten
    small batches per photo), and comparing w with the copy kept costs a tenth of transforming
    it. The values are compared in full every time, so weights changed in place (an optimizer
    step) or a new array at a reused id are transformed anew."""
    kept = _kept.get(id(w))
    if kept is not None and kept[0].shape == w.shape and kept[0].dtype == w.dtype and _same(kept[0], w):
        return kept[1]
    U = filters(w)
    if len(_kept) >= 64:                                            # a bound for nets made and dropped
        _kept.clear()
    _kept[id(w)] = (w.copy(), U)
    return U


@njit(**JIT)
def _split_columns(x, n0, ph, pw, xq):
    """Images n0, n0+1, ... of x (N, C, H, W) -> xq (m, HP, 4, P*C): zero-padded (ph rows above,
    pw columns left), channels last, and the columns split by their remainder mod 4: padded
    column 4p + r, channel c is xq[n, h, r, p*C + c]. Column j of the 6x6 input tile of the
    tiles tw = 0, 1, ... of a tile row is then one contiguous run: xq[n, h, j % 4, (j//4)*C:].

    A transpose: each column's C values, H*W apart in x, are written as one contiguous run,
    which LLVM vectorises with gather loads (docs/performance.md has the times of this and of
    the ways tried before)."""
    m, HP, P = xq.shape[0], xq.shape[1], xq.shape[3] // x.shape[1]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    zero = x.dtype.type(0)
    for n in range(m):
        xn = x[n0 + n].reshape(C, H * W)                             # (C, H*W)
        for h in range(HP):
            row = xq[n, h]                                          # (4, P*C)
            if h < ph or h >= ph + H:
                for r in range(4):
                    for q in range(P * C):
                        row[r, q] = zero
                continue
            for lo, hi in ((0, pw), (pw + W, 4 * P)):                # the columns of padding
                for col in range(lo, hi):
                    dst = row[col % 4, col // 4 * C:(col // 4 + 1) * C]
                    for c in range(C):
                        dst[c] = zero
            for w in range(W):
                col, src = w + pw, (h - ph) * W + w
                dst = row[col % 4, col // 4 * C:(col // 4 + 1) * C]
                for c in range(C):
                    dst[c] = xn[c, src]


@njit(inline="always")
def _bt(d0, d1, d2, d3, d4, d5, a, f2, f4, f5):
    """Row a of BT times the column (d0, ..., d5): the input transform, one value at a time."""
    if a == 0:
        return f4 * d0 - f5 * d2 + d4
    if a == 1:
        return d3 + d4 - f4 * (d1 + d2)
    if a == 2:
        return d4 - d3 + f4 * (d1 - d2)
    if a == 3:
        return d4 - d2 + f2 * (d3 - d1)
    if a == 4:
        return d4 - d2 + f2 * (d1 - d3)
    return f4 * d1 - f5 * d3 + d5


@njit(inline="always")
def _at(s0, s1, s2, s3, s4, s5, a, f2, f4, f8):
    """Row a of AT times the column (s0, ..., s5): the output transform, one value at a time."""
    if a == 0:
        return s0 + s1 + s2 + s3 + s4
    if a == 1:
        return s1 - s2 + f2 * (s3 - s4)
    if a == 2:
        return s1 + s2 + f4 * (s3 + s4)
    return s1 - s2 + f8 * (s3 - s4) + s5


@njit(**JIT)
def _input_tiles(xq, TH, TW, V):
    """xq (m, HP, 4, P*C) from ``_split_columns`` (P >= TW + 2) -> V (36, m*TH*TW*C): BT d B for
    the 6x6 input tile d of every 4x4 output tile; V[6*a + b, k*C + c], tile k = (n*TH + th)*TW + tw.

    A tile row at a time, over the runs q = tw*C + c of its TW tiles, one output row per loop:
    loops that read a few arrays and write one, contiguous in q, are what LLVM vectorises (Numba
    cannot tell it that two arrays do not overlap, and with many it gives up on the run-time tests)."""
    m = xq.shape[0]
    C = V.shape[1] // (m * TH * TW)
    L = TW * C                                                      # one tile row's runs
    t = np.empty((6, 6, L), xq.dtype)                               # BT along the tile rows
    f2, f4, f5 = xq.dtype.type(2), xq.dtype.type(4), xq.dtype.type(5)
    for n in range(m):
        for th in range(TH):
            k0 = (n * TH + th) * L
            for i in range(6):
                row = xq[n, 4 * th + i]                             # (4, P*C): columns 4p + r at [r, p*C + c]
                r0, r1, r2, r3 = row[0], row[1], row[2], row[3]
                r4, r5 = row[0, C:], row[1, C:]
                for b in range(6):
                    dst = t[i, b]
                    for q in range(L):
                        dst[q] = _bt(r0[q], r1[q], r2[q], r3[q], r4[q], r5[q], b, f2, f4, f5)
            for b in range(6):                                      # then down the tile columns
                c0, c1, c2, c3, c4, c5 = t[0, b], t[1, b], t[2, b], t[3, b], t[4, b], t[5, b]
                for a in range(6):
                    dst = V[6 * a + b, k0:k0 + L]
                    for q in range(L):
                        dst[q] = _bt(c0[q], c1[q], c2[q], c3[q], c4[q], c5[q], a, f2, f4, f5)


@njit(**JIT)
def _at_columns(M, k0, s):
    """s[a, b, q] = row a of AT times column b of the tiles' M (M[b + 6*i, k0 + q], i = 0..5), for
    the runs q < L of one tile row: one loop per column writes its four outputs. Each pass of a
    transform is a function of its own, indexed with unsigned integers, so that LLVM vectorises
    its loop as it stands (within its caller, or with signed indices, it ran slower)."""
    L, k = u(s.shape[2]), u(k0)
    f2, f4, f8 = M.dtype.type(2), M.dtype.type(4), M.dtype.type(8)
    for b in range(6):
        for q in range(L):
            m0, m1, m2 = M[b, k + q], M[6 + b, k + q], M[12 + b, k + q]
            m3, m4, m5 = M[18 + b, k + q], M[24 + b, k + q], M[30 + b, k + q]
            s[0, b, q] = _at(m0, m1, m2, m3, m4, m5, 0, f2, f4, f8)
            s[1, b, q] = _at(m0, m1, m2, m3, m4, m5, 1, f2, f4, f8)
            s[2, b, q] = _at(m0, m1, m2, m3, m4, m5, 2, f2, f4, f8)
            s[3, b, q] = _at(m0, m1, m2, m3, m4, m5, 3, f2, f4, f8)


@njit(**JIT)
def _at_rows(s, y):
    """y[a, b, q] = row b of AT times row a of s (s[a, 0, q], ..., s[a, 5, q]): output (4*th + a,
    4*tw + b) of the tile row's run q = tw*F + f, before the bias."""
    L = u(s.shape[2])
    f2, f4, f8 = s.dtype.type(2), s.dtype.type(4), s.dtype.type(8)
    for a in range(4):
        for q in range(L):
            s0, s1, s2, s3, s4, s5 = s[a, 0, q], s[a, 1, q], s[a, 2, q], s[a, 3, q], s[a, 4, q], s[a, 5, q]
            y[a, 0, q] = _at(s0, s1, s2, s3, s4, s5, 0, f2, f4, f8)
            y[a, 1, q] = _at(s0, s1, s2, s3, s4, s5, 1, f2, f4, f8)
            y[a, 2, q] = _at(s0, s1, s2, s3, s4, s5, 2, f2, f4, f8)
            y[a, 3, q] = _at(s0, s1, s2, s3, s4, s5, 3, f2, f4, f8)


@njit(**JIT)
def _at_rows_pooled(s, bq, z, k):
    """z[i, j, q] = the maximum of the 2x2 window (i, j) of the 4x4 tile that ``_at_rows`` makes
    from s, plus the bias bq[q] (bias[f] at run q = tw*F + f), and unless k is None, k[i, j, q]
    its place 0-3 in row order: each window's pairs in row order, then the pair below if it beats
    the pair above, as the pool's (``_max2``, the first NaN wins), on the values with the bias
    added (two values that differ may round to a tie there, and the pool picks the first): the
    conv's outputs then the pool's, bit for bit, without writing the tile. Selects, which LLVM
    vectorises; places held as floats, as the values are."""
    L = u(s.shape[2])
    f2, f4, f8 = s.dtype.type(2), s.dtype.type(4), s.dtype.type(8)
    zero, one, two = s.dtype.type(0), s.dtype.type(1), s.dtype.type(2)
    for i in range(2):
        a, c = 2 * i, 2 * i + 1                                     # the window's two rows of the tile
        for q in range(L):
            b = bq[q]
            s0, s1, s2, s3, s4, s5 = s[a, 0, q], s[a, 1, q], s[a, 2, q], s[a, 3, q], s[a, 4, q], s[a, 5, q]
            y0, y1 = _at(s0, s1, s2, s3, s4, s5, 0, f2, f4, f8) + b, _at(s0, s1, s2, s3, s4, s5, 1, f2, f4, f8) + b
            y2, y3 = _at(s0, s1, s2, s3, s4, s5, 2, f2, f4, f8) + b, _at(s0, s1, s2, s3, s4, s5, 3, f2, f4, f8) + b
            s0, s1, s2, s3, s4, s5 = s[c, 0, q], s[c, 1, q], s[c, 2, q], s[c, 3, q], s[c, 4, q], s[c, 5, q]
            v0, v1 = _at(s0, s1, s2, s3, s4, s5, 0, f2, f4, f8) + b, _at(s0, s1, s2, s3, s4, s5, 1, f2, f4, f8) + b
            v2, v3 = _at(s0, s1, s2, s3, s4, s5, 2, f2, f4, f8) + b, _at(s0, s1, s2, s3, s4, s5, 3, f2, f4, f8) + b
            z[i, 0, q], z[i, 1, q] = _max2(_max2(y0, y1), _max2(v0, v1)), _max2(_max2(y2, y3), _max2(v2, v3))
            if k is not None:
                k[i, 0, q] = _place(y0, y1, v0, v1, zero, one, two)
                k[i, 1, q] = _place(y2, y3, v2, v3, zero, one, two)


@njit(inline="always")
def _place(t0, t1, b0, b1, zero, one, two):
    """The place (0-3, row order) of the first maximum of the 2x2 window t0 t1 / b0 b1, the pool's
    way: which of each pair, then the pair below if it beats the pair above (as a float)."""
    top = one if _beats(t1, t0) else zero
    below = two + (one if _beats(b1, b0) else zero)
    return below if _beats(_max2(b0, b1), _max2(t0, t1)) else top


@njit(inline="always")
def _act(v, floor):
    """v, or with a floor (the ReLU's 0) max(v, floor): NaN stays NaN, as in relu_forward. floor
    None is a type of its own, so each case compiles apart and None costs nothing."""
    if floor is None:
        return v
    return floor if v <= floor else v


@njit(**JIT)
def _output_tiles(M, bias, n0, TH, TW, out, pooled, arg, floor=None):
    """M (36, T*F), M[xi, k*F + f] for tile k = (n*TH + th)*TW + tw (channels last, as the products
    write it) -> out[n0 + n] (F, OH, OW) = AT M A per tile, + bias[f], clipped at the bottom and
    right edges, and unless floor is None max(that, floor) (the ReLU's, 0); or, with out None,
    pooled[n0 + n] (F, OH//2, OW//2) = relu(2x2 max-pool of that), from the tile while it is in
    the cache (a 4x4 tile holds four whole windows), and unless None arg[n0 + n] (uint8) each
    window's first maximum's place, 0-3 in row order. A tile row at a
    time: both transforms (and the pool) run over the row's runs q = tw*F + f, y[a, b, q] holding
    output (4*th + a, 4*tw + b) of filter f; the last copy turns channels last into NCHW."""
    F = bias.shape[0]
    L = TW * F                                                      # one tile row's runs
    s = np.empty((4, 6, L), M.dtype)                                # AT down the tile columns
    y = np.empty((4, 4, L if out is not None else 0), M.dtype)      # then along the tile rows
    z = np.empty((2, 2, L if pooled is not None else 0), M.dtype)   # or the 2x2 windows' maxima,
    k = np.empty((2, 2, L if arg is not None else 0), M.dtype)      # and their places
    bq = np.empty(L if pooled is not None else 0, M.dtype)          # the bias of each run q = tw*F + f
    for q in range(bq.shape[0]):
        bq[q] = bias[q % F]
    zero = M.dtype.type(0)
    for n in range(M.shape[1] // (TH * L)):
        for th in range(TH):
            _at_columns(M, (n * TH + th) * L, s)
            if out is not None:
                _at_rows(s, y)
                OH, OW = out.shape[2], out.shape[3]
                for a in range(min(4, OH - 4 * th)):
                    y0, y1, y2, y3 = y[a, 0], y[a, 1], y[a, 2], y[a, 3]
                    o, r, F4, W4 = out[n0 + n], 4 * th + a, F // 4 * 4, OW // 4 * 4
                    for f in range(0, F4, 4):                       # the turn, 4 filters x 4 columns at a time
                        d0, d1, d2, d3 = o[f, r], o[f + 1, r], o[f + 2, r], o[f + 3, r]
                        b0, b1, b2, b3 = bias[f], bias[f + 1], bias[f + 2], bias[f + 3]
                        for w0 in range(0, W4, 4):                  # written out in full: 1.3x as fast
                            q, w = u(w0 // 4 * F + f), u(w0)        # as a loop over the columns
                            d0[w], d0[w + u(1)], d0[w + u(2)], d0[w + u(3)] = \
                                _act(y0[q] + b0, floor), _act(y1[q] + b0, floor), \
                                _act(y2[q] + b0, floor), _act(y3[q] + b0, floor)
                            q += u(1)
                            d1[w], d1[w + u(1)], d1[w + u(2)], d1[w + u(3)] = \
                                _act(y0[q] + b1, floor), _act(y1[q] + b1, floor), \
                                _act(y2[q] + b1, floor), _act(y3[q] + b1, floor)
                            q += u(1)
                            d2[w], d2[w + u(1)], d2[w + u(2)], d2[w + u(3)] = \
                                _act(y0[q] + b2, floor), _act(y1[q] + b2, floor), \
                                _act(y2[q] + b2, floor), _act(y3[q] + b2, floor)
                            q += u(1)
                            d3[w], d3[w + u(1)], d3[w + u(2)], d3[w + u(3)] = \
                                _act(y0[q] + b3, floor), _act(y1[q] + b3, floor), \
                                _act(y2[q] + b3, floor), _act(y3[q] + b3, floor)
                    for b in range(OW - W4):                        # what is left: the last tile's columns,
                        src = y[a, b, W4 // 4 * F:]                 # then the last filters
                        for f in range(F4):
                            o[f, r, W4 + b] = _act(src[f] + bias[f], floor)
                    for f in range(F4, F):
                        for ow in range(OW):
                            o[f, r, ow] = _act(y[a, ow % 4, ow // 4 * F + f] + bias[f], floor)
            elif pooled is not None:
                _at_rows_pooled(s, bq, z, None if arg is None else k)
                PH, PW = pooled.shape[2], pooled.shape[3]
                for a in range(min(2, PH - 2 * th)):
                    for f in range(F):
                        dst = pooled[n0 + n, f, 2 * th + a]
                        for o in range(PW):
                            v = z[a, o % 2, o // 2 * F + f]
                            dst[o] = zero if v <= 0 else v
                        if arg is not None:
                            at = arg[n0 + n, f, 2 * th + a]
                            for o in range(PW):
                                at[o] = np.uint8(k[a, o % 2, o // 2 * F + f])


@njit(inline="always")
def _a(y0, y1, y2, y3, a, f2, f4, f8):
    """Row a of A (= AT transposed) times (y0, ..., y3): the output transform's adjoint."""
    if a == 0:
        return y0
    if a == 1:
        return y0 + y1 + y2 + y3
    if a == 2:
        return y0 - y1 + y2 - y3
    if a == 3:
        return y0 + f2 * y1 + f4 * y2 + f8 * y3
    if a == 4:
        return y0 - f2 * y1 + f4 * y2 - f8 * y3
    return y3


@njit(**JIT)
def _grad_tiles(dq, ph, pw, TH, TW, dM):
    """dq (m, HP, 4, P*F), dout split by ``_split_columns`` with ph rows and pw columns of zeros
    before it -> dM (36, m*TH*TW*F): A d AT for the 4x4 tile d of dout at every output tile (zero
    past the bottom and right edges, as the split is): the gradient of M, the output transform
    transposed. dM[6*a + b, k*F + f], tile k = (n*TH + th)*TW + tw: channels last, as V is.
    Loops as in ``_input_tiles``; column q of the tiles of a row is one run of dq, from padded
    column 4*tw + q + pw."""
    m = dq.shape[0]
    F = dM.shape[1] // (m * TH * TW)
    L = TW * F
    t = np.empty((4, 6, L), dq.dtype)                               # A along the tile rows
    f2, f4, f8 = dq.dtype.type(2), dq.dtype.type(4), dq.dtype.type(8)
    j0, j1, j2, j3 = pw, pw + 1, pw + 2, pw + 3                     # the tile's columns, padded
    for n in range(m):
        for th in range(TH):
            k0 = (n * TH + th) * L
            for p in range(4):
                row = dq[n, 4 * th + p + ph]                        # (4, P*F)
                d0, d1 = row[j0 % 4, j0 // 4 * F:], row[j1 % 4, j1 // 4 * F:]
                d2, d3 = row[j2 % 4, j2 // 4 * F:], row[j3 % 4, j3 // 4 * F:]
                for b in range(6):
                    dst = t[p, b]
                    for q in range(L):
                        dst[q] = _a(d0[q], d1[q], d2[q], d3[q], b, f2, f4, f8)
            for b in range(6):                                      # then down the tile columns
                r0, r1, r2, r3 = t[0, b], t[1, b], t[2, b], t[3, b]
                for a in range(6):
                    dst = dM[6 * a + b, k0:k0 + L]
                    for q in range(L):
                        dst[q] = _a(r0[q], r1[q], r2[q], r3[q], a, f2, f4, f8)


@njit(**JIT)
def _filter_grads(dU, dw):
    """dU (36, F, C), the gradient of the transformed filters -> dw (F, C, 3, 3) = GT dU G (the
    filter transform's adjoint), in float64, over all F*C filters at once."""
    F, C = dU.shape[1], dU.shape[2]
    K = F * C
    d = dU.reshape(36, K)
    t = np.empty((3, 6, K))                                         # GT dU
    for i in range(3):
        for b in range(6):
            dst = t[i, b]
            for k in range(K):
                acc = 0.0
                for a in range(6):
                    acc += G[a, i] * d[6 * a + b, k]
                dst[k] = acc
    for i in range(3):
        for j in range(3):                                          # then times G
            for k in range(K):
                acc = 0.0
                for b in range(6):
                    acc += t[i, b, k] * G[b, j]
                dw[k // C, k % C, i, j] = acc


def group(x_shape, F, padding):
    """How many images share one pass, and how many such groups the batch x_shape makes: 8
    groups or more, to share out among threads, unless that leaves fewer than 64 tiles in a
    group (the 36 products of few columns run far below BLAS's speed: the search of the web
    page runs batches of 4 to 42 small images); then two groups or more; the transforms' arrays
    V and M of a group about 2**18 values at most (1 MB in float32); one image at least; and
    the count of groups rounded up to a multiple of 4 where the batch allows, so that 2 or 4
    threads get equal shares (3 groups of 14 images kept one of 2 threads idle a third of the
    time on the reference net's last conv). Groups
    are fixed by the batch alone, never by the threads that run them: BLAS may round a product
    differently with other sizes, and a net must give the same output whichever thread runs it
    (the web page's requests)."""
    N, C, H, W = x_shape
    tiles = -(-(H + 2 * padding[0] - 2) // 4) * -(-(W + 2 * padding[1] - 2) // 4)   # per image
    g = max(1, min((1 << 18) // (36 * (C + F) * tiles), max(N // 8, min(-(-64 // tiles), N // 2))))
    groups = min(N, -(-N // g // 4) * 4)                            # a multiple of 4 where the batch allows,
    g = -(-N // groups)                                             # so that 2 or 4 threads get equal shares
    return g, -(-N // g)


def _tiles(H, W):
    """Tiles down and across an output of H x W."""
    return -(-H // 4), -(-W // 4)


def _conv_group(xq, TH, TW, U, bias, n0, out, pooled=None, arg=None, relu=False):
    """out[n0 + n] = conv3x3 + bias (max(that, 0) with relu) for the m images split into xq (m, HP,
    4, P*C) by ``_split_columns``: input tiles, the 36 products, output tiles."""
    m, C, F = xq.shape[0], U.shape[1], U.shape[2]
    T = m * TH * TW
    V = workspace("wino_v", (36, T, C), xq.dtype)                   # (36, T, C)
    M = workspace("wino_m", (36, T, F), xq.dtype)                   # (36, T, F)
    _input_tiles(xq, TH, TW, V.reshape(36, T * C))
    np.matmul(V, U, out=M)                                          # 36 products (T, C) @ (C, F)
    _output_tiles(M.reshape(36, T * F), bias, n0, TH, TW, out, pooled, arg,
                  xq.dtype.type(0) if relu else None)                  # the ReLU's floor, or none


def conv_groups(lo, hi, x, U, bias, padding, g, out, pooled, arg, relu):
    """out[n] = conv3x3(x[n]) + bias (max(that, 0) with relu) for the images of groups [lo, hi) of
    g images (stride 1, ``padding``), by F(4x4, 3x3): x (N, C, H, W), U (36, C, F) from
    ``filters``, bias (F,), out (N, F, OH, OW) or None; pooled (N, F, OH//2, OW//2) or None gets
    relu(2x2 max-pool), and arg (uint8, pooled's shape) or None each window's first maximum's place."""
    C = x.shape[1]
    TH, TW = _tiles(x.shape[2] + 2 * padding[0] - 2, x.shape[3] + 2 * padding[1] - 2)
    for n0 in range(lo * g, min(hi * g, x.shape[0]), g):
        m = min(g, x.shape[0] - n0)
        xq = workspace("wino_x", (m, 4 * TH + 2, 4, (TW + 2) * C), x.dtype)   # (m, HP, 4, P*C)
        _split_columns(x, n0, *padding, xq)
        _conv_group(xq, TH, TW, U, bias, n0, out, pooled, arg, relu)


def conv2d(x, U, bias, padding, out, pooled=None, arg=None, relu=False):
    """out = conv3x3(x) + bias (stride 1, ``padding``), or with relu max(that, 0), on all threads:
    x (N, C, H, W), U (36, C, F) from ``filters``, bias (F,), out (N, F, OH, OW) or None; unless
    None, pooled (N, F, OH//2, OW//2) = relu(2x2 max-pool of that), from the tiles
    (``_output_tiles``), and arg (uint8) each window's first maximum's place 0-3 (for backward)."""
    g, groups = group(x.shape, U.shape[2], padding)
    parallel_for(conv_groups, groups, x, U, bias, padding, g, out, pooled, arg, relu, pieces=groups)
    return out


def grad_groups(lo, hi, x, dout, Ut, padding, g, dx):
    """Backward for the images of groups [lo, hi) of g images: returns dU (36, F, C), the filters'
    gradient in the transformed domain, the sum over tiles of dM (F, T) @ V (T, C), and the sum
    of dout over its images and positions (F,) in float64: row 7 of dM, position (1, 1) of A d AT,
    is each tile's sum. Unless dx is None writes dx[n], the stride-1 conv of dout[n] padded by
    2 - padding with Ut (36, F, C), the filters turned 180 degrees, in and out swapped. One split
    of dout serves both."""
    C, F = x.shape[1], dout.shape[1]
    (ph, pw), (qh, qw) = padding, (2 - padding[0], 2 - padding[1])
    TH, TW = _tiles(*dout.shape[2:])                                # dout's tiles: the filters' gradient
    XH, XW = _tiles(*x.shape[2:])                                   # dx's tiles
    zero = np.zeros(C, x.dtype)
    dU = np.zeros((36, F, C), x.dtype)
    db = np.zeros(F)
    for n0 in range(lo * g, min(hi * g, x.shape[0]), g):
        m = min(g, x.shape[0] - n0)
        T = m * TH * TW
        dq = workspace("wino_d", (m, 4 * max(TH, XH) + 2, 4, (max(TW, XW) + 2) * F), x.dtype)
        _split_columns(dout, n0, qh, qw, dq)                        # dout padded, channels last
        if dx is not None:
            _conv_group(dq, XH, XW, Ut, zero, n0, dx)
        xq = workspace("wino_x", (m, 4 * TH + 2, 4, (TW + 2) * C), x.dtype)
        V = workspace("wino_vx", (36, T, C), x.dtype)               # (36, T, C)
        dM = workspace("wino_dm", (36, T, F), x.dtype)              # (36, T, F)
        part = workspace("wino_du", (36, F, C), x.dtype)
        _split_columns(x, n0, ph, pw, xq)
        _input_tiles(xq, TH, TW, V.reshape(36, T * C))
        _grad_tiles(dq, qh, qw, TH, TW, dM.reshape(36, T * F))
        np.matmul(dM.transpose(0, 2, 1), V, out=part)               # 36 products (F, T) @ (T, C)
        dU += part
        db += dM[7].sum(axis=0, dtype=np.float64)                   # (F,): the tiles' sums
    return dU, db


def backward(x, dout, w, padding, dx):
    """The gradients of the stride-1 3x3 convolution of x (N, C, H, W) with w (F, C, 3, 3) giving
    dout (N, F, OH, OW): returns dw (F, C, 3, 3) and db (F,) (the bias's: dout summed), and writes
    dx (N, C, H, W) unless None (the input gradient: itself such a convolution, of dout with the
    filters turned and transposed), on all threads; the products in the transformed domain, 4x
    fewer multiplies than im2col's."""
    Ut = filters(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])          # (36, F, C)
    g, groups = group(x.shape, dout.shape[1], padding)
    parts = parallel_for(grad_groups, groups, x, dout, Ut, padding, g, dx)
    dU = sum(dU for dU, _ in parts)                                 # (36, F, C)
    dw = np.empty((dout.shape[1], x.shape[1], 3, 3), x.dtype)
    _filter_grads(dU, dw)
    return dw, sum(db for _, db in parts).astype(x.dtype)
