"""Configuration of a ViT search space: one frozen dataclass, checked once on construction.

A preset (``presets.py``) is an instance of :class:`ViTSpaceConfig`; a config file overrides any
field through ``registry.build_space(..., overrides=...)``, which calls
:func:`dataclasses.replace` and so runs the checks in ``__post_init__`` again. Values that come
from YAML as lists are normalised to sorted tuples, ints given for float choices become floats;
anything else that is not allowed raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

#: AutoFormer's (DeiT's) training recipe for one fixed ViT trained from scratch: AdamW, peak lr
#: 5e-4 x batch / 512 (``lr: None``), cosine decay to 1e-5 after a linear warm-up, weight decay
#: 0.05, label smoothing 0.1, gradient clipping at 5; the supernet recipe, for a fixed arch
#: (``SearchSpace.standalone_recipe`` of the ViT and low-rank families).
STANDALONE_RECIPE: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": None,
    "min_lr": 1e-5,
    "warmup_epochs": 1.0,
    "weight_decay": 0.05,
    "label_smoothing": 0.1,
    "clip_grad": 5.0,
    "batch_size": 128,
}


def mlp_hidden_dim(embed_dim: int, mlp_ratio: float) -> int:
    """Hidden width of a block's MLP. Exactly timm's ``Block`` rule, ``int(dim * mlp_ratio)``,
    so the supernet slice, the analytic cost and the extracted model always agree."""
    return int(embed_dim * mlp_ratio)


@dataclasses.dataclass(frozen=True)
class ViTSpaceConfig:
    """An AutoFormer-style ViT search space and the supernet that covers it.

    Attributes:
        img_size: input height and width (square images).
        patch_size: side of the square patches; must divide ``img_size``.
        in_chans: input channels.
        num_classes: output logits.
        head_dim: width of one attention head (AutoFormer: 64). q, k, v are ``heads * head_dim``.
        embed_dims: choices for the embedding width, shared by all blocks of a subnet.
        depths: choices for the number of blocks.
        num_heads: per-block choices for the number of attention heads.
        mlp_ratios: per-block choices for MLP hidden width / embedding width.
        supernet_embed_dim: width the supernet allocates; ``None`` means ``max(embed_dims)``.
            AutoFormer's tiny and base supernets are wider (256, 640) than their largest subnet
            (240, 624); the extra channels are never used by a subnet.
        drop_path: stochastic-depth rate of the widest subnet's last block (linear in depth, as
            in timm). Only active in train mode.
        drop_path_scales_with_embed: scale the rate by ``embed_dim / supernet width`` as
            AutoFormer does, so narrow subnets are regularised less.
        mutate_depth_prob: AutoFormer mutation: probability to resample the depth.
        mutate_embed_prob: probability to resample the embedding width.
        mutate_block_prob: per block, probability to resample its heads and (independently)
            its MLP ratio.
    """

    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    head_dim: int = 64
    supernet_embed_dim: int | None = None
    drop_path: float = 0.1
    drop_path_scales_with_embed: bool = True
    mutate_depth_prob: float = 0.4
    mutate_embed_prob: float = 0.4
    mutate_block_prob: float = 0.2

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "head_dim"):
            _check_positive_int(name, getattr(self, name))
        if self.img_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} must divide img_size={self.img_size}; allowed: "
                f"{[p for p in range(1, self.img_size + 1) if self.img_size % p == 0]}"
            )
        self._set("embed_dims", _int_choices("embed_dims", self.embed_dims))
        self._set("depths", _int_choices("depths", self.depths))
        self._set("num_heads", _int_choices("num_heads", self.num_heads))
        self._set("mlp_ratios", _float_choices("mlp_ratios", self.mlp_ratios))
        if self.supernet_embed_dim is not None:
            _check_positive_int("supernet_embed_dim", self.supernet_embed_dim)
            if self.supernet_embed_dim < max(self.embed_dims):
                raise ValueError(
                    f"supernet_embed_dim={self.supernet_embed_dim} is narrower than the widest "
                    f"embed_dims choice {max(self.embed_dims)}; allowed: null or an int >= "
                    f"{max(self.embed_dims)}"
                )
        for ratio in self.mlp_ratios:
            if mlp_hidden_dim(min(self.embed_dims), ratio) < 1:
                raise ValueError(
                    f"mlp_ratios choice {ratio} gives an empty MLP at embed_dim "
                    f"{min(self.embed_dims)}; allowed: ratios with int(embed_dim * ratio) >= 1"
                )
        if not isinstance(self.drop_path_scales_with_embed, bool):
            raise ValueError(
                f"drop_path_scales_with_embed={self.drop_path_scales_with_embed!r}; "
                "allowed: true, false"
            )
        _check_probability("drop_path", self.drop_path, upper_open=True)
        for name in ("mutate_depth_prob", "mutate_embed_prob", "mutate_block_prob"):
            _check_probability(name, getattr(self, name))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    # ---- derived sizes of the supernet --------------------------------------------------------
    @property
    def max_embed_dim(self) -> int:
        """Width of the supernet's shared tensors."""
        return self.supernet_embed_dim or max(self.embed_dims)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @property
    def max_heads(self) -> int:
        return max(self.num_heads)

    @property
    def max_hidden_dim(self) -> int:
        return mlp_hidden_dim(self.max_embed_dim, max(self.mlp_ratios))

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Sequence length: the patches plus the class token."""
        return self.num_patches + 1


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= 1")


def _check_probability(name: str, value: Any, upper_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and 0.0 <= value and (value < 1.0 if upper_open else value <= 1.0)
    if not ok:
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a number in {bound}")


def _as_sequence(name: str, value: Any) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a non-empty list of choices")
    if len(set(value)) != len(value):
        raise ValueError(f"{name}={list(value)!r} has duplicate choices; allowed: distinct values")
    return value


def _int_choices(name: str, value: Any) -> tuple[int, ...]:
    for v in _as_sequence(name, value):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(
                f"{name} choice {v!r} is not allowed; allowed: integers >= 1 (got {list(value)})"
            )
    return tuple(sorted(value))


def _float_choices(name: str, value: Any) -> tuple[float, ...]:
    for v in _as_sequence(name, value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(
                f"{name} choice {v!r} is not allowed; allowed: numbers > 0 (got {list(value)})"
            )
    return tuple(sorted(float(v) for v in value))
