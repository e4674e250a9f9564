"""CUDA kernels (numba.cuda): the ops of the kernel contract (``kernels/__init__.py``) with the
same signatures and results as ``reference.py``, on device arrays. Nothing here copies an
activation to the host: a training step stays on the GPU and only the loss op's per-row results
(2, N) come back, once. Arrays come from the caching pool of ``memory.py``, except
``zeros_like`` (optimizer buffers: state that lives as long as the model).

Every convolution and dense product is one blocked matrix-product kernel (``_product_kernel``)
that reads its operands where they lie and writes its result where it belongs, so no im2col
columns or layout copies are ever stored:

    out (N, F, OH, OW) = w (F, C*KH*KW) @ im2col(x) (C*KH*KW, N*OH*OW) + b    one launch
    dw, db             = dout (F, N*OH*OW) @ [im2col(x).T | 1]                  one launch
    dx (N, C, H, W)    = w_t (C, F*KH*KW) @ dcols(dout) (F*KH*KW, N*H*W)        one launch

Long, narrow products (the weight gradients: few outputs, K = N*OH*OW) split K over blocks and
add the parts in float64; batch norm's per-channel sums split each channel over blocks the same
way. The last block to finish adds the parts (``_last_block``, with tickets of its launch
site's own; ``_read_part`` reads the parts past the L1 cache). ``tuning`` holds the options a
GPU has yet to measure (benchmarks/gpu_check.py times them). The other kernels walk their
outputs with a grid-stride loop (``for i in range(cuda.grid(1), n, cuda.gridsize(1))``), so any
launch size is correct; backward passes gather (each thread sums what flows into its own input
element) rather than scatter. The optimizer updates every parameter of a model in one launch.

Dropout draws its masks from a counter-based hash (lowbias32 of seed and index) seeded from
``convlib.manual_seed``'s generator: reproducible, but not the CPU's masks.

Under ``NUMBA_ENABLE_CUDASIM=1`` numba runs these kernels on the CPU, one Python thread per
GPU thread; blocks are made small there (TPB, RB, the product's tiles) so the tests stay quick.
The code is the same.
"""
import contextlib
import functools
import math

import numpy as np
from numba import config, cuda, float32, float64, int32, int64, uint64

from ..reference import out_size
from .memory import empty as _empty
from .memory import upload

if not hasattr(np, "row_stack"):    # NumPy 2.5 removed it; numba-cuda 0.30 registers it when it
    np.row_stack = np.vstack        # first compiles a kernel and fails without it (seen on an H200)

SIM = bool(config.ENABLE_CUDASIM)
if SIM:
    from .simulator import make_shared_arrays_thread_safe
    make_shared_arrays_thread_safe()
TPB = 8 if SIM else 256                       # threads per block of 1-D kernels
RB = 8 if SIM else 256                        # threads per block of per-channel reductions (power of 2)
MAX_BLOCKS = 4 if SIM else 65535


def _launch(n):
    """[blocks, threads] for a grid-stride kernel over n items."""
    return max(1, min(MAX_BLOCKS, -(-n // TPB))), TPB


def _flat(a):
    return a.reshape(a.size)


# ---------------------------------------------------------------- array helpers
@cuda.jit(device=True)
def _window_of(h, p, i, s, n_out):
    """The output index o (< n_out) whose window holds input h at offset i (h = o*s - p + i), or -1."""
    t = h + p - i
    return t // s if t >= 0 and t % s == 0 and t // s < n_out else -1


@cuda.jit(device=True)
def _unravel(idx, C, H, W):
    """Flat index of an (N, C, H, W) array -> (n, c, h, w)."""
    return idx // (C * H * W), (idx // (H * W)) % C, (idx // W) % H, idx % W


@cuda.jit(device=True)
def _last_block(tickets, slot, count, flag):
    """Called by every thread of a block once it has written its part of a result: True (in all
    its threads) in the last of the ``count`` blocks that share tickets[slot] to get here, which
    then resets the slot for the next launch. flag: a shared int32 (1,). The last block must then
    read the other blocks' parts with ``_read_part``."""
    cuda.threadfence()                                  # release: this block's part is seen before its ticket
    cuda.syncthreads()
    if cuda.threadIdx.x == 0 and cuda.threadIdx.y == 0:
        flag[0] = cuda.atomic.add(tickets, slot, 1) == count - 1
        if flag[0]:
            tickets[slot] = 0
            cuda.threadfence()                          # acquire: the parts are read after the ticket
    cuda.syncthreads()
    return flag[0]


_ldcg = (lambda a, i: a[i]) if SIM else cuda.ldcg      # (the simulator has no caches, nor cuda.ldcg)


@cuda.jit(device=True)
def _read_part(parts, z, i, j):
    """parts[z, i, j], written by another block, read through the L2 cache (ld.global.cg), never
    L1: a multiprocessor's L1 is not kept coherent with other multiprocessors' writes, and an
    ordinary load may return a stale copy of the line (CUDA's threadFenceReduction sample reads
    its parts through ``volatile`` for the same reason)."""
    return _ldcg(parts, (int64(z), int64(i), int64(j)))


@cuda.jit
def _cast(src, dst):
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = src[i]


def _as(a, dtype):
    """Device array a cast to dtype (a itself when it has it)."""
    if a.dtype == dtype:
        return a
    out = _empty(a.shape, dtype)
    _cast[_launch(a.size)](a, out)
    return out


@cuda.jit
def _fill(a, value):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


@cuda.jit
def _add(dst, src):
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] += src[i]


def zeros_like(a):
    """Zeros like a, outside the memory pool: optimizer buffers live as long as the model and
    would otherwise keep blocks that a training step's temporaries use."""
    out = cuda.device_array(a.shape, a.dtype)
    zero_(out)
    return out


def zero_(a):
    """a[...] = 0 in place."""
    if a.size:
        _fill[_launch(a.size)](_flat(a), 0)


def accumulate(dst, src):
    """dst += src in place."""
    if dst.size:
        _add[_launch(dst.size)](_flat(dst), _flat(src))


@cuda.jit
def _sum(a, b, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] + b[i]


def add(a, b):
    """a + b, a new array shaped like a."""
    return _map(_sum, a, b)


@cuda.jit
def _finite_flag(a, flag):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        if not math.isfinite(a[i]):
            flag[0] = 0                                 # every writer writes the same value


def all_finite(x):
    """True when no element is NaN or infinite (one int comes back to the host)."""
    flag = upload(np.ones(1, np.int32))
    if x.size:
        _finite_flag[_launch(x.size)](_flat(x), flag)
    return bool(flag.copy_to_host()[0])


# ---------------------------------------------------------------- matrix products
# One blocked product kernel serves every convolution and dense product. What differs between
# them is how the two operands are read and the result written, so those are device functions
# the kernel is built with (``_product_kernel``): an operand reads element (r, c) of the matrix it
# stands for, which need not exist in memory (the im2col columns are read straight from the
# NCHW input), and a store writes element (i, j) of the result where it belongs (the NCHW output,
# with its bias). Operand kinds, the matrix each one stands for, and its fast (contiguous) axis:
#   rows      a (R, C) itself                                           columns
#   cols      a (C, R) read transposed: (R, C)                          rows
#   nchw      d (N, F, P) as the (F, N*P) matrix of the GEMM            columns
#   im2col    x (N, C, H, W) as its columns (C*KH*KW, N*OH*OW)          columns
#   im2col_t  the transpose of those columns: (N*OH*OW, C*KH*KW)        rows
#   w_t       w (F, C, KH, KW) as (C, F*KH*KW)                          columns
#   dcols     dout (N, F, OH, OW) as the columns of the transposed convolution (F*KH*KW, N*H*W),
#             zero where no window puts (i, j) over (h, w)              columns
# `rows` and `im2col_t` read 1 one column past their right edge: a product asked for one more
# output column than the result has gets, in it, the row sums of the other operand: a bias's
# gradient, from the same pass as the weights' (the store sends that column to ``extra``).
# Literals are written in the array's own type (``a.dtype.type(1)``): a bare 0 or 1 beside a
# float32 element would make numba unify the two as float64, and a float32 kernel would convert
# every element it reads to float64 and back (slow where FP64 runs at 1/64 rate).
BM, BN, BK = (4, 4, 4) if SIM else (64, 64, 16)        # block tile: BM x BN outputs, BK-deep slabs
RM, RN = (2, 2) if SIM else (4, 4)                      # outputs per thread: (BN/RN, BM/RM) threads
# How long sums are split over blocks, and the product kernels' launch bounds: ``tuning`` says
# what each means; the defaults are what benchmarks/gpu_check.py measured fastest on an H200 at
# batch 32 and 256 (docs/gpu.md).
SPLIT = "sm"                                            # "sm" or "fixed"
FIXED_SPLIT = (16, 16) if SIM else (264, 512)           # "fixed": blocks to aim at, least terms per part
PRODUCT_BLOCKS_PER_SM = 2                               # launch bounds (0: none)


@cuda.jit(device=True)
def _rows(a, r, c, g):
    return a[r, c] if c < a.shape[1] else a.dtype.type(1)


@cuda.jit(device=True)
def _cols(a, r, c, g):
    return a[c, r]


@cuda.jit(device=True)
def _nchw(d, f, q, g):
    P = d.shape[2]
    return d[q // P, f, q % P]


@cuda.jit(device=True)
def _im2col(x, r, q, g):
    KH, KW, sh, sw, ph, pw, OH, OW = g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]
    c, i, j = r // (KH * KW), (r // KW) % KH, r % KW
    n, p = q // (OH * OW), q % (OH * OW)
    h, w = (p // OW) * sh - ph + i, (p % OW) * sw - pw + j
    return x[n, c, h, w] if 0 <= h < x.shape[2] and 0 <= w < x.shape[3] else x.dtype.type(0)


@cuda.jit(device=True)
def _im2col_t(x, q, r, g):
    return _im2col(x, r, q, g) if r < x.shape[1] * g[0] * g[1] else x.dtype.type(1)


@cuda.jit(device=True)
def _w_t(w, c, r, g):
    KH, KW = w.shape[2], w.shape[3]
    return w[r // (KH * KW), c, (r // KW) % KH, r % KW]


@cuda.jit(device=True)
def _dcols(dout, r, q, g):
    KH, KW, sh, sw, ph, pw, OH, OW, H, W = g
    f, i, j = r // (KH * KW), (r // KW) % KH, r % KW
    n, p = q // (H * W), q % (H * W)
    oh, ow = _window_of(p // W, ph, i, sh, OH), _window_of(p % W, pw, j, sw, OW)
    return dout[n, f, oh, ow] if oh >= 0 and ow >= 0 else dout.dtype.type(0)


@cuda.jit(device=True)
def _store_rows(c, extra, i, j, v):
    """c[i, j] = v; the column past c's edge (a bias gradient) goes to extra[i]."""
    if j < c.shape[1]:
        c[i, j] = v
    else:
        extra[i] = v


@cuda.jit(device=True)
def _store_rows_bias(c, bias, i, j, v):
    c[i, j] = v + bias[j]


@cuda.jit(device=True)
def _store_nchw_bias(out, bias, f, q, v):
    """out (N, F, P)[n, f, p] = v + bias[f] for the GEMM's (f, q = n*P + p)."""
    P = out.shape[2]
    out[q // P, f, q % P] = v + bias[f]


_OPERANDS = {"rows": (_rows, True), "cols": (_cols, False), "nchw": (_nchw, True), "im2col": (_im2col, True),
             "im2col_t": (_im2col_t, False), "w_t": (_w_t, True), "dcols": (_dcols, True)}
_STORES = {"rows": _store_rows, "rows_bias": _store_rows_bias, "nchw_bias": _store_nchw_bias}
_PRODUCTS = {}


def _product_kernel(dtype, a_kind, b_kind, store_kind, blocks_per_sm=0):
    """The blocked product kernel reading op(A) as ``a_kind``, op(B) as ``b_kind`` and writing
    through ``store_kind`` (names in _OPERANDS / _STORES), for one dtype; built once, cached.
    blocks_per_sm > 0: compiled with launch bounds asking for registers few enough that this many
    blocks fit on a multiprocessor at once (see ``tuning``)."""
    blocks_per_sm = int(blocks_per_sm)                          # (tests/ptx_check.py passes a key's str)
    key = (np.dtype(dtype).str, a_kind, b_kind, store_kind, str(blocks_per_sm))
    if key not in _PRODUCTS:
        nbtype = float32 if np.dtype(dtype) == np.float32 else float64
        (read_a, a_fast), (read_b, b_fast), store = _OPERANDS[a_kind], _OPERANDS[b_kind], _STORES[store_kind]
        TX, TY = BN // RN, BM // RM
        SA, SB = (BK, BM + 1), (BK, BN + 1)                       # +1: no bank conflicts on the
        #                                                           stores along the k axis

        def product(a, b, c, extra, M, N, K, g, split, partial, tickets):
            """C (M, N) = op(A) (M, K) @ op(B) (K, N). Each block computes BM x BN tiles of C (a
            column of tiles, striding over the rows, so any M fits the grid's y-blocks), staging
            BK-deep slabs of op(A) and op(B) in shared memory (loaded along each operand's fast
            axis, so neighbouring threads read neighbouring addresses); each thread keeps RM x RN
            sums in registers: rows ty + i*TY, columns tx + j*TX. With split > 1 (grid z) each
            block sums one part of K into partial (split, M, N); the last block of a tile to
            finish (counted in tickets) adds the parts up in float64, in order (the same result
            every run), and stores the result. Everything else is computed in the dtype of C:
            the literals are ``nbtype(0)``, not 0 (see the operands' note above)."""
            sa = cuda.shared.array(SA, nbtype)                    # op(A)'s slab, k-major
            sb = cuda.shared.array(SB, nbtype)                    # op(B)'s slab
            last = cuda.shared.array(1, int32)
            acc = cuda.local.array((RM, RN), nbtype)
            rb = cuda.local.array(RN, nbtype)
            tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
            t = ty * TX + tx
            col0 = cuda.blockIdx.x * BN
            part = -(-K // (split * BK)) * BK                     # this block's share of K
            k_lo, k_hi = cuda.blockIdx.z * part, min(K, (cuda.blockIdx.z + 1) * part)
            for row0 in range(cuda.blockIdx.y * BM, M, cuda.gridDim.y * BM):   # the same for the whole block
                for i in range(RM):
                    for j in range(RN):
                        acc[i, j] = 0
                for k0 in range(k_lo, k_hi, BK):
                    for e in range(t, BM * BK, TX * TY):
                        i, k = (e // BK, e % BK) if a_fast else (e % BM, e // BM)
                        ok = row0 + i < M and k0 + k < k_hi
                        sa[k, i] = read_a(a, row0 + i, k0 + k, g) if ok else nbtype(0)
                    for e in range(t, BK * BN, TX * TY):
                        k, j = (e // BN, e % BN) if b_fast else (e % BK, e // BK)
                        ok = k0 + k < k_hi and col0 + j < N
                        sb[k, j] = read_b(b, k0 + k, col0 + j, g) if ok else nbtype(0)
                    cuda.syncthreads()
                    for k in range(BK):
                        for j in range(RN):
                            rb[j] = sb[k, tx + j * TX]
                        for i in range(RM):
                            av = sa[k, ty + i * TY]
                            for j in range(RN):
                                acc[i, j] += av * rb[j]
                    cuda.syncthreads()
                if split == 1:
                    for i in range(RM):
                        for j in range(RN):
                            r, q = row0 + ty + i * TY, col0 + tx + j * TX
                            if r < M and q < N:
                                store(c, extra, r, q, acc[i, j])
                else:                                             # then the grid has a y-block per row tile
                    for i in range(RM):
                        for j in range(RN):
                            r, q = row0 + ty + i * TY, col0 + tx + j * TX
                            if r < M and q < N:
                                partial[cuda.blockIdx.z, r, q] = acc[i, j]
                    if _last_block(tickets, cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x, split, last):
                        for i in range(RM):
                            for j in range(RN):
                                r, q = row0 + ty + i * TY, col0 + tx + j * TX
                                if r < M and q < N:
                                    s = 0.0
                                    for z in range(split):
                                        s += _read_part(partial, z, r, q)
                                    store(c, extra, r, q, nbtype(s))
        product.product_key = key                                 # for tests/ptx_check.py
        product.launch_bounds = (TX * TY, blocks_per_sm) if blocks_per_sm > 0 else None
        options = {} if SIM or product.launch_bounds is None else {"launch_bounds": product.launch_bounds}
        _PRODUCTS[key] = cuda.jit(product, **options)             # (the simulator has no registers to bound)
    return _PRODUCTS[key]


_CONSTANTS = {}


def _constant(key, make):
    """A small device array made once by make() and cached: a kernel argument never written
    (or, for the last-block tickets, always left as it was found)."""
    if key not in _CONSTANTS:
        _CONSTANTS[key] = cuda.to_device(make())
    return _CONSTANTS[key]


def _zeros(n, dtype):
    return _constant(("zeros", n, np.dtype(dtype).str), lambda: np.zeros(n, dtype))


def _tickets(site, n):
    """n zeros (int32) for ``_last_block``, made once for each launch site (``site``: its name)
    and count, and kept, since every launch leaves them as it found them. Launches of one site
    share its array, which is safe only because convlib runs every kernel in order on one stream
    (as the memory pool assumes): two launches of a site in flight at once, on two streams,
    would need an array each. Different sites never share one."""
    return _constant(("tickets", site, n), lambda: np.zeros(n, np.int32))


_NO_GEOMETRY = (0,) * 10


def _parts(blocks, length):
    """In how many parts to split a sum of ``length`` terms that ``blocks`` blocks compute side by
    side: enough to fill the GPU (about ``aim`` blocks), each part at least ``least`` terms long."""
    sm_rule = 2 * multiprocessors(), 16 if SIM else 8 * BK           # (simulator: tiny shapes split too)
    aim, least = sm_rule if SPLIT == "sm" else FIXED_SPLIT
    return max(1, min(-(-aim // blocks), length // least))


@functools.cache
def multiprocessors():
    """The current GPU's multiprocessor (SM) count, read once (the simulator has none: 8)."""
    return getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 8)


@contextlib.contextmanager
def tuning(split="sm", blocks_per_sm=2):
    """Launch the enclosed ops with other settings, then restore them; the arguments' defaults
    are the module's. benchmarks/gpu_check.py times each pair against the defaults on a GPU.

    split: "sm" aims at 2 blocks per multiprocessor of this GPU, with parts of at least 8 slabs
        (8 * BK terms), so the short sums of deep layers at small batches are split too;
        "fixed" aims at FIXED_SPLIT's 264 blocks with parts of at least 512 terms (it gave the
        last conv's weight gradient at batch 32 only 40 blocks for an H200's 132 SMs).
    blocks_per_sm: > 0 builds the product kernels with launch bounds asking the compiler to fit
        that many blocks on a multiprocessor (2: at most 128 registers per thread; without bounds
        (0) they take more, and one block fits).
    """
    global SPLIT, PRODUCT_BLOCKS_PER_SM
    if split not in ("fixed", "sm") or not (isinstance(blocks_per_sm, int) and blocks_per_sm >= 0):
        raise ValueError(f"tuning: expected split 'fixed' or 'sm' and blocks_per_sm an int >= 0, "
                         f"got {split!r} and {blocks_per_sm!r}")
    saved = SPLIT, PRODUCT_BLOCKS_PER_SM
    SPLIT, PRODUCT_BLOCKS_PER_SM = split, blocks_per_sm
    try:
        yield
    finally:
        SPLIT, PRODUCT_BLOCKS_PER_SM = saved


def _grid(M, N, K):
    """(column tiles, row tiles, parts of K) of a product: K is split only where the tiles alone
    leave the GPU idle and every row tile has its own y-block."""
    tiles_x, tiles_y = -(-N // BN), -(-M // BM)
    return tiles_x, tiles_y, (1 if tiles_y > MAX_BLOCKS else _parts(tiles_x * tiles_y, K))


def _product(site, a_kind, a, b_kind, b, store_kind, c, M, N, K, extra=None, g=_NO_GEOMETRY):
    """Launch C (M, N) = op(A) (M, K) @ op(B) (K, N) into c through ``store_kind`` (see above);
    ``site`` names the call for its tickets, ``extra`` is the store's bias (or bias-gradient)
    vector, ``g`` the convolution's geometry (KH, KW, SH, SW, PH, PW, OH, OW, H, W). K is split
    over blocks when the tiles of C alone would leave most of the GPU idle (the weight gradients:
    few outputs, K = N*OH*OW long)."""
    if M == 0 or N == 0:                                            # a grid of zero blocks fails on a GPU
        return
    tiles_x, tiles_y, split = _grid(M, N, K)
    blocks_y = min(MAX_BLOCKS, tiles_y)
    if split > 1:
        partial = _empty((split, M, N), c.dtype)                    # (split, M, N)
        tickets = _tickets(site, tiles_x * tiles_y)                 # this call site's own
    else:                                                           # (neither is touched)
        partial, tickets = _zeros(1, c.dtype).reshape((1, 1, 1)), _zeros(1, np.int32)
    extra = _zeros(1, c.dtype) if extra is None else extra
    kernel = _product_kernel(c.dtype, a_kind, b_kind, store_kind, PRODUCT_BLOCKS_PER_SM)
    kernel[(tiles_x, blocks_y, split), (BN // RN, BM // RM)](a, b, c, extra, M, N, K, g, split, partial, tickets)


def matmul(a, b, ta=False, tb=False, out=None):
    """op(a) @ op(b) for 2-D device arrays; op transposes where ta / tb is set -> (M, N)."""
    M = a.shape[1] if ta else a.shape[0]
    K = a.shape[0] if ta else a.shape[1]
    N = b.shape[0] if tb else b.shape[1]
    if (b.shape[1] if tb else b.shape[0]) != K:
        raise ValueError(f"matmul: inner sizes differ: {a.shape}{'.T' if ta else ''} @ "
                         f"{b.shape}{'.T' if tb else ''}")
    out = _empty((M, N), a.dtype) if out is None else out
    _product("matmul", "cols" if ta else "rows", a, "cols" if tb else "rows", b, "rows", out, M, N, K)
    return out


# ---------------------------------------------------------------- per-channel sums
@cuda.jit(device=True)
def _block_sum(shared, t, value):
    """Sum ``value`` over the RB threads of a block (shared: float64 (RB,)); all threads get it."""
    shared[t] = value
    cuda.syncthreads()
    step = RB // 2
    while step > 0:
        if t < step:
            shared[t] += shared[t + step]
        cuda.syncthreads()
        step //= 2
    total = shared[0]
    cuda.syncthreads()                                  # shared[] is free again for the next sum
    return total


@cuda.jit(device=True)
def _part_sums(a, b, ca, cb, c, lo, hi, t):
    """For a, b (N, C, L), over the elements k = lo + t, lo + t + RB, ... < hi of channel c (k
    flat over (n, i)): the float64 sums of (a - ca) and of (a - ca) * (b - cb). (n, i) steps by
    RB without a division per element."""
    if hi <= lo:
        return 0.0, 0.0
    L = a.shape[2]
    dn, di = RB // L, RB % L
    n, i = (lo + t) // L, (lo + t) % L
    s1, s2 = 0.0, 0.0
    for _ in range(lo + t, hi, RB):
        d = a[n, c, i] - ca
        s1 += d
        s2 += d * (b[n, c, i] - cb)
        n += dn
        i += di
        if i >= L:
            i -= L
            n += 1
    return s1, s2


def _channel_grid(x3):
    """(C, parts) blocks for per-channel sums over x3 (N, C, L): each channel's N*L elements
    split in parts, so that small C still fills the GPU."""
    N, C, L = x3.shape
    return C, _parts(C, N * L)


@cuda.jit
def _channel_sums(a, b, mean, parts, tickets, sum_a, sum_ab):
    """For a, b (N, C, L), grid (C, P): sum_a[c] = the sum of a[:, c] and sum_ab[c] = the sum of
    a[:, c] * (b[:, c] - mean[c]); block (c, z) sums part z into parts (P, C, 2), the channel's
    last block adds the parts."""
    N, C, L = a.shape
    c, z, t, P = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x, cuda.gridDim.y
    shared = cuda.shared.array(RB, float64)
    flag = cuda.shared.array(1, int32)                  # (the simulator keys shared arrays by line)
    s1, s2 = _part_sums(a, b, 0.0, mean[c], c, z * (N * L) // P, (z + 1) * (N * L) // P, t)
    s1, s2 = _block_sum(shared, t, s1), _block_sum(shared, t, s2)
    if t == 0:
        parts[z, c, 0], parts[z, c, 1] = s1, s2
    if _last_block(tickets, c, P, flag) and t == 0:
        s1, s2 = 0.0, 0.0
        for k in range(P):
            s1 += _read_part(parts, k, c, 0)
            s2 += _read_part(parts, k, c, 1)
        sum_a[c], sum_ab[c] = s1, s2


@cuda.jit
def _mean_var(x, parts, tickets, mean, var):
    """x (N, C, L), grid (C, P): mean[c] and the biased variance var[c]. Block (c, z) takes its
    part's count, mean and sum of squared deviations (two passes) into parts (P, C, 3); the
    channel's last block merges them (Chan, Golub and LeVeque's pairwise update)."""
    N, C, L = x.shape
    c, z, t, P = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x, cuda.gridDim.y
    shared = cuda.shared.array(RB, float64)
    flag = cuda.shared.array(1, int32)                  # (the simulator keys shared arrays by line)
    lo, hi = z * (N * L) // P, (z + 1) * (N * L) // P
    mu = _block_sum(shared, t, _part_sums(x, x, 0.0, 0.0, c, lo, hi, t)[0]) / max(hi - lo, 1)
    q = _block_sum(shared, t, _part_sums(x, x, mu, mu, c, lo, hi, t)[1])
    if t == 0:
        parts[z, c, 0], parts[z, c, 1], parts[z, c, 2] = hi - lo, mu, q
    if _last_block(tickets, c, P, flag) and t == 0:
        n, m, q = 0.0, 0.0, 0.0
        for k in range(P):
            nk = _read_part(parts, k, c, 0)
            if nk > 0:
                d = _read_part(parts, k, c, 1) - m
                m += d * nk / (n + nk)
                q += _read_part(parts, k, c, 2) + d * d * n * nk / (n + nk)
                n += nk
        mean[c], var[c] = m, q / max(n, 1.0)


# ---------------------------------------------------------------- convolution
def conv2d_forward(x, w, b, stride, padding):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) or None -> out (N, F, OH, OW), cache.
    One product: w as (F, C*KH*KW) times the im2col columns of x, read in place, written to
    NCHW with the bias added."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out_size(H, KH, stride[0], padding[0]), out_size(W, KW, stride[1], padding[1])
    g = (KH, KW, *stride, *padding, OH, OW, H, W)
    out = _empty((N, F, OH * OW), x.dtype)                          # (N, F, OH*OW)
    bias = b if b is not None else _zeros(F, x.dtype)
    _product("conv2d_forward", "rows", w.reshape((F, C * KH * KW)), "im2col", x, "nchw_bias", out,
             F, N * OH * OW, C * KH * KW, bias, g)
    return out.reshape((N, F, OH, OW)), (x, w, b is not None, g)


def conv2d_backward(dout, cache, need_dx=True):
    """dout (N, F, OH, OW) -> dx (N, C, H, W) or None, dw (F, C, KH, KW), db (F,) or None.
    Two products: dw (F, C*KH*KW) = dout (F, N*OH*OW) @ columns.T, with db in one more output
    column; dx = the transposed convolution w_t (C, F*KH*KW) @ dcols(dout), written to NCHW."""
    x, w, has_bias, g = cache
    N, F, OH, OW = dout.shape
    C, KH, KW = w.shape[1:]
    d3 = dout.reshape((N, F, OH * OW))                              # (N, F, OH*OW)
    dw = _empty((F, C * KH * KW), dout.dtype)                       # (F, C*KH*KW)
    db = _empty(F, dout.dtype) if has_bias else None
    _product("conv2d_backward dw", "nchw", d3, "im2col_t", x, "rows", dw, F, C * KH * KW + has_bias, N * OH * OW,
             db, g)
    if not need_dx:
        return None, dw.reshape(w.shape), db
    H, W = x.shape[2:]
    dx = _empty((N, C, H * W), dout.dtype)                          # (N, C, H*W)
    _product("conv2d_backward dx", "w_t", w, "dcols", dout, "nchw_bias", dx, C, N * H * W, F * KH * KW,
             _zeros(C, dout.dtype), g)
    return dx.reshape(x.shape), dw.reshape(w.shape), db


# ---------------------------------------------------------------- pooling
@cuda.jit
def _maxpool_fwd(x, KH, KW, sh, sw, ph, pw, relu, out, arg):
    """One thread per output window: out = its first maximum (padding is -inf; a NaN is the
    maximum; with relu, then max(., 0), NaN kept), arg = that element's index i*KW + j in the window."""
    N, C, H, W = x.shape
    for idx in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, c, oh, ow = _unravel(idx, C, out.shape[2], out.shape[3])
        best, k = -math.inf, -1
        for i in range(max(0, ph - oh * sh), min(KH, H + ph - oh * sh)):
            for j in range(max(0, pw - ow * sw), min(KW, W + pw - ow * sw)):
                v = x[n, c, oh * sh - ph + i, ow * sw - pw + j]
                if k < 0 or v > best or (v != v and best == best):  # first max; NaN wins
                    best, k = v, i * KW + j
        out[n, c, oh, ow], arg[n, c, oh, ow] = (0 if relu and best <= 0 else best), k


@cuda.jit
def _avgpool_fwd(x, KH, KW, sh, sw, ph, pw, out):
    """One thread per output window: out = the window's sum / (KH*KW), zero padding included."""
    N, C, H, W = x.shape
    for idx in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, c, oh, ow = _unravel(idx, C, out.shape[2], out.shape[3])
        s = 0.0
        for i in range(max(0, ph - oh * sh), min(KH, H + ph - oh * sh)):
            for j in range(max(0, pw - ow * sw), min(KW, W + pw - ow * sw)):
                s += x[n, c, oh * sh - ph + i, ow * sw - pw + j]
        out[n, c, oh, ow] = s / (KH * KW)


@cuda.jit
def _maxpool_bwd(dout, arg, out, relu, KH, KW, sh, sw, ph, pw, dx):
    """Each input element gathers the gradient of the windows whose maximum it is (with relu,
    of those whose output is positive)."""
    N, C, H, W = dx.shape
    for idx in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, h, w = _unravel(idx, C, H, W)
        s = 0.0
        for i in range(KH):
            oh = _window_of(h, ph, i, sh, dout.shape[2])
            if oh >= 0:
                for j in range(KW):
                    ow = _window_of(w, pw, j, sw, dout.shape[3])
                    if ow >= 0 and arg[n, c, oh, ow] == i * KW + j and (not relu or out[n, c, oh, ow] > 0):
                        s += dout[n, c, oh, ow]
        dx[n, c, h, w] = s


@cuda.jit
def _avgpool_bwd(dout, KH, KW, sh, sw, ph, pw, dx):
    """Each input element gathers dout / (KH*KW) from every window that covers it: the windows
    o with o*s - p <= h <= o*s - p + K - 1, i.e. ceil((h + p - K + 1) / s) <= o <= (h + p) // s."""
    N, C, H, W = dx.shape
    OH, OW = dout.shape[2], dout.shape[3]
    for idx in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, h, w = _unravel(idx, C, H, W)
        s = 0.0
        for oh in range(max(0, -((KH - 1 - h - ph) // sh)), min(OH, (h + ph) // sh + 1)):
            for ow in range(max(0, -((KW - 1 - w - pw) // sw)), min(OW, (w + pw) // sw + 1)):
                s += dout[n, c, oh, ow]
        dx[n, c, h, w] = s / (KH * KW)


def _pool_out(x, kernel, stride, padding):
    N, C, H, W = x.shape
    return _empty((N, C, out_size(H, kernel[0], stride[0], padding[0]),
                   out_size(W, kernel[1], stride[1], padding[1])), x.dtype)


def maxpool2d_forward(x, kernel, stride, padding, relu=False):
    """x (N, C, H, W) -> out (N, C, OH, OW) (relu'd with relu), cache (x's shape, argmax index
    in each window, out, relu)."""
    out = _pool_out(x, kernel, stride, padding)
    arg = _empty(out.shape, np.int32)
    _maxpool_fwd[_launch(out.size)](x, *kernel, *stride, *padding, relu, out, arg)
    return out, (x.shape, arg, out, relu, kernel, stride, padding)


def maxpool2d_backward(dout, cache):
    shape, arg, out, relu, kernel, stride, padding = cache
    dx = _empty(shape, dout.dtype)
    _maxpool_bwd[_launch(dx.size)](dout, arg, out, relu, *kernel, *stride, *padding, dx)
    return dx


def avgpool2d_forward(x, kernel, stride, padding):
    out = _pool_out(x, kernel, stride, padding)
    _avgpool_fwd[_launch(out.size)](x, *kernel, *stride, *padding, out)
    return out, (x.shape, kernel, stride, padding)


def avgpool2d_backward(dout, cache):
    shape, kernel, stride, padding = cache
    dx = _empty(shape, dout.dtype)
    _avgpool_bwd[_launch(dx.size)](dout, *kernel, *stride, *padding, dx)
    return dx


# ---------------------------------------------------------------- dense
def linear_forward(x, w, b):
    """x (N, IN), w (OUT, IN), b (OUT,) or None -> out (N, OUT) = x @ w.T + b, cache."""
    N, F = x.shape[0], w.shape[0]
    out = _empty((N, F), x.dtype)                                   # (N, OUT)
    bias = b if b is not None else _zeros(F, x.dtype)
    _product("linear_forward", "rows", x, "cols", w, "rows_bias", out, N, F, x.shape[1], bias)
    return out, (x, w, b is not None)


def linear_backward(dout, cache, need_dx=True):
    """dout (N, OUT) -> dx (N, IN) or None, dw (OUT, IN) = dout.T @ x, db (OUT,) or None (the
    product's extra column: dout.T @ ones)."""
    x, w, has_bias = cache
    N, F = dout.shape
    dw, db = _empty(w.shape, dout.dtype), (_empty(F, dout.dtype) if has_bias else None)
    _product("linear_backward dw", "cols", dout, "rows", x, "rows", dw, F, x.shape[1] + has_bias, N, db)
    return (matmul(dout, w) if need_dx else None), dw, db


# ---------------------------------------------------------------- pointwise
@cuda.jit
def _relu(x, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        out[i] = 0 if v <= 0 else v                     # NaN stays NaN


@cuda.jit
def _relu_bwd(dout, out, dx):
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        dx[i] = dout[i] if out[i] > 0 else 0


@cuda.jit
def _leaky(x, slope, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = x[i] if x[i] > 0 else x[i] * slope


@cuda.jit
def _leaky_bwd(dout, x, slope, dx):
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        dx[i] = dout[i] if x[i] > 0 else dout[i] * slope


@cuda.jit
def _sigmoid(x, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if v >= 0:
            out[i] = 1 / (1 + math.exp(-v))
        else:
            e = math.exp(v)
            out[i] = e / (1 + e)


@cuda.jit
def _sigmoid_bwd(dout, out, dx):
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        dx[i] = dout[i] * out[i] * (1 - out[i])


@cuda.jit
def _tanh(x, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = math.tanh(x[i])


@cuda.jit
def _tanh_bwd(dout, out, dx):
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        dx[i] = dout[i] * (1 - out[i] * out[i])


def _map(kernel, *arrays, args=()):
    """out = kernel(*arrays, *args, out) over flat views, ``out`` shaped like the first array."""
    out = _empty(arrays[0].shape, arrays[0].dtype)
    if out.size:
        kernel[_launch(out.size)](*[_flat(a) for a in arrays], *args, _flat(out))
    return out


def relu_forward(x):
    out = _map(_relu, x)
    return out, out


def relu_backward(dout, out):
    return _map(_relu_bwd, dout, out)


def leaky_relu_forward(x, slope):
    return _map(_leaky, x, args=(x.dtype.type(slope),)), (x, slope)


def leaky_relu_backward(dout, cache):
    x, slope = cache
    return _map(_leaky_bwd, dout, x, args=(dout.dtype.type(slope),))


def sigmoid_forward(x):
    out = _map(_sigmoid, x)
    return out, out


def sigmoid_backward(dout, out):
    return _map(_sigmoid_bwd, dout, out)


def tanh_forward(x):
    out = _map(_tanh, x)
    return out, out


def tanh_backward(dout, out):
    return _map(_tanh_bwd, dout, out)


# ---------------------------------------------------------------- dropout
_M1, _M2, _MASK = np.uint64(0x7FEB352D), np.uint64(0x846CA68B), np.uint64(0xFFFFFFFF)


@cuda.jit(device=True)
def _mix32(x):
    """lowbias32, a 32-bit integer hash (Wellons' hash-prospector), on uint64 values below 2^32:
    no product overflows, on the GPU or in the simulator (whose NumPy integers would warn)."""
    x ^= x >> uint64(16)
    x = (x * _M1) & _MASK
    x ^= x >> uint64(15)
    x = (x * _M2) & _MASK
    x ^= x >> uint64(16)
    return x


@cuda.jit(device=True)
def _uniform(seed, i):
    """A uniform float in [0, 1) from a 32-bit seed and an element index i."""
    return float64(_mix32(_mix32(uint64(i) & _MASK) ^ seed)) * (1.0 / 4294967296.0)


@cuda.jit
def _dropout(x, p, scale, seed, out, mask):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        m = scale if _uniform(seed, i) >= p else 0
        mask[i] = m
        out[i] = x[i] * m


@cuda.jit
def _mul(a, b, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] * b[i]


def dropout_forward(x, p, rng):
    """Inverted dropout: keep with probability 1-p, scale by 1/(1-p); x (...) -> out, mask."""
    out, mask = _empty(x.shape, x.dtype), _empty(x.shape, x.dtype)
    seed = np.uint64(rng.integers(0, 2 ** 32))
    if x.size:
        _dropout[_launch(x.size)](_flat(x), p, x.dtype.type(1 / (1 - p)), seed, _flat(out), _flat(mask))
    return out, mask


def dropout_backward(dout, mask):
    return _map(_mul, dout, mask)


# ---------------------------------------------------------------- batch normalisation
@cuda.jit
def _bn_finish(mean, var, running_mean, running_var, momentum, unbias, eps, training, inv_std):
    """Per channel: in training update the running statistics from the batch's (mean, var);
    in eval copy the running ones into (mean, var). Then inv_std = 1 / sqrt(var + eps)."""
    for c in range(cuda.grid(1), mean.size, cuda.gridsize(1)):
        if training:
            running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean[c]
            running_var[c] = (1 - momentum) * running_var[c] + momentum * var[c] * unbias
        else:
            mean[c], var[c] = running_mean[c], running_var[c]
        inv_std[c] = 1 / math.sqrt(var[c] + eps)


@cuda.jit
def _bn_apply(x, mean, inv_std, gamma, beta, out):
    """out = (x - mean[c]) * inv_std[c] * gamma[c] + beta[c] for x (N, C, L)."""
    N, C, L = x.shape
    for idx in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        i, c, n = idx % L, (idx // L) % C, idx // (C * L)
        out[n, c, i] = (x[n, c, i] - mean[c]) * inv_std[c] * gamma[c] + beta[c]


@cuda.jit
def _bn_dx(dout, x, mean, inv_std, gamma, dbeta, dxhat_sum, training, dx):
    """dx = gamma * inv_std * (dout - (dbeta + xhat * dgamma) / m) in training (dgamma =
    dxhat_sum * inv_std), gamma * inv_std * dout in eval; x, dout (N, C, L), m = N * L."""
    N, C, L = x.shape
    for idx in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        i, c, n = idx % L, (idx // L) % C, idx // (C * L)
        k = gamma[c] * inv_std[c]
        if training:
            xhat = (x[n, c, i] - mean[c]) * inv_std[c]
            dx[n, c, i] = k * (dout[n, c, i] - (dbeta[c] + xhat * dxhat_sum[c] * inv_std[c]) / (N * L))
        else:
            dx[n, c, i] = k * dout[n, c, i]


def batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training):
    """x (N, C) or (N, C, H, W) -> out like x, cache; the running statistics (device arrays)
    are updated in place in training, as in reference.py."""
    N, C = x.shape[:2]
    x3 = x.reshape((N, C, x.size // (N * C)))                        # (N, C, L)
    mean, var, inv_std = _empty(C, np.float64), _empty(C, np.float64), _empty(C, np.float64)
    if training:
        grid = _channel_grid(x3)
        parts, tickets = _empty((grid[1], C, 3), np.float64), _tickets("batchnorm_forward", C)
        _mean_var[grid, RB](x3, parts, tickets, mean, var)
    m = x3.shape[0] * x3.shape[2]
    _bn_finish[_launch(C)](mean, var, running_mean, running_var, momentum, m / max(m - 1, 1), eps,
                           training, inv_std)
    out = _empty(x3.shape, x.dtype)
    _bn_apply[_launch(out.size)](x3, mean, inv_std, gamma, beta, out)
    return out.reshape(x.shape), (x3, mean, inv_std, gamma, training)


def batchnorm_backward(dout, cache):
    """dout like x -> dx like x, dgamma (C,), dbeta (C,)."""
    x3, mean, inv_std, gamma, training = cache
    d3 = dout.reshape(x3.shape)
    C = x3.shape[1]
    dbeta, dxhat_sum = _empty(C, np.float64), _empty(C, np.float64)
    grid = _channel_grid(x3)                                        # sum dout, sum dout * (x - mean):
    parts, tickets = _empty((grid[1], C, 2), np.float64), _tickets("batchnorm_backward", C)
    _channel_sums[grid, RB](d3, x3, mean, parts, tickets, dbeta, dxhat_sum)
    dgamma = _empty(C, dout.dtype)
    _mul[_launch(C)](dxhat_sum, inv_std, dgamma)
    dx = _empty(x3.shape, dout.dtype)
    _bn_dx[_launch(dx.size)](d3, x3, mean, inv_std, gamma, dbeta, dxhat_sum, training, dx)
    return dx.reshape(dout.shape), dgamma, _as(dbeta, dout.dtype)


# ---------------------------------------------------------------- softmax and loss
@cuda.jit(device=True)
def _max_lse(logits, n):
    """Row n's maximum, the index of its first maximum, and log(sum(exp(row - max)))."""
    mx, arg = logits[n, 0], 0
    for k in range(1, logits.shape[1]):
        if logits[n, k] > mx:
            mx, arg = logits[n, k], k
    s = 0.0
    for k in range(logits.shape[1]):
        s += math.exp(logits[n, k] - mx)
    return mx, arg, math.log(s)


@cuda.jit
def _log_softmax(logits, out):
    for n in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):
        mx, _, lse = _max_lse(logits, n)
        for k in range(logits.shape[1]):
            out[n, k] = logits[n, k] - mx - lse


@cuda.jit
def _softmax(logits, out):
    for n in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):
        mx, _, lse = _max_lse(logits, n)
        for k in range(logits.shape[1]):
            out[n, k] = math.exp(logits[n, k] - mx - lse)


@cuda.jit
def _cross_entropy(logits, y, eps, rows, dlogits):
    """Per row n, for the target t = (1 - eps) onehot(y) + eps / K: rows[0, n] = the loss
    (NaN if a logit is not finite), rows[1, n] = 1 where the first maximum is at y[n];
    dlogits[n] = (softmax - t) / N."""
    N, K = logits.shape
    for n in range(cuda.grid(1), N, cuda.gridsize(1)):
        mx, arg, lse = _max_lse(logits, n)
        loss, finite = 0.0, True
        for k in range(K):
            finite = finite and math.isfinite(logits[n, k])
            lp = logits[n, k] - mx - lse
            t = eps / K + (1 - eps if k == y[n] else 0)
            loss -= t * lp
            dlogits[n, k] = (math.exp(lp) - t) / N
        rows[0, n] = loss if finite else math.nan
        rows[1, n] = 1 if finite and arg == y[n] else 0


def _rowwise(kernel, logits):
    """out (N, K) = kernel(logits (N, K)), one thread per row."""
    out = _empty(logits.shape, logits.dtype)
    if logits.shape[0]:
        kernel[_launch(logits.shape[0])](logits, out)
    return out


def log_softmax(logits):
    """logits (N, K) -> log-probabilities (N, K), via log-sum-exp with the row max subtracted."""
    return _rowwise(_log_softmax, logits)


def softmax(logits):
    """logits (N, K) -> probabilities (N, K)."""
    return _rowwise(_softmax, logits)


_label_buffers = {}                                    # N -> (pinned host array (N,) int64, event after its copy)


def _upload_labels(y):
    """y int (N,) on the host -> a device copy (N,) int64, queued without waiting for the device.
    A copy from ordinary (pageable) host memory first waits for every kernel queued before it:
    for the labels, the whole forward pass, during which the host could have queued the backward.
    So y goes through a pinned host buffer (one per N, kept), copied asynchronously, in order on
    the default stream; the event recorded after the copy keeps the next call of that N from
    writing the buffer before the copy has read it (in a training loop, long done by then)."""
    N = len(y)
    if N not in _label_buffers:
        _label_buffers[N] = cuda.pinned_array(N, np.int64), cuda.event()
    host, copied = _label_buffers[N]
    copied.synchronize()                                # (an event never recorded: returns at once)
    host[:] = y
    out = _empty(N, np.int64)
    stream = cuda.default_stream()
    out.copy_to_device(host, stream=stream)
    copied.record(stream)
    return out


def softmax_cross_entropy(logits, y, label_smoothing):
    """logits (N, K) on the device, y int (N,) on the host -> rows (2, N) float64, dlogits (N, K),
    both on the device (see reference.softmax_cross_entropy); nothing comes back to the host, and
    the labels' copy does not wait for the device (``_upload_labels``)."""
    N = logits.shape[0]
    rows, dlogits = _empty((2, N), np.float64), _empty(logits.shape, logits.dtype)
    if N:
        _cross_entropy[_launch(N)](logits, _upload_labels(y), float(label_smoothing), rows, dlogits)
    return rows, dlogits


# ---------------------------------------------------------------- optimizer updates
@cuda.jit(device=True)
def _tensor_of(offsets, i):
    """(t, j): element i of the parameters laid end to end is element j of parameter t
    (offsets: their cumulative sizes from 0; a short scan, models have tens of parameters)."""
    t = 0
    while offsets[t + 1] <= i:
        t += 1
    return t, i - offsets[t]


@cuda.jit
def _sgd(ps, gs, bufs, has_buf, offsets, lr, momentum, weight_decay, nesterov):
    """One thread per element of all the parameters (tuples of flat arrays); without has_buf,
    bufs is ps and not touched."""
    for i in range(cuda.grid(1), offsets[offsets.size - 1], cuda.gridsize(1)):
        t, j = _tensor_of(offsets, i)
        p = ps[t]
        gi = gs[t][j]
        if weight_decay != 0:
            gi += weight_decay * p[j]
        if has_buf:
            buf = bufs[t]
            b = momentum * buf[j] + gi
            buf[j] = b
            gi = gi + momentum * b if nesterov else b
        p[j] -= lr * gi


@cuda.jit
def _adam(ps, gs, ms, vs, offsets, lr, beta1, beta2, eps, weight_decay, decoupled, c1, c2):
    for i in range(cuda.grid(1), offsets[offsets.size - 1], cuda.gridsize(1)):
        t, j = _tensor_of(offsets, i)
        p, m, v = ps[t], ms[t], vs[t]
        gi = gs[t][j]
        if decoupled:
            p[j] *= 1 - lr * weight_decay
        elif weight_decay != 0:
            gi += weight_decay * p[j]
        m[j] = beta1 * m[j] + (1 - beta1) * gi
        v[j] = beta2 * v[j] + (1 - beta2) * gi * gi
        p[j] -= lr / c1 * m[j] / (math.sqrt(v[j] / c2) + eps)


MAX_TENSORS = 16                     # per optimizer launch: 4 tuples of 16 arrays fit in 4 KB of kernel arguments


def _chunks(*lists):
    """The lists cut into runs of at most MAX_TENSORS, each as (tuples of flat views, one kernel
    argument each, then the device array of the run's offsets: cumulative sizes from 0, and its
    element count)."""
    for k in range(0, len(lists[0]), MAX_TENSORS):
        run = [lst[k:k + MAX_TENSORS] for lst in lists]
        sizes = tuple(a.size for a in run[0])
        offsets = _constant(("offsets",) + sizes, lambda: np.cumsum((0,) + sizes, dtype=np.int64))
        yield [tuple(_flat(a) for a in arrays) for arrays in run], offsets, int(sum(sizes))


def sgd_step(ps, gs, bufs, lr, momentum, weight_decay, nesterov):
    """torch's SGD in place on lists of device arrays, up to MAX_TENSORS per launch; see
    reference.sgd_step."""
    f = ps[0].dtype.type if ps else float                          # scalars in the parameters' precision
    for (p, g, b), offsets, n in _chunks(ps, gs, bufs if bufs is not None else ps):
        _sgd[_launch(n)](p, g, b, bufs is not None, offsets, f(lr), f(momentum), f(weight_decay), nesterov)


def adam_step(ps, gs, ms, vs, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """Adam / AdamW step t in place on lists of device arrays, up to MAX_TENSORS per launch; see
    reference.adam_step."""
    f = ps[0].dtype.type if ps else float
    for (p, g, m, v), offsets, n in _chunks(ps, gs, ms, vs):
        _adam[_launch(n)](p, g, m, v, offsets, f(lr), f(beta1), f(beta2), f(eps), f(weight_decay), decoupled,
                          f(1 - beta1 ** t), f(1 - beta2 ** t))
