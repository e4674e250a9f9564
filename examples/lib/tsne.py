"""A small exact t-SNE (van der Maaten & Hinton, 2008) in NumPy, for a few thousand points.

    xy = tsne(features, perplexity=30, seed=0)      # features (N, D) -> xy (N, 2)
"""
import numpy as np


def _affinities(x, perplexity, tol=1e-4, iters=50):
    """Symmetric P (N, N): Gaussian conditionals with per-point bandwidths found by bisection
    so that each row's entropy equals log(perplexity)."""
    n = len(x)
    sq = np.sum(x * x, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)      # (N, N) squared distances
    P = np.zeros((n, n))
    target = np.log(perplexity)
    for i in range(n):
        di = np.delete(d2[i], i)
        lo, hi, beta = 0.0, np.inf, 1.0
        for _ in range(iters):
            p = np.exp(-(di - di.min()) * beta)
            s = p.sum()
            H = np.log(s) + beta * np.sum((di - di.min()) * p) / s
            if abs(H - target) < tol:
                break
            if H > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        P[i, np.arange(n) != i] = p / s
    P = (P + P.T) / (2 * n)
    return np.maximum(P, 1e-12)


def tsne(x, perplexity=30.0, iters=500, lr=200.0, seed=0):
    """Embed x (N, D) in 2-D. Early exaggeration for the first 100 steps, momentum 0.5 -> 0.8."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 4:
        raise ValueError(f"tsne: needs at least 4 points, got {n}")
    x = (x - x.mean(0)) / (x.std() + 1e-12)
    P = _affinities(x, min(perplexity, (n - 1) / 3))
    rng = np.random.default_rng(seed)
    y = rng.normal(0, 1e-4, (n, 2))
    vel, gains = np.zeros_like(y), np.ones_like(y)
    for t in range(iters):
        exag = 12.0 if t < 100 else 1.0
        sq = np.sum(y * y, 1)
        num = 1 / (1 + sq[:, None] + sq[None, :] - 2 * y @ y.T)     # (N, N) Student-t kernel
        np.fill_diagonal(num, 0)
        Q = np.maximum(num / num.sum(), 1e-12)
        W = (exag * P - Q) * num
        grad = 4 * (np.diag(W.sum(1)) - W) @ y                      # (N, 2)
        gains = np.where(np.sign(grad) != np.sign(vel), gains + 0.2, gains * 0.8).clip(0.01)
        vel = (0.5 if t < 250 else 0.8) * vel - lr * gains * grad
        y += vel
        y -= y.mean(0)
    return y
