"""``y = x @ W[:o, :i]^T + b[:o]``: a linear layer on the leading slice of larger weights.

Weight-entangled supernets (AutoFormer, FLORA's nested ranks) run every layer on a leading
slice of a shared weight. Written as ``F.linear(x, W[:o, :i], b[:o])``, autograd back-propagates
the slice by allocating a zero tensor of the FULL weight's size and copying the slice's gradient
into it: two extra passes over every weight, every step. On CPU at small batches that alone
made a subnet step ~1.3x slower than the same step on the standalone model.

:func:`sliced_linear` computes the same values with a custom backward that writes the weight
gradient's GEMM straight into the leading block of a full-size buffer and zeroes only the rest.
Gradients still arrive through autograd as full-size tensors (so ``AccumulateGrad``, DDP hooks
and optimisers see nothing unusual), and entries outside the slice are exactly zero.
Under autocast the forward runs in the autocast dtype like ``F.linear`` would; weight and bias
gradients are returned in the parameters' dtype. Double backward is not supported.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def sliced_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_features: int,
    in_features: int,
) -> torch.Tensor:
    """``F.linear(x, weight[:out_features, :in_features], bias[:out_features])``, with a
    backward that does not materialise the full-size gradient twice."""
    if out_features == weight.shape[0] and in_features == weight.shape[1]:
        return F.linear(x, weight, bias)
    return _SlicedLinear.apply(x, weight, bias, out_features, in_features)


class _SlicedLinear(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        out_features: int,
        in_features: int,
    ) -> torch.Tensor:
        w = weight[:out_features, :in_features]
        b = None if bias is None else bias[:out_features]
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # Cast once here (as autocast would inside F.linear) so backward sees one dtype.
            dtype = torch.get_autocast_dtype(device_type)
            x, w = x.to(dtype), w.to(dtype)
            b = None if b is None else b.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.sizes = (out_features, in_features)
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        with torch.autocast(device_type, enabled=False):
            return F.linear(x, w, b)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        o, i = ctx.sizes
        g2 = grad_out.reshape(-1, o)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w = weight[:o, :i].to(grad_out.dtype)
            grad_x = (g2 @ w).view(*grad_out.shape[:-1], i)
        if ctx.needs_input_grad[1]:
            grad_w = weight.new_empty(weight.shape)
            if o < weight.shape[0]:
                grad_w[o:].zero_()
            if i < weight.shape[1]:
                grad_w[:o, i:].zero_()
            x2 = x.reshape(-1, i).to(g2.dtype)
            if g2.dtype == grad_w.dtype:
                torch.mm(g2.t(), x2, out=grad_w[:o, :i])
            else:
                grad_w[:o, :i].copy_(g2.t() @ x2)
        if ctx.bias_shape is not None and ctx.needs_input_grad[2]:
            grad_b = g2.new_empty(ctx.bias_shape, dtype=ctx.bias_dtype)
            if o < ctx.bias_shape[0]:
                grad_b[o:].zero_()
            if g2.dtype == grad_b.dtype:
                torch.sum(g2, 0, out=grad_b[:o])
            else:
                grad_b[:o].copy_(g2.sum(0))
        return grad_x, grad_w, grad_b, None, None
