"""sliced_linear: same values and gradients as autograd through a slice, cheaper backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from search_spaces.sliced_linear import sliced_linear


def _reference(x, weight, bias, o, i):
    b = None if bias is None else bias[:o]
    return F.linear(x, weight[:o, :i], b)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(("o", "i"), [(5, 3), (8, 3), (5, 6), (8, 6)])
def test_values_and_gradients_match_autograd_slicing(with_bias: bool, o: int, i: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True) if with_bias else None
    x = torch.randn(2, 7, i, dtype=torch.float64, requires_grad=True)
    params = [x, weight] + ([bias] if with_bias else [])
    upstream = torch.randn(2, 7, o, dtype=torch.float64)

    out = sliced_linear(x, weight, bias, o, i)
    ours = torch.autograd.grad(out, params, upstream)
    expected = _reference(x, weight, bias, o, i)
    theirs = torch.autograd.grad(expected, params, upstream)

    assert torch.equal(out, expected)
    for got, want in zip(ours, theirs, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.all(ours[1][o:] == 0) and torch.all(ours[1][:, i:] == 0)
    if with_bias:
        assert torch.all(ours[2][o:] == 0)


def test_gradcheck() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: sliced_linear(x, w, b, 4, 3), (x, weight, bias))


def test_frozen_weights_get_no_gradient() -> None:
    """TAS-LoRA trains experts on a frozen supernet: only the input needs a gradient."""
    weight, bias = torch.randn(8, 6), torch.randn(8)
    x = torch.randn(3, 4, requires_grad=True)
    sliced_linear(x, weight, bias, 5, 4).sum().backward()
    assert x.grad is not None and weight.grad is None and bias.grad is None


def test_gradients_accumulate_across_steps() -> None:
    weight = torch.randn(8, 6, requires_grad=True)
    x = torch.randn(3, 4)
    sliced_linear(x, weight, None, 5, 4).sum().backward()
    first = weight.grad.clone()
    sliced_linear(x, weight, None, 5, 4).sum().backward()
    torch.testing.assert_close(weight.grad, 2 * first)


def test_autocast_runs_in_low_precision_and_returns_parameter_dtype_grads() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 6, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    x = torch.randn(5, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sliced_linear(x, weight, bias, 5, 4)
        expected = _reference(x, weight, bias, 5, 4)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)
    ours = torch.autograd.grad(out.float().sum(), [x, weight, bias])
    theirs = torch.autograd.grad(expected.float().sum(), [x, weight, bias])
    for got, want in zip(ours, theirs, strict=True):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
