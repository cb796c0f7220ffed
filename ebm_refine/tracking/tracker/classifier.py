"""ATOM-style online target classifier: a small convolutional filter on compressed backbone features.

Model: scores s = w * P(x), where P is a 1x1 projection of the stride-16 backbone map to D channels
and w a k x k filter (one output channel). It is fitted to Gaussian labels centred on the target with a
weighted least-squares loss over a memory of frames::

    L(w) = sum_j a_j || w * z_j - y_j ||^2 + lambda ||w||^2,    z_j = P(x_j)

Solver (documented deviation from ATOM): ATOM fits w with Gauss-Newton + conjugate gradient, also
optimising P in the first frame and passing scores through a non-linearity, which makes the residuals
non-linear. We fix P from a PCA of the first frame's features (ATOM's own initialisation of P) and keep
the residuals linear, so Gauss-Newton is exact after one step: the normal equations
(sum_j a_j U_j^T U_j + lambda I) w = sum_j a_j U_j^T y_j, with U_j the im2col matrix of z_j. We keep
that Gram matrix and right-hand side instead of the raw sample memory -- an exponentially forgetting
memory (new frame weight = learning rate, older weights multiplied by 1 - lr, as ATOM's sample
weights) that costs O(D^2 k^4) memory regardless of its length -- and solve with warm-started
conjugate gradient (many iterations in the first frame, a few per update). Hard negatives (frames
with a strong distractor) are added with a larger learning rate, as in ATOM.

Cost: U_j^T U_j is (D k^2)^2 = 1600^2 entries, each a sum over the H W cells -- as one matrix product
2 H W (D k^2)^2 = 1.7 GFLOP per frame for D = 64, k = 5, an 18 x 18 map, a third of a frame's time on a
CPU. :func:`accumulate_im2col_gram` computes the same matrix from the shift structure of im2col (the
block of kernel rows (a, a') sums products of image rows r and r + a' - a; blocks with the same shift
share all but their first and last rows, and the blocks below the diagonal are transposes), about a
fifth of the arithmetic; the result equals ``U^T U`` up to float rounding. The Gram matrix, the
right-hand side and the filter are stored in the "row-block" order (a, d, b) of the filter's
(d, a, b) coefficients, in which each block is a contiguous band (:meth:`OnlineClassifier.conv_weight`
maps back).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OnlineClassifier", "Localization", "accumulate_im2col_gram"]


@dataclass
class Localization:
    """Result of :meth:`OnlineClassifier.localize`.

    Attributes:
        center: (2,) chosen target centre, feature-cell coordinates (x, y); cell i's centre is at
            crop pixel (i + 0.5) * stride.
        score: peak score at the chosen centre (1 = a perfect target response).
        flag: ``normal``, ``hard_negative`` (a distractor is present), ``uncertain`` (two comparable
            peaks) or ``not_found`` (no peak above the threshold).
        scores: (H, W) score map.
    """

    center: Tensor
    score: float
    flag: str
    scores: Tensor


def _gaussian_label(h: int, w: int, center: Tensor, sigma: Tensor) -> Tensor:
    """(H, W) Gaussian with peak 1 at ``center`` (x, y) in cell coordinates, per-axis ``sigma`` (cells)."""
    ys = torch.arange(h, dtype=center.dtype, device=center.device)
    xs = torch.arange(w, dtype=center.dtype, device=center.device)
    gy = torch.exp(-0.5 * ((ys - center[1]) / sigma[1]) ** 2)
    gx = torch.exp(-0.5 * ((xs - center[0]) / sigma[0]) ** 2)
    return gy[:, None] * gx[None, :]


def accumulate_im2col_gram(gram: Tensor, z: Tensor, k: int, alpha: float, structured: bool = True) -> None:
    """``gram += alpha * U^T U`` in place, U the (H W, D k k) im2col matrix of ``z`` (same-size padding).

    Args:
        gram: (D k k, D k k) in row-block order: index ``(a * D + d) * k + b`` for channel d, kernel row a,
            kernel column b (see the module docstring).
        z: (D, H, W) map; k: odd kernel side.
        alpha: weight of this map's Gram matrix.
        structured: False forms U and multiplies (the reference computation, 5x the arithmetic).
    """
    d, h, w = z.shape
    p = k // 2
    n = d * k
    if not structured:
        u = F.unfold(z[None], k, padding=p)[0].view(d, k, k, h * w).permute(3, 1, 0, 2).reshape(h * w, -1)
        gram.add_(u.T @ u, alpha=alpha)
        return
    # rows[r] = (W, D k): image row r's horizontal im2col (columns (d, b)); rows outside the image are zero.
    rows = F.pad(z, (p, p)).unfold(2, k, 1).permute(1, 2, 0, 3).reshape(h, w, n)
    blocks = gram.view(k, n, k, n)
    for shift in range(k):
        # Block (a, a + shift) sums rows[r]^T rows[r + shift] over the image rows r that kernel row a sees.
        spans = [(max(a - p, 0, -shift), min(a - p + h, h, h - shift)) for a in range(k - shift)]
        # The rows every such block sums (empty on maps smaller than the kernel) and each block's others.
        lo = max(s[0] for s in spans)
        hi = max(lo, min(s[1] for s in spans))
        core = rows[lo:hi].reshape(-1, n).T @ rows[lo + shift:hi + shift].reshape(-1, n)
        edges = [[r for r in range(a0, a1) if not lo <= r < hi] for a0, a1 in spans]
        edge = {r: rows[r].T @ rows[r + shift] for rs in edges for r in rs}
        for a, rs in enumerate(edges):
            blk = core.clone()
            for r in rs:
                blk += edge[r]
            blocks[a, :, a + shift, :].add_(blk, alpha=alpha)
            if shift:
                blocks[a + shift, :, a, :].add_(blk.T, alpha=alpha)


class OnlineClassifier:
    """Fit and apply the target filter; see the module docstring for the model and solver.

    Args:
        cfg: ``compressed_dim`` (D), ``filter_size`` (odd k), ``filter_reg`` (lambda as a fraction of
            the Gram matrix's mean diagonal), ``cg_iterations_init``, ``cg_iterations_update``,
            ``target_not_found_threshold``, ``distractor_threshold``, ``hard_negative_threshold``,
            ``target_neighborhood_scale``.
        structured_gram: update the Gram matrix with :func:`accumulate_im2col_gram`'s structured product
            (False: the plain im2col product; the same up to float rounding).
    """

    def __init__(self, cfg: Dict[str, Any], structured_gram: bool = True):
        self.cfg = cfg
        self.structured_gram = bool(structured_gram)
        self.k = int(cfg.get("filter_size", 5))
        if self.k % 2 != 1:
            raise ValueError(f"classifier filter_size must be odd, got {self.k}")
        self.dim = int(cfg.get("compressed_dim", 64))
        self.projection: Optional[Tensor] = None  # (D, C)
        # Row-block order (a, d, b) of the filter coefficients, see the module docstring.
        self.gram: Optional[Tensor] = None  # (n, n), n = D k^2
        self.rhs: Optional[Tensor] = None  # (n,)
        self.filter: Optional[Tensor] = None  # (n,)

    # ------------------------------------------------------------------ features
    def project(self, feats: Tensor) -> Tensor:
        """(N, C, H, W) backbone map -> (N, D, H, W) compressed map with unit mean square per image."""
        z = torch.einsum("dc,nchw->ndhw", self.projection, feats)
        # Normalising each frame keeps the regulariser meaningful when the image contrast changes.
        return z / z.pow(2).mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12).sqrt()

    def _correlate(self, z: Tensor, label: Tensor) -> Tensor:
        """U^T y for a (D, H, W) map and an (H, W) label: (D k k,) in row-block order."""
        p = self.k // 2
        u_y = F.conv2d(F.pad(z, (p, p, p, p))[:, None], label[None, None])  # (D, 1, k, k): [d, a, b]
        return u_y[:, 0].permute(1, 0, 2).reshape(-1)

    def conv_weight(self) -> Tensor:
        """The filter as a (1, D, k, k) convolution weight (stored in row-block order)."""
        return self.filter.reshape(self.k, -1, self.k).permute(1, 0, 2).reshape(1, -1, self.k, self.k)

    # ------------------------------------------------------------------ fitting
    def initialize(self, feats: Tensor, centers: Tensor, sigma: Tensor, weights: Optional[Tensor] = None) -> None:
        """First-frame fit on (augmented) samples.

        Args:
            feats: (N, C, H, W) backbone maps of the N augmented first-frame crops.
            centers: (N, 2) target centre of each sample, cell coordinates (x, y).
            sigma: (2,) label standard deviation in cells (x, y).
            weights: optional (N,) sample weights (default uniform).
        """
        feats = feats.detach().float()
        n, c, h, w = feats.shape
        x = feats.permute(1, 0, 2, 3).reshape(c, -1)
        d = min(self.dim, c)
        # PCA without centering: the leading directions of the raw second moment carry the energy the
        # filter responds to.
        u, _, _ = torch.linalg.svd(x @ x.T / x.shape[1])
        self.projection = u[:, :d].T.contiguous()
        self.sigma = sigma.float()
        wts = feats.new_full((n,), 1.0 / n) if weights is None else weights.float() / weights.sum()
        z = self.project(feats)
        size = d * self.k * self.k
        self.gram = feats.new_zeros(size, size)
        self.rhs = feats.new_zeros(size)
        for i in range(n):
            accumulate_im2col_gram(self.gram, z[i], self.k, float(wts[i]), self.structured_gram)
            self.rhs += wts[i] * self._correlate(z[i], _gaussian_label(h, w, centers[i].float(), self.sigma))
        self.filter = torch.zeros_like(self.rhs)
        self._solve(int(self.cfg.get("cg_iterations_init", 50)))

    def update(self, feat: Tensor, center: Tensor, learning_rate: float, solve: bool = True) -> None:
        """Add one frame to the memory with weight ``learning_rate`` (older frames decay by 1 - lr).

        Args:
            feat: (1, C, H, W) backbone map.
            center: (2,) target centre in cell coordinates.
            solve: run ``cg_iterations_update`` CG iterations now (else only the memory is updated).
        """
        _, _, h, w = feat.shape
        z = self.project(feat.detach().float())[0]
        label = _gaussian_label(h, w, center.float(), self.sigma)
        lr = float(learning_rate)
        accumulate_im2col_gram(self.gram.mul_(1.0 - lr), z, self.k, lr, self.structured_gram)
        self.rhs.mul_(1.0 - lr).add_(self._correlate(z, label), alpha=lr)
        if solve:
            self._solve(int(self.cfg.get("cg_iterations_update", 5)))

    def _solve(self, iterations: int) -> None:
        """Warm-started conjugate gradient on (G + lambda I) w = r."""
        reg = float(self.cfg.get("filter_reg", 0.05)) * self.gram.diagonal().mean().clamp(min=1e-12)
        w = self.filter
        r = self.rhs - (self.gram @ w + reg * w)
        p = r.clone()
        rr = r @ r
        for _ in range(iterations):
            if rr <= 1e-20:
                break
            ap = self.gram @ p + reg * p
            alpha = rr / (p @ ap).clamp(min=1e-20)
            w = w + alpha * p
            r = r - alpha * ap
            rr_new = r @ r
            p = r + (rr_new / rr) * p
            rr = rr_new
        self.filter = w

    # ------------------------------------------------------------------ inference
    def scores(self, feats: Tensor) -> Tensor:
        """(N, C, H, W) backbone map -> (N, H, W) scores (label scale: ~1 on the target, ~0 elsewhere)."""
        z = self.project(feats.detach().float())
        return F.conv2d(z, self.conv_weight(), padding=self.k // 2)[:, 0]

    def localize(self, scores: Tensor, target_size_cells: Tensor, prior_center: Tensor) -> Localization:
        """Find the target in a score map and judge how reliable that is.

        Args:
            scores: (H, W) score map.
            target_size_cells: (2,) target width, height in cells (sets the distractor exclusion zone).
            prior_center: (2,) where the target was (cell coordinates), used to pick between two
                comparable peaks.
        """
        h, w = scores.shape
        max1, p1 = _peak(scores)
        if max1 < float(self.cfg.get("target_not_found_threshold", 0.25)):
            return Localization(prior_center.clone(), max1, "not_found", scores)
        # The second peak must lie outside the target's neighbourhood to count as a distractor.
        half = 0.5 * float(self.cfg.get("target_neighborhood_scale", 2.2)) * target_size_cells
        ys = torch.arange(h, dtype=scores.dtype, device=scores.device)[:, None]
        xs = torch.arange(w, dtype=scores.dtype, device=scores.device)[None, :]
        near = ((xs - p1[0]).abs() <= half[0]) & ((ys - p1[1]).abs() <= half[1])
        masked = scores.masked_fill(near, float("-inf"))
        if not torch.isfinite(masked).any():
            return Localization(_subpixel(scores, p1), max1, "normal", scores)
        max2, p2 = _peak(masked)
        if max2 > float(self.cfg.get("distractor_threshold", 0.8)) * max1:
            # Two comparable peaks: believe the one nearer to where the target was.
            d1 = torch.linalg.norm(p1 - prior_center.to(p1.device))
            d2 = torch.linalg.norm(p2 - prior_center.to(p2.device))
            if d2 < d1:
                return Localization(_subpixel(scores, p2), max2, "uncertain", scores)
            return Localization(_subpixel(scores, p1), max1, "uncertain", scores)
        flag = "hard_negative" if max2 > float(self.cfg.get("hard_negative_threshold", 0.5)) * max1 else "normal"
        return Localization(_subpixel(scores, p1), max1, flag, scores)


def _peak(scores: Tensor) -> Tuple[float, Tensor]:
    """Max value and its (x, y) integer position as a float tensor."""
    idx = int(torch.argmax(scores))
    w = scores.shape[1]
    return float(scores.reshape(-1)[idx]), torch.tensor([idx % w, idx // w], dtype=torch.float32, device=scores.device)


def _subpixel(scores: Tensor, p: Tensor) -> Tensor:
    """Refine an integer peak with a 1-D parabola through its neighbours on each axis."""
    h, w = scores.shape
    x, y = int(p[0]), int(p[1])
    out = p.clone()
    for axis, (lo_ok, hi_ok) in enumerate([(x > 0, x < w - 1), (y > 0, y < h - 1)]):
        if not (lo_ok and hi_ok):
            continue
        if axis == 0:
            a, b, c = scores[y, x - 1], scores[y, x], scores[y, x + 1]
        else:
            a, b, c = scores[y - 1, x], scores[y, x], scores[y + 1, x]
        denom = float(a - 2 * b + c)
        if denom < -1e-9:
            out[axis] += float(max(-0.5, min(0.5, 0.5 * float(a - c) / denom)))
    return out
