"""The pieces of the training loop that need no Ray: sampling, schedule, checkpoints."""

from __future__ import annotations

import pytest
import torch

from search_spaces import arch_id, build_space
from trainables.train import checkpoint as ckpt
from trainables.train.sampling import eval_archs, step_archs
from trainables.train.schedule import warmup_cosine


@pytest.fixture(scope="module")
def space():
    return build_space("vit", "vit-28")


def test_step_archs_depend_only_on_seed_epoch_step(space):
    first = [
        arch_id(a) for e in (1, 2) for s in range(20) for a in step_archs(space, "uniform", 7, e, s)
    ]
    again = [
        arch_id(a) for e in (1, 2) for s in range(20) for a in step_archs(space, "uniform", 7, e, s)
    ]
    assert first == again
    assert len(set(first)) > 20  # steps really draw different subnets
    other_seed = [
        arch_id(a) for e in (1, 2) for s in range(20) for a in step_archs(space, "uniform", 8, e, s)
    ]
    assert other_seed != first


def test_sandwich_runs_largest_smallest_and_a_sample(space):
    archs = step_archs(space, "sandwich", 0, 1, 5)
    assert archs[0] == space.largest() and archs[1] == space.smallest()
    assert archs[2] == step_archs(space, "uniform", 0, 1, 5)[0]


def test_eval_archs_are_fixed_across_epochs(space):
    a, b = eval_archs(space, 3, 4), eval_archs(space, 3, 4)
    assert list(a) == ["smallest", "largest", "random0", "random1", "random2", "random3"]
    assert a == b


def test_warmup_then_cosine():
    lrs = [warmup_cosine(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:], strict=False))  # decays monotonically
    assert lrs[-1] < 2e-5 and warmup_cosine(100, 100, 10, 1e-3, 1e-5) == pytest.approx(1e-5)


def test_checkpoint_round_trip_with_weights_only(tmp_path, space):
    model = space.build_supernet()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 28, 28), space.largest()).sum().backward()
    optimizer.step()
    rng = torch.get_rng_state()
    ckpt.save(
        tmp_path,
        model.state_dict(),
        {"epoch": 3, "optimizer": optimizer.state_dict(), "torch_rng": rng},
        {"epoch": 3, "history": []},
    )
    fresh = space.build_supernet()
    ckpt.load_into(fresh, tmp_path)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    state = ckpt.load_train_state(tmp_path)
    assert state["epoch"] == 3 and torch.equal(state["torch_rng"], rng)
    torch.optim.AdamW(fresh.parameters()).load_state_dict(state["optimizer"])


def test_corrupt_or_mismatched_checkpoints_are_named(tmp_path, space):
    model = space.build_supernet()
    ckpt.save(tmp_path, model.state_dict(), {"epoch": 1}, {"epoch": 1, "history": []})
    (tmp_path / "supernet.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ckpt.CheckpointError, match=r"supernet.pt is corrupt or not a torch file"):
        ckpt.load_into(model, tmp_path)
    ckpt.save(tmp_path, model.state_dict(), {"epoch": 1}, {"epoch": 1, "history": []})
    other = build_space("vit", "vit-28", {"embed_dims": [32, 48]}).build_supernet()
    with pytest.raises(ckpt.CheckpointError, match="does not fit the configured supernet"):
        ckpt.load_into(other, tmp_path)
    (tmp_path / "train_state.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match="train_state.pt is missing"):
        ckpt.load_train_state(tmp_path)


def test_data_that_does_not_fit_the_space_is_named(space, digits_splits):
    from trainables.errors import DataError
    from trainables.train.loop import check_data_fits_space

    with pytest.raises(
        DataError,
        match=r"data digits gives images \(1, 8, 8\) with 10 classes but the search space expects \(1, 28, 28\)",
    ):
        check_data_fits_space(digits_splits, space)
