"""Multiply-accumulates of one forward pass as torch counts them, whichever attention kernel runs.

``FlopCounterMode`` counts only the ops it has a formula for. Some torch builds run
``F.scaled_dot_product_attention`` on CPU through a fused kernel it has no formula for (torch
2.14: ``aten._scaled_dot_product_flash_attention_for_cpu``), so ``q @ k^T`` and ``attn @ v``
silently vanish from the count; on the meta device, or under the math backend, the same call
decomposes into ``aten.bmm`` and is counted. :func:`count_macs` watches every SDPA call: when
the counter's total did not move during the call, it adds the call's two matmuls from the
shapes of ``q``, ``k`` and ``v`` (the formula torch's own ``sdpa_flop_count`` uses), so the
result never depends on which kernel ran. Nothing here reads the code under test.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode


def sdpa_macs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
    """MACs of ``q @ k^T`` and ``attn @ v`` for q ``[..., L, E]``, k ``[..., S, E]``, v
    ``[..., S, Ev]`` (softmax, scaling and masking are not counted, as in FlopCounterMode)."""
    batch = math.prod(query.shape[:-2])
    length, embed = query.shape[-2:]
    source, value_embed = key.shape[-2], value.shape[-1]
    return batch * length * source * (embed + value_embed)


class _SdpaWatch(TorchFunctionMode):
    """Adds the MACs of every SDPA call the surrounding FlopCounterMode did not count."""

    def __init__(self, counter: FlopCounterMode) -> None:
        super().__init__()
        self.counter = counter
        self.calls = 0
        self.uncounted_macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        before = self.counter.get_total_flops()
        out = func(*args, **kwargs)
        self.calls += 1
        if self.counter.get_total_flops() == before:  # a kernel the counter cannot see
            names = ("query", "key", "value")
            q, k, v = (args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names))
            self.uncounted_macs += sdpa_macs(q, k, v)
        return out


def count_macs(model: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """MACs of ``model(*inputs)``: FlopCounterMode's FLOPs / 2 (it counts a multiply-add as
    2), plus the attention matmuls of any SDPA call it could not see."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter, _SdpaWatch(counter) as watch:
        model(*inputs)
    flops = counter.get_total_flops()
    assert flops % 2 == 0, f"FlopCounterMode reported an odd FLOP count {flops}"
    return flops // 2 + watch.uncounted_macs
