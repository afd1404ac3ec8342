"""Sparse codes and the autograd functions that let TopK-family steps skip the dense decoder.

A code with ``nnz`` active entries (row ``r``, latent ``c``, value ``v``) is decoded as
``x̂[r] = Σ v W_dec[c]`` with :func:`torch.nn.functional.embedding_bag`, and every gradient of
the decoder and of the encoder's weight is again a bag-sum over the same entries (grouped by
latent instead of by row). So a step costs one dense product (the encoder's forward, needed to
choose the top k) plus O(nnz · d_in) work, against five dense products for a dense step. No
(nnz, d_in) temporary is built except in bounded chunks for the per-entry dot products.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

_CHUNK_ELEMENTS = 1 << 18


def counts(index: torch.Tensor, size: int) -> torch.Tensor:
    """How often each value in ``[0, size)`` occurs in ``index`` (``bincount`` without its
    parallel min/max passes, which stall on a busy machine)."""
    out = torch.zeros(size, dtype=torch.int64, device=index.device)
    return out.index_add_(0, index, torch.ones_like(index))


def stable_argsort(keys: torch.Tensor) -> torch.Tensor:
    """Stable argsort; on the CPU on one thread (torch's parallel sort can take 100x longer when
    another process holds one of the cores, and one thread sorts 10^5 keys in about 1 ms)."""
    threads = torch.get_num_threads()
    if keys.device.type != "cpu" or threads == 1:
        return torch.argsort(keys, stable=True)
    torch.set_num_threads(1)
    try:
        return torch.argsort(keys, stable=True)
    finally:
        torch.set_num_threads(threads)


@dataclass
class SparseCode:
    """Positions of the active entries of a (n_rows, n_cols) code, grouped by row.

    ``offsets[r]`` is where row ``r``'s entries start (embedding_bag's offsets). The by-latent
    grouping is built on first use, for the backward pass.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    offsets: torch.Tensor
    n_rows: int
    n_cols: int
    per_row: int = 0
    """Entries per row when every row has the same number (TopK), else 0."""
    _by_col: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def nnz(self) -> int:
        return int(self.cols.numel())

    @classmethod
    def from_topk(cls, indices: torch.Tensor, n_cols: int) -> SparseCode:
        """From (R, k) indices of each row's kept latents."""
        n_rows, k = indices.shape
        dev = indices.device
        rows = torch.arange(n_rows, device=dev).repeat_interleave(k)
        offsets = torch.arange(0, n_rows * k, k, device=dev)
        return cls(rows, indices.reshape(-1), offsets, n_rows, n_cols, per_row=k)

    @classmethod
    def from_flat(
        cls, flat: torch.Tensor, n_rows: int, n_cols: int
    ) -> tuple[SparseCode, torch.Tensor]:
        """From flat positions ``row * n_cols + col`` in any order; returns the code and the
        permutation that sorts ``flat`` (apply it to the values)."""
        order = stable_argsort(flat)
        flat_sorted = flat[order]
        rows = flat_sorted // n_cols
        cols = flat_sorted - rows * n_cols
        per_row = counts(rows, n_rows)
        offsets = torch.cumsum(per_row, 0) - per_row
        return cls(rows, cols, offsets, n_rows, n_cols), order

    @classmethod
    def stack(
        cls, codes: Sequence[tuple[int, SparseCode]], slots: int, rows_each: int, cols_each: int
    ) -> SparseCode:
        """Codes of several same-shape SAEs as one: ``(slot, code)`` pairs in increasing slot
        order become rows ``slot * rows_each + r`` and latents ``slot * cols_each + c``."""
        device = codes[0][1].cols.device
        rows = torch.cat([c.rows + s * rows_each for s, c in codes])
        cols = torch.cat([c.cols + s * cols_each for s, c in codes])
        per_row_counts = counts(rows, slots * rows_each)
        offsets = torch.cumsum(per_row_counts, 0) - per_row_counts
        ks = {c.per_row for _, c in codes}
        per_row = ks.pop() if len(ks) == 1 and len(codes) == slots else 0
        return cls(
            rows.to(device),
            cols,
            offsets,
            slots * rows_each,
            slots * cols_each,
            per_row=per_row,
        )

    def crow(self) -> torch.Tensor:
        """CSR row pointers (``offsets`` followed by ``nnz``)."""
        return torch.cat([self.offsets, self.offsets.new_tensor([self.nnz])])

    def by_col(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(order, rows in that order, offsets per latent)``: entries grouped by latent."""
        if self._by_col is None:
            order = stable_argsort(self.cols)
            per_col = counts(self.cols, self.n_cols)
            col_offsets = torch.cumsum(per_col, 0) - per_col
            self._by_col = (order, self.rows[order], col_offsets)
        return self._by_col

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros(self.n_rows, self.n_cols)
        out[self.rows, self.cols] = values
        return out

    def fired(self, values: torch.Tensor) -> torch.Tensor:
        """Samples each latent is active (> 0) on."""
        return counts(self.cols[values > 0], self.n_cols)


def bag_sum(
    weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``out[b] = Σ_{e in bag b} scale[e] · weight[indices[e]]`` without a (nnz, d) temporary."""
    if indices.numel() == 0:
        return weight.new_zeros(offsets.numel(), weight.shape[1])
    return F.embedding_bag(indices, weight, offsets, mode="sum", per_sample_weights=scale)


def sampled_dot(a: torch.Tensor, b: torch.Tensor, code: SparseCode) -> torch.Tensor:
    """``out[e] = <a[rows[e]], b[cols[e]]>`` for every entry (a sampled dense-dense product).

    On the CPU this is ``torch.sparse.sampled_addmm`` (no gather at all); elsewhere the rows of
    ``b`` are gathered in bounded chunks.
    """
    nnz = code.nnz
    if nnz == 0:
        return a.new_empty(0)
    if a.device.type == "cpu" and code.n_rows == a.shape[0]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            mask = torch.sparse_csr_tensor(
                code.crow(),
                code.cols,
                a.new_zeros(nnz),
                (code.n_rows, code.n_cols),
                check_invariants=False,
            )
            return torch.sparse.sampled_addmm(mask, a, b.T, beta=0.0).values()
    return sampled_dot_gather(a, b, code)


def sampled_dot_gather(a: torch.Tensor, b: torch.Tensor, code: SparseCode) -> torch.Tensor:
    """:func:`sampled_dot` by gathering rows in chunks of bounded size (any device)."""
    nnz, d = code.nnz, a.shape[1]
    out = a.new_empty(nnz)
    step = max(1, _CHUNK_ELEMENTS // d)
    for lo in range(0, nnz, step):
        hi = min(nnz, lo + step)
        gb = b.index_select(0, code.cols[lo:hi])
        ga = a.index_select(0, code.rows[lo:hi])
        out[lo:hi] = (ga * gb).sum(-1)
    return out


class SparseDecode(torch.autograd.Function):
    """``x̂ = Z W`` for a sparse Z given by ``code`` and ``values``; W is (n_cols, d)."""

    @staticmethod
    def forward(
        ctx: Any, values: torch.Tensor, weight: torch.Tensor, code: SparseCode
    ) -> torch.Tensor:
        ctx.save_for_backward(values, weight)
        ctx.code = code
        return bag_sum(weight, code.cols, code.offsets, values)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        values, weight = ctx.saved_tensors
        code: SparseCode = ctx.code
        grad = grad.contiguous()
        g_values = sampled_dot(grad, weight, code) if ctx.needs_input_grad[0] else None
        g_weight = None
        if ctx.needs_input_grad[1]:
            order, rows_by_col, col_offsets = code.by_col()
            g_weight = bag_sum(grad, rows_by_col, col_offsets, values[order])
        return g_values, g_weight, None


class SampledLinear(torch.autograd.Function):
    """Entries ``<xc[r], W[c]> + bias[c]`` of a linear map, given their precomputed values.

    ``xc`` holds the (centred) input rows the code's rows refer to, ``W`` and ``bias`` the
    stacked weights of S members (``S·n`` rows). The forward pass only attaches gradients to
    ``values`` (computed densely beforehand to choose the entries); the backward pass routes
    them to W, bias and (when given) the members' ``b_dec`` (S, d), which was subtracted from
    the input, through the active entries alone. ``xc`` is data and gets no gradient.
    """

    @staticmethod
    def forward(
        ctx: Any,
        values: torch.Tensor,
        xc: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        b_dec: torch.Tensor | None,
        code: SparseCode,
    ) -> torch.Tensor:
        ctx.save_for_backward(xc, weight)
        ctx.code = code
        ctx.members = b_dec.shape[0] if b_dec is not None else 0
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        xc, weight = ctx.saved_tensors
        code: SparseCode = ctx.code
        grad = grad.contiguous()
        g_weight = g_bias = g_bdec = None
        if ctx.needs_input_grad[2]:
            order, rows_by_col, col_offsets = code.by_col()
            g_weight = bag_sum(xc, rows_by_col, col_offsets, grad[order])
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            g_sum = grad.new_zeros(weight.shape[0]).index_add_(0, code.cols, grad)
            g_bias = g_sum if ctx.needs_input_grad[3] else None
            if ctx.needs_input_grad[4]:
                S = ctx.members
                g_bdec = -torch.bmm(g_sum.view(S, 1, -1), weight.view(S, -1, weight.shape[1]))
                g_bdec = g_bdec.squeeze(1)
        return None, None, g_weight, g_bias, g_bdec, None
