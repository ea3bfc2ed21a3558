"""The tensor layers of a RAT-SPN: the leaf regions' products (:func:`region_products`), one einsum-style layer per
level of the region graph, mixing the cross products of sibling regions without forming them, and the root sum over
the repetitions.

Values are region-major, ``(repetitions, regions, batch, channels)``, and stay in linear space from the leaves to the
root, every row rescaled (by its largest entry at the leaves, by its sum above) with the log of the divisors carried
alongside (:func:`to_linear`), so that every mixture is a matrix product; :class:`overspn.engine.rat.RatSPN` chains
these layers (see :mod:`overspn.engine.rat`).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import torch

from overspn.engine.semiring import finite_max, log_or_minus_inf, logsumexp

__all__ = ["einsum_layer", "region_products", "region_slots", "root_layer", "to_linear"]


class _Scratch(threading.local):
    """Reusable CPU tensors for the temporaries of a backward pass (the chunks of outer products of
    :func:`_outer_gradients`): one per shape, the most recently used kept up to ``capacity_bytes`` in all (a larger
    temporary is allocated afresh every time, as any other).

    A fresh allocation of a megabyte or more is returned to the operating system when freed, so every step would
    fault its pages in again, and a reused one stays in cache. Each thread has its own.
    """

    capacity_bytes = 256 * 2**20

    def __init__(self) -> None:
        self.tensors: dict[tuple[Any, ...], torch.Tensor] = {}

    def empty(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        key = (shape, like.dtype)
        tensor = self.tensors.pop(key, None)
        if tensor is None:
            tensor = like.new_empty(shape)
        if tensor.nbytes > self.capacity_bytes:
            return tensor
        self.tensors[key] = tensor  # the most recently used last
        while sum(kept.nbytes for kept in self.tensors.values()) > self.capacity_bytes:
            del self.tensors[next(iter(self.tensors))]
        return tensor


_SCRATCH = _Scratch()


class _Bilinear(torch.autograd.Function):
    """``mixed[b, n, k] = sum_ij left[b, n, i] w[b, k, i, j] right[b, n, j]`` for blocks ``b`` (regions), rows ``n``,
    with ``left`` and ``right`` the two halves of ``pairs`` ``(B, 2, N, K)``.

    Forward: one batched matrix product ``right (N, K) @ w (K, K' K)`` per block, then a batched matrix-vector
    product with ``left``. Backward, by hand, touches the ``(N, K' K)`` intermediate as few times as possible: one
    outer product of the incoming gradient with ``left``, read by the two matrix products that give the gradients
    of ``right`` and ``w`` (on the CPU a few blocks at a time, see :func:`_outer_gradients`), and one
    matrix-vector product with the saved intermediate for ``left`` (autograd through the elementwise form makes
    three more passes over tensors of that size). The gradients of both halves are written into one tensor, so
    that no slicing of the layer's input is differentiated. When the gradient's own graph is recorded (double
    backward), the intermediate is computed again from the inputs and every product is a differentiable one."""

    @staticmethod
    def forward(ctx: Any, pairs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        blocks, _, rows, channels = pairs.shape
        outputs = weights.shape[1]
        # contiguous halves: the batched products are markedly slower on blocks that are not adjacent in memory
        left, right = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
        partial = torch.bmm(right, weights.reshape(blocks, outputs * channels, channels).transpose(1, 2))
        # left (1, K) @ partial^T (K, K') per row: the row-vector form is several times faster than partial @ left
        mixed = torch.bmm(left.view(blocks * rows, 1, channels),
                          partial.view(blocks * rows, outputs, channels).transpose(1, 2))
        ctx.save_for_backward(pairs, weights, partial)
        return mixed.view(blocks, rows, outputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs, weights, partial = ctx.saved_tensors
        blocks, _, rows, channels = pairs.shape
        outputs = weights.shape[1]
        flat_weights = weights.reshape(blocks, outputs * channels, channels)
        grad = grad.contiguous()
        left, right = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
        if torch.is_grad_enabled():  # the gradient's graph is recorded (double backward): all from the inputs
            partial = torch.bmm(right, flat_weights.transpose(1, 2))
        if grad.device.type == "cpu" and not torch.is_grad_enabled():  # (out= records no graph)
            grad_right, grad_weights = _outer_gradients(grad, left, right, flat_weights)
        else:
            outer = (grad.unsqueeze(3) * left.unsqueeze(2)).view(blocks, rows, outputs * channels)
            grad_right = torch.bmm(flat_weights.transpose(1, 2), outer.transpose(1, 2)).transpose(1, 2)
            grad_weights = torch.bmm(right.transpose(1, 2), outer)
        grad_left = torch.bmm(grad.view(blocks * rows, 1, outputs), partial.view(blocks * rows, outputs, channels))
        grad_pairs = torch.stack([grad_left.view(blocks, rows, channels), grad_right], dim=1)
        return grad_pairs, grad_weights.transpose(1, 2).reshape(weights.shape)


#: bytes of outer product per chunk of blocks in the backward pass: about a core's L2 cache
_CHUNK_BYTES = 2**20


def _outer_gradients(grad: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                     flat_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of ``right`` ``(B, N, K)`` and of the weights (transposed, ``(B, K, K' K)``) from the outer
    products ``grad (N, K') x left (N, K)`` of every block, formed a few blocks at a time in a reused buffer that
    stays in the CPU's cache while the two matrix products read it: a quarter to a third faster than forming all
    of them at once from about 10 channels up. Both products are taken transposed (``w^T outer^T`` and
    ``right^T outer``), the orientation in which torch's batched products are markedly faster."""
    blocks, rows, channels = left.shape
    outputs = grad.shape[2]
    width = outputs * channels
    chunk = max(1, min(blocks, _CHUNK_BYTES // (rows * width * grad.element_size())))
    buffer = _SCRATCH.empty((chunk, rows, outputs, channels), grad)
    grad_right = grad.new_empty((blocks, channels, rows))
    grad_weights = grad.new_empty((blocks, channels, width))
    # every operand split once into chunks of blocks (views), so that the loop runs only the three products
    parts = zip(grad.unsqueeze(3).split(chunk), left.unsqueeze(2).split(chunk),
                flat_weights.transpose(1, 2).split(chunk), right.transpose(1, 2).split(chunk),
                grad_right.split(chunk), grad_weights.split(chunk))
    for grad_part, left_part, weights_part, right_part, grad_right_part, grad_weights_part in parts:
        outer = torch.mul(grad_part, left_part, out=buffer[: len(grad_part)]).view(len(grad_part), rows, width)
        torch.bmm(weights_part, outer.transpose(1, 2), out=grad_right_part)
        torch.bmm(right_part, outer, out=grad_weights_part)
    return grad_right.transpose(1, 2), grad_weights


def region_slots(regions: list[list[np.ndarray]]) -> torch.Tensor:
    """``(R, L, S)``: the variables of leaf region l of repetition r (``regions[r][l]``), padded with -1 to the size
    ``S`` of the largest region."""
    size = max(len(region) for repetition in regions for region in repetition)
    slots = np.full((len(regions), len(regions[0]), size), -1, dtype=np.int64)
    for r, repetition in enumerate(regions):
        for l, region in enumerate(repetition):  # noqa: E741
            slots[r, l, :len(region)] = region
    return torch.from_numpy(slots)


#: from this many inputs per leaf region on, :func:`region_products` takes the product in the row-major
#: orientation; below it, torch's batched product in that orientation is several times slower (measured on a
#: 2-core AVX-512 CPU: 340 us for 5 inputs against 56 us transposed, 250 against 210 for 25 inputs)
ROW_MAJOR_MIN_INPUTS = 12


class _RegionProduct(torch.autograd.Function):
    """``rows (B, I, S W) @ columns (B, S W, N)`` (+ ``offset`` ``(B, I)``), or with ``row_major`` the same product
    transposed, ``(B, N, I)``; ``columns`` are the rows ``index`` of ``design_t`` ``(D W + 1, N)``, each region's
    data columns.

    The gathered columns hold the data once per repetition; they are not kept for the backward pass but gathered
    again there (the product is linear in ``rows``: its gradient needs only them and the incoming gradient, so it
    can also be differentiated again). ``design_t`` is data: it gets no gradient."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, design_t: torch.Tensor, index: torch.Tensor,
                offset: torch.Tensor | None, row_major: bool) -> torch.Tensor:
        columns = _gathered(design_t, index, len(rows))
        ctx.save_for_backward(design_t, index)
        ctx.row_major, ctx.with_offset = row_major, offset is not None
        if row_major:
            first, second = columns.transpose(1, 2), rows.transpose(1, 2)
            offset = None if offset is None else offset.unsqueeze(1)
        else:
            first, second = rows, columns
            offset = None if offset is None else offset.unsqueeze(2)
        return torch.bmm(first, second) if offset is None else torch.baddbmm(offset, first, second)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, torch.Tensor | None, None]:
        design_t, index = ctx.saved_tensors
        columns = _gathered(design_t, index, len(grad))
        if ctx.row_major:  # grad (B, N, I): columns @ grad, transposed (several times faster than grad^T @ columns^T)
            grad_rows = torch.bmm(columns, grad).transpose(1, 2)
            grad_offset = grad.sum(dim=1) if ctx.with_offset else None
        else:  # grad (B, I, N)
            grad_rows = torch.bmm(grad, columns.transpose(1, 2))
            grad_offset = grad.sum(dim=2) if ctx.with_offset else None
        return grad_rows, None, None, grad_offset, None


def _gathered(design_t: torch.Tensor, index: torch.Tensor, blocks: int) -> torch.Tensor:
    return design_t.index_select(0, index).view(blocks, -1, design_t.shape[1])


def region_products(design: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor, width: int,
                    offset: torch.Tensor | None = None,
                    partition_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The leaf regions' log-values as ``(linear, log_scale)``, region-major ``(R, L, N, I)`` and ``(R, L, N, 1)``,
    ``linear`` of largest entry (about) 1 per row (all 0 in a row of -inf, with ``log_scale`` 0): for every region
    the sum over its variables' ``width`` columns (variable d: columns ``d width .. d width + width - 1``) of
    ``design (N, D width) * rows (D width, R, I)``, plus ``offset`` ``(R, L, I)`` (``partition_row``: the last row
    of the design is the all-missing row, whose log-values are 0). A -inf entry of ``rows`` (a state of
    probability 0) gives -inf where it is read, never NaN.

    Each region reads only its own variables (``slots``, see :func:`region_slots`): one batched matrix product
    over the ``R L`` regions, about ``L`` times fewer multiplications than the product of all columns with a
    table that is zero outside each region. The largest entry per row comes from the product taken transposed,
    ``(I, S width) @ (S width, N)``, where it is a reduction over an outer axis: several times faster on the CPU
    than one over the short last axis of the values. The values themselves are the row-major product ``(N, S
    width) @ (S width, I)`` from :data:`ROW_MAJOR_MIN_INPUTS` inputs on (summed in another order than the
    transposed one, so that an entry may exceed 1 by rounding), and the transposed one's exponentials transposed
    below that (a transposing copy costs more than the product from there on).
    """
    reps, regions, _ = slots.shape
    samples, columns = design.shape
    blocks = reps * regions
    # column of every (region, slot, state); padding slots read an all-zero column appended to the design
    index = slots.unsqueeze(-1) * width + torch.arange(width, device=slots.device)
    index = torch.where(slots.unsqueeze(-1) < 0, columns, index).view(reps, regions, -1)
    design_t = torch.cat([design.T, design.new_zeros((1, samples))])
    padded_rows = torch.cat([rows, rows.new_zeros((1,) + rows.shape[1:])])
    repetition = torch.arange(reps, device=slots.device).view(reps, 1, 1)
    region_rows = padded_rows[index, repetition].view(blocks, -1, rows.shape[2]).transpose(1, 2)  # (B, I, S width)
    index, offset = index.view(-1), None if offset is None else offset.view(blocks, -1)
    impossible = torch.isneginf(region_rows)
    hits = None
    if bool(impossible.any()):  # log 0: multiply the finite part (0 * -inf is NaN), mark the rows that read it
        with torch.no_grad():
            hits = _RegionProduct.apply(impossible.to(design.dtype), design_t, index, None, False) > 0
        region_rows = torch.where(impossible, torch.zeros_like(region_rows), region_rows)
    row_major = rows.shape[2] >= ROW_MAJOR_MIN_INPUTS
    with torch.set_grad_enabled(torch.is_grad_enabled() and not row_major):
        transposed = _read(_RegionProduct.apply(region_rows, design_t, index, offset, False), hits, partition_row)
    largest = finite_max(transposed, dim=1)  # (B, 1, N)
    if row_major:
        values = _RegionProduct.apply(region_rows, design_t, index, offset, True)
        values = _read(values.transpose(1, 2), hits, partition_row).transpose(1, 2)
        linear = torch.exp(values - largest.transpose(1, 2))
    else:
        linear = torch.exp(transposed - largest).transpose(1, 2).contiguous()
    return linear.view(reps, regions, samples, -1), largest.view(reps, regions, samples, 1)


def _read(values: torch.Tensor, hits: torch.Tensor | None, partition_row: bool) -> torch.Tensor:
    """Products ``(B, I, N)`` with -inf where they read a state of probability 0 (``hits``) and 0 (log 1) in the
    all-missing last row when ``partition_row``."""
    if hits is not None:
        values = values.masked_fill(hits, -math.inf)
    if partition_row:
        values[:, :, -1] = 0.0
    return values


def to_linear(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-values ``(..., K)`` as ``(linear, log_scale)``: ``values = log(linear) + log_scale``, with the largest
    entry of every ``linear`` row 1 (all 0 in a row of -inf) and ``log_scale`` ``(..., 1)`` (detached)."""
    log_scale = finite_max(values)
    return torch.exp(values - log_scale), log_scale


def _rescaled(mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mixed`` (linear, >= 0: the weights of a valid network are) divided by its sum per row, and the log of that
    divisor (a row of zeros, or one that overflowed, keeps divisor 1): a scaled linear form, ``values = log(linear)
    + log_scale``, without leaving linear space. The sum (a matrix-vector product) bounds the non-negative entries
    by 1 like the largest one does (and keeps the largest above 1 / K), at a fraction of the cost of a maximum over
    a short last axis."""
    total = mixed.detach() @ mixed.new_ones((mixed.shape[-1], 1))
    total = torch.where((total > 0) & torch.isfinite(total), total, torch.ones_like(total))
    return mixed / total, torch.log(total)


def einsum_layer(linear: torch.Tensor, log_scale: torch.Tensor, shift: torch.Tensor | None,
                 weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross products of sibling regions mixed by the sums of their parent: ``(R, L, N, K) -> (R, L/2, N, K')``,
    on values in a scaled linear form, ``values = log(linear) + log_scale`` (in: that of :func:`to_linear` or of
    this layer; out: rows divided by their sum, :func:`_rescaled`), region-major so that every region's ``(N, K)``
    block is contiguous and the layer's output is the next layer's input without copies.

    log sum_ij w_kij exp(a_i + b_j) = s_a + s_b + log sum_i exp(a_i - s_a) sum_j w_kij exp(b_j - s_b): the values
    stay in linear space from layer to layer, rescaled per region and row (one pass) instead of a logarithm and an
    exponential per layer. The mixing never forms the ``(N, K K)`` cross products: per region one batched matrix
    product ``(N, K) @ (K, K' K)`` contracts the right child's inputs with the weights and a batched
    matrix-vector product with the left child's inputs finishes the bilinear form, with a hand-written backward
    (:class:`_Bilinear`); the same multiplications as cross products followed by ``(N, K K) @ (K K, K')``, with
    fewer passes over tensors of that size (see benchmarks/README.md). ``weights`` ``(R, L/2, K', K K)`` (index
    ``i K + j``, i of the left child) are the actual weights divided by exp(``shift``) ``(R, L/2, K', 1)``; None
    when that is 0.
    """
    reps, regions, rows, channels = linear.shape
    outputs = weights.shape[2]
    blocks = reps * regions // 2
    pairs = linear.reshape(blocks, 2, rows, channels)  # siblings 2l and 2l + 1 are adjacent
    mixed = _Bilinear.apply(pairs, weights.reshape(blocks, outputs, channels, channels))
    mixed = mixed.view(reps, regions // 2, rows, outputs)
    scale = log_scale[:, 0::2] + log_scale[:, 1::2]
    if shift is not None:  # per-sum shifts: the largest into the scale, the rest (<= 0) into the linear values
        largest_shift = shift.amax(dim=(2, 3), keepdim=True)
        mixed = mixed * torch.exp(shift - largest_shift).transpose(2, 3)
        scale = scale + largest_shift
    rescaled, divisor = _rescaled(mixed)
    return rescaled, scale + divisor


def root_layer(linear: torch.Tensor, log_scale: torch.Tensor, shift: torch.Tensor,
               weights: torch.Tensor) -> torch.Tensor:
    """The root sum over the cross products of the two top regions of every repetition: ``(R, 2, N, K) -> (N,)``,
    from the scaled linear form of :func:`einsum_layer`.

    Per repetition the mixture is a bilinear form, sum_ij w_rij exp(a_ri) exp(b_rj), evaluated in linear space
    (one batched matrix product); the repetitions are then combined by log-sum-exp. ``weights`` ``(R K K,)`` are the
    actual weights divided by exp(``shift``).
    """
    left, right = linear[:, 0], linear[:, 1]  # (R, N, K)
    channels = left.shape[2]
    bilinear = torch.bmm(left, weights.view(-1, channels, channels))
    # a row of probability 0 (a state no input allows) has value -inf and gradient 0, not 0 / 0
    per_repetition = log_or_minus_inf((bilinear * right).sum(dim=2)) + (log_scale[:, 0] + log_scale[:, 1]).squeeze(2)
    return logsumexp(per_repetition, dim=0) + shift
