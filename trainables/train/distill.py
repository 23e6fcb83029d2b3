"""The training loss, with optional distillation from a dense teacher (FLORA).

``(1 - w) x CE(logits, labels; label smoothing) + w x T^2 x KL(softmax(t / T) || softmax(s / T))``
with ``w = distill.weight`` and ``T = distill.temperature``. ``w = 1, T = 1`` is FLORA's
soft-target cross-entropy against the uncompressed model (equal to the KL up to the
teacher's entropy, a constant); ``w = 0`` or no teacher is the plain loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.train.config import SupernetTrainConfig


def training_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    cfg: SupernetTrainConfig,
) -> torch.Tensor:
    weight = cfg.distill.weight if teacher_logits is not None else 0.0
    loss = logits.new_zeros(())
    if weight < 1.0:
        ce = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        loss = loss + (1.0 - weight) * ce
    if weight > 0.0:
        t = cfg.distill.temperature
        kd = F.kl_div(
            F.log_softmax(logits / t, dim=-1),
            F.log_softmax(teacher_logits.float() / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        loss = loss + weight * t * t * kd
    return loss
