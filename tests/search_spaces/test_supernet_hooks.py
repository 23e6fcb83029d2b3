"""The engine hooks of the Supernet/SearchSpace contracts (search_spaces/base.py): their
defaults, and the ViT family's implementations (weight decay, TAS-LoRA adapter, initialisation
and freezing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from search_spaces import SearchSpace, Supernet, build_space
from search_spaces.vit import MoleViTSupernet
from tests.helpers.configs import SMALL_SPACE

ADAPTER = {"experts": 2, "rank": 2, "alpha": 4.0, "router_hidden": 8}


class BNNet(Supernet):
    """A toy supernet with BatchNorm: `arch` is the number of conv channels used."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x, arch):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(h.mean((2, 3)))

    def extract(self, arch):
        raise NotImplementedError


def _old_no_decay(name: str, param: torch.Tensor) -> bool:  # the rule before the hook
    return param.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))


def _old_groups(model: nn.Module) -> tuple[set[int], set[int]]:
    decay, no_decay = set(), set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _old_no_decay(name, p) else decay).add(id(p))
    return decay, no_decay


@pytest.fixture(scope="module")
def space():
    return build_space("vit", "vit-28", SMALL_SPACE)


@pytest.mark.parametrize("freeze", [None, True, False])
def test_vit_param_groups_equal_the_old_rule(space, freeze):
    net = (
        space.build_supernet()
        if freeze is None
        else space.wrap_supernet(space.build_supernet(), ADAPTER)
    )
    if freeze is not None:
        net.freeze_base(freeze)
    decay, no_decay = net.param_groups(0.05)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert ({id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}) == _old_groups(
        net
    )
    names = {id(p): n for n, p in net.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    if freeze is not True:
        assert {"pos_embed", "cls_token"} <= {n.removeprefix("base.") for n in no_decay_names}


def test_wrap_supernet_builds_the_mole_supernet_and_checks_the_spec(space):
    net = space.wrap_supernet(space.build_supernet(), {**ADAPTER, "targets": ["fc1", "qkv"]})
    assert isinstance(net, MoleViTSupernet) and net.spec.targets == ("qkv", "fc1")
    with pytest.raises(ValueError, match="expertz"):
        space.wrap_supernet(space.build_supernet(), {"expertz": 2})


def test_default_wrap_supernet_refuses_naming_the_family(space):
    with pytest.raises(ValueError, match="family 'vit' has no adapters"):
        SearchSpace.wrap_supernet(space, space.build_supernet(), ADAPTER)


def test_prepare_training_default_does_nothing(space):
    net = space.build_supernet()
    assert net.prepare_training(space, seed=0, init_steps=10, freeze_base=True) is None
    assert all(p.requires_grad for p in net.parameters())


def test_mole_prepare_training_fits_the_router_and_freezes(space):
    torch.manual_seed(0)
    net = space.wrap_supernet(space.build_supernet(), ADAPTER)
    router = {k: v.clone() for k, v in net.router.state_dict().items()}
    assert net.prepare_training(space, seed=0, init_steps=0, freeze_base=True) is None
    assert all(torch.equal(v, net.router.state_dict()[k]) for k, v in router.items())
    assert not any(p.requires_grad for p in net.base.parameters())
    note = net.prepare_training(space, seed=0, init_steps=3, freeze_base=False)
    assert note.startswith("group-wise router initialisation: ")
    assert not all(torch.equal(v, net.router.state_dict()[k]) for k, v in router.items())
    assert all(p.requires_grad for p in net.parameters())


def test_forward_features_default_names_the_supernet():
    with pytest.raises(NotImplementedError, match="BNNet"):
        BNNet().forward_features(torch.zeros(1, 1, 4, 4), None)


def test_recalibrate_re_estimates_batchnorm_statistics():
    torch.manual_seed(0)
    net = BNNet().eval()
    assert net.has_batchnorm()
    batches = [torch.randn(8, 1, 5, 5) * 3 + 1 for _ in range(3)]
    net.recalibrate(None, batches)
    assert not net.training and net.bn.momentum == 0.1
    with torch.no_grad():
        feats = torch.cat([net.conv(x) for x in batches])
    expected = feats.mean((0, 2, 3))
    assert torch.allclose(net.bn.running_mean, expected, atol=1e-5)
    assert net.bn.num_batches_tracked.item() == 3


def test_recalibrate_is_a_no_op_without_batchnorm(space):
    net = space.build_supernet().eval()
    assert not net.has_batchnorm()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.recalibrate(space.smallest(), [torch.randn(2, *space.input_shape)])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
