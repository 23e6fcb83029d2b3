"""The training loss with distillation from a dense teacher (trainables/train/distill.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables.train.config import DistillConfig, SupernetTrainConfig
from trainables.train.distill import training_loss


def cfg(weight: float, temperature: float = 1.0, smoothing: float = 0.0) -> SupernetTrainConfig:
    return SupernetTrainConfig(
        label_smoothing=smoothing, distill=DistillConfig(weight=weight, temperature=temperature)
    )


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))


def test_no_teacher_or_weight_zero_is_the_plain_loss(logits):
    student, teacher, y = logits
    plain = F.cross_entropy(student, y, label_smoothing=0.1)
    assert torch.allclose(training_loss(student, y, None, cfg(1.0, smoothing=0.1)), plain)
    assert torch.allclose(training_loss(student, y, teacher, cfg(0.0, smoothing=0.1)), plain)


def test_weight_one_at_t1_is_soft_target_cross_entropy_minus_the_teacher_entropy(logits):
    student, teacher, y = logits
    p = teacher.softmax(-1)
    soft_ce = -(p * student.log_softmax(-1)).sum(-1).mean()
    entropy = -(p * p.log()).sum(-1).mean()
    got = training_loss(student, y, teacher, cfg(1.0))
    assert torch.allclose(got, soft_ce - entropy, atol=1e-6)
    assert training_loss(teacher, y, teacher, cfg(1.0)).abs() < 1e-6  # equal to the teacher


def test_mixed_weight_and_temperature(logits):
    student, teacher, y = logits
    t, w = 2.0, 0.25
    kd = F.kl_div(
        (student / t).log_softmax(-1), (teacher / t).log_softmax(-1), log_target=True,
        reduction="batchmean",
    )  # fmt: skip
    expected = (1 - w) * F.cross_entropy(student, y) + w * t * t * kd
    assert torch.allclose(training_loss(student, y, teacher, cfg(w, t)), expected)


def test_gradients_reach_the_student_only(logits):
    student, teacher, y = logits
    student = student.clone().requires_grad_(True)
    teacher = teacher.clone().requires_grad_(True)
    training_loss(student, y, teacher.detach(), cfg(0.5)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
