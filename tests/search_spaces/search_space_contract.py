"""The SearchSpace/Supernet contract (DESIGN.md section 2), written once for every family.

Like ``optuna/testing/pytest_samplers.py``: a test module subclasses :class:`SearchSpaceContract`
and provides two fixtures,

* ``space``: a built :class:`search_spaces.SearchSpace` (one per registered family and preset),
* ``kit``: the family's :class:`ContractKit`, the only family-specific knowledge the contract
  needs (how to build invalid archs, and how much supernet work a preset can afford),

and every test below runs against it. ``test_search_space_contract.py`` parametrises them over
everything in the registry, so a new family is tested as soon as it registers and has a kit.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from search_spaces import SearchSpace, Supernet, arch_id, build_from_spec, build_space
from tests.search_spaces.flops import count_macs

ROUND_TRIP_ARCHS = 200
EXACT_ATOL = 1e-5
FLOPS_RTOL = 0.01


@dataclasses.dataclass(frozen=True)
class SupernetBudget:
    """How much supernet work the contract does for one preset.

    Attributes:
        batch: images per exactness check.
        random_archs: random archs checked besides the smallest and the largest.
        overrides: config overrides for the tests that instantiate a supernet, to keep
            ImageNet-sized presets affordable (e.g. a smaller image; every width, depth and
            head choice stays as in the preset). Cost tests always use the preset as is.
    """

    batch: int = 2
    random_archs: int = 3
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ContractKit:
    """What the contract needs to know about a family.

    Attributes:
        bad_archs: ``space -> [(invalid arch, field name its error must mention), ...]``;
            one entry per kind of invalid arch the family can express.
        budget: ``preset name -> SupernetBudget``; keep ImageNet-sized presets at batch 1.
    """

    bad_archs: Callable[[SearchSpace], list[tuple[Any, str]]]
    budget: Callable[[str], SupernetBudget] = lambda preset: SupernetBudget()


class SupernetCache:
    """Builds each ``family/preset``'s space (with the kit's supernet overrides) and supernet
    once per session: supernets are the slow part of the suite."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[SearchSpace, Supernet]] = {}

    def get(self, preset_key: str, kit: ContractKit) -> tuple[SearchSpace, Supernet]:
        if preset_key not in self._built:
            family, preset = preset_key.split("/", 1)
            space = build_space(family, preset, kit.budget(preset).overrides)
            torch.manual_seed(0)
            self._built[preset_key] = (space, space.build_supernet())
        space, net = self._built[preset_key]
        return space, net.eval()


def _random_archs(space: SearchSpace, n: int, seed: int = 0) -> list[Any]:
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def _standalone_cost(space: SearchSpace, arch: Any) -> dict[str, int]:
    """Params and MACs of the model ``export_spec`` describes, measured by torch.

    Built and run on the meta device: shapes only, so even ImageNet-sized models cost
    milliseconds. MACs are FlopCounterMode's FLOPs / 2 (it counts a multiply-add as 2), plus
    any attention matmuls it could not see (``flops.count_macs``).
    """
    spec = json.loads(json.dumps(space.export_spec(arch)))  # must survive JSON
    with torch.device("meta"):
        model = build_from_spec(spec).eval()
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, torch.zeros(1, *space.input_shape))
    return {"params": params, "flops": macs}


class SearchSpaceContract:
    """Tests every family must pass. Needs fixtures ``space``, ``kit``, ``preset_key`` and
    ``supernets`` (a :class:`SupernetCache`)."""

    # ---- sampling and evolution ---------------------------------------------------------------
    def test_sample_is_valid_and_reproducible(self, space: SearchSpace) -> None:
        first = _random_archs(space, 50, seed=7)
        again = _random_archs(space, 50, seed=7)
        assert first == again
        for arch in first:
            space.validate(arch)
        assert len(set(first)) > 1, "sample() always returns the same arch"

    def test_sample_uses_only_the_given_rng(self, space: SearchSpace) -> None:
        random.seed(1)
        a = space.sample(random.Random(3))
        random.seed(2)
        b = space.sample(random.Random(3))
        assert a == b

    def test_smallest_and_largest_bound_the_cost(self, space: SearchSpace) -> None:
        lo, hi = space.cost(space.smallest()), space.cost(space.largest())
        for arch in _random_archs(space, 100):
            cost = space.cost(arch)
            for key in ("params", "flops"):
                assert lo[key] <= cost[key] <= hi[key], (key, arch)
        assert lo["params"] < hi["params"]

    def test_mutate_always_valid(self, space: SearchSpace) -> None:
        rng = random.Random(11)
        arch, changed = space.sample(rng), 0
        for _ in range(300):
            child = space.mutate(arch, rng)
            space.validate(child)
            changed += child != arch
            arch = child
        assert changed > 0, "mutate() never changes anything"

    def test_crossover_always_valid(self, space: SearchSpace) -> None:
        rng = random.Random(12)
        parents = _random_archs(space, 40, seed=13)
        novel = 0
        for a, b in zip(parents, parents[1:], strict=False):
            for _ in range(5):
                child = space.crossover(a, b, rng)
                space.validate(child)
                novel += child not in (a, b)
        assert novel > 0, "crossover() only ever returns a parent"

    def test_crossover_of_an_arch_with_itself_is_that_arch(self, space: SearchSpace) -> None:
        rng = random.Random(14)
        for arch in _random_archs(space, 20):
            assert space.crossover(arch, arch, rng) == arch

    def test_operators_reject_invalid_parents(self, space: SearchSpace, kit: ContractKit) -> None:
        bad, field = kit.bad_archs(space)[0]
        good = space.smallest()
        with pytest.raises(ValueError, match=re.escape(field)):
            space.mutate(bad, random.Random(0))
        with pytest.raises(ValueError, match=re.escape(field)):
            space.crossover(good, bad, random.Random(0))

    # ---- flat encoding ------------------------------------------------------------------------
    def test_encode_decode_round_trip(self, space: SearchSpace) -> None:
        archs = _random_archs(space, ROUND_TRIP_ARCHS) + [space.smallest(), space.largest()]
        for arch in archs:
            flat = space.encode(arch)
            assert space.decode(flat) == arch
            assert space.decode(json.loads(json.dumps(flat))) == arch  # survives JSON/parquet

    def test_decode_accepts_numpy_scalars(self, space: SearchSpace) -> None:
        """Archive columns read back from parquet arrive as numpy scalars."""
        np = pytest.importorskip("numpy")
        for arch in _random_archs(space, 20):
            flat = {k: np.asarray([v])[0] for k, v in space.encode(arch).items()}
            assert space.decode(flat) == arch

    def test_encoding_has_fixed_keys_and_flat_values(self, space: SearchSpace) -> None:
        keys = list(space.encode(space.smallest()))
        assert keys == list(space.encode(space.largest()))
        for arch in _random_archs(space, ROUND_TRIP_ARCHS):
            flat = space.encode(arch)
            assert list(flat) == keys
            for key, value in flat.items():
                assert isinstance(key, str)
                assert isinstance(value, (int, float, str)) and not isinstance(value, bool), key

    def test_distributions_cover_every_encoded_value(self, space: SearchSpace) -> None:
        optuna = pytest.importorskip("optuna")
        dists = space.distributions()
        assert list(dists) == list(space.encode(space.smallest()))
        for dist in dists.values():
            assert isinstance(dist, optuna.distributions.BaseDistribution)
        for arch in _random_archs(space, 100) + [space.smallest(), space.largest()]:
            for key, value in space.encode(arch).items():
                internal = dists[key].to_internal_repr(value)  # raises if outside
                assert dists[key].to_external_repr(internal) == value

    def test_decode_rejects_missing_and_unknown_keys(self, space: SearchSpace) -> None:
        flat = space.encode(space.largest())
        key = next(iter(flat))
        missing = {k: v for k, v in flat.items() if k != key}
        with pytest.raises(ValueError, match=re.escape(key)):
            space.decode(missing)
        with pytest.raises(ValueError, match="not_a_gene"):
            space.decode({**flat, "not_a_gene": 1})

    # ---- validation ---------------------------------------------------------------------------
    def test_validate_names_the_bad_field(self, space: SearchSpace, kit: ContractKit) -> None:
        cases = kit.bad_archs(space)
        assert cases, "the kit must provide invalid archs"
        for arch, field in cases:
            with pytest.raises(ValueError, match=re.escape(field)) as info:
                space.validate(arch)
            assert "allowed" in str(info.value), str(info.value)

    def test_validate_rejects_non_archs(self, space: SearchSpace) -> None:
        for thing in (None, "arch", {"embed_dim": 1}, 3):
            with pytest.raises(ValueError):
                space.validate(thing)

    def test_validate_accepts_what_the_space_produces(self, space: SearchSpace) -> None:
        for arch in [space.smallest(), space.largest(), *_random_archs(space, 20)]:
            space.validate(arch)

    # ---- identity and serialisation -----------------------------------------------------------
    def test_arch_is_hashable_and_immutable(self, space: SearchSpace) -> None:
        arch = space.largest()
        assert hash(arch) == hash(space.from_json(space.to_json(arch)))
        field = dataclasses.fields(arch)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(arch, field, getattr(arch, field))

    def test_json_round_trip(self, space: SearchSpace) -> None:
        for arch in _random_archs(space, 50) + [space.smallest(), space.largest()]:
            text = space.to_json(arch)
            assert json.loads(text)  # plain JSON
            back = space.from_json(text)
            assert back == arch and space.to_json(back) == text

    def test_from_json_rejects_garbage(self, space: SearchSpace, kit: ContractKit) -> None:
        with pytest.raises(ValueError):
            space.from_json("{not json")
        with pytest.raises(ValueError):
            space.from_json("[1, 2]")
        data = json.loads(space.to_json(space.smallest()))
        with pytest.raises(ValueError, match="bogus"):
            space.from_json(json.dumps({**data, "bogus": 1}))

    def test_arch_id_is_stable_and_distinguishes_archs(self, space: SearchSpace) -> None:
        archs = _random_archs(space, 200)
        ids = {space.arch_id(a): a for a in archs}
        assert len(ids) == len(set(archs)), "different archs share an arch_id"
        for key, arch in ids.items():
            assert re.fullmatch(r"[0-9a-f]{12}", key)
            assert arch_id(space.from_json(space.to_json(arch))) == key

    # ---- cost ---------------------------------------------------------------------------------
    def test_cost_is_ints(self, space: SearchSpace) -> None:
        cost = space.cost(space.smallest())
        assert set(cost) == {"params", "flops"}
        assert all(type(v) is int and v > 0 for v in cost.values())

    def test_cost_matches_the_standalone_model(self, space: SearchSpace) -> None:
        for arch in [space.smallest(), space.largest(), *_random_archs(space, 5)]:
            measured, analytic = _standalone_cost(space, arch), space.cost(arch)
            assert analytic["params"] == measured["params"], arch
            assert analytic["flops"] == pytest.approx(measured["flops"], rel=FLOPS_RTOL), arch

    # ---- supernet -----------------------------------------------------------------------------
    def test_extraction_is_exact(
        self, kit: ContractKit, preset_key: str, supernets: SupernetCache
    ) -> None:
        budget = kit.budget(preset_key.split("/", 1)[1])
        space, net = supernets.get(preset_key, kit)
        torch.manual_seed(1)
        x = torch.randn(budget.batch, *space.input_shape)
        archs = [space.smallest(), space.largest()] + _random_archs(space, budget.random_archs)
        for arch in archs:
            model = net.extract(arch)
            with torch.no_grad():
                expected, got = net(x, arch), model(x)
            assert got.shape == (budget.batch, space.num_classes)
            assert (got - expected).abs().max().item() <= EXACT_ATOL, arch
            # the copy shares no storage with the supernet
            supernet_ptrs = {p.data_ptr() for p in net.parameters()}
            assert not supernet_ptrs & {p.data_ptr() for p in model.parameters()}

    def test_extracted_model_matches_export_spec_and_safetensors(
        self, kit: ContractKit, preset_key: str, supernets: SupernetCache
    ) -> None:
        space, net = supernets.get(preset_key, kit)
        arch = space.smallest()
        model = net.extract(arch)
        weights = safetensors_load(safetensors_save(model.state_dict()))
        with torch.device("meta"):  # architecture only; the weights come from the export
            rebuilt = build_from_spec(json.loads(json.dumps(space.export_spec(arch))))
        rebuilt.load_state_dict(weights, strict=True, assign=True)
        x = torch.randn(1, *space.input_shape)
        with torch.no_grad():
            assert torch.equal(rebuilt.eval()(x), model.eval()(x))

    def test_supernet_state_dict_loads_weights_only(
        self, kit: ContractKit, preset_key: str, supernets: SupernetCache
    ) -> None:
        space, net = supernets.get(preset_key, kit)
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        with torch.device("meta"):  # no second allocation/initialisation of a big supernet
            fresh = space.build_supernet()
        fresh.load_state_dict(state, strict=True, assign=True)
        x = torch.randn(1, *space.input_shape)
        arch = space.smallest()
        with torch.no_grad():
            assert torch.equal(fresh.eval()(x, arch), net(x, arch))

    def test_param_groups_cover_every_trainable_parameter_once(
        self, kit: ContractKit, preset_key: str, supernets: SupernetCache
    ) -> None:
        _, net = supernets.get(preset_key, kit)
        groups = net.param_groups(0.05)
        assert groups and all(set(g) >= {"params", "weight_decay"} for g in groups)
        assert {g["weight_decay"] for g in groups} <= {0.05, 0.0}
        grouped = [id(p) for g in groups for p in g["params"]]
        trainable = [id(p) for p in net.parameters() if p.requires_grad]
        assert sorted(grouped) == sorted(trainable)  # each exactly once, nothing frozen
        torch.optim.AdamW(groups, lr=1e-3)  # a valid optimizer spec

    def test_recalibrate_keeps_the_mode_and_the_outputs(
        self, kit: ContractKit, preset_key: str, supernets: SupernetCache
    ) -> None:
        space, net = supernets.get(preset_key, kit)
        arch = space.smallest()
        torch.manual_seed(2)
        x = torch.randn(2, *space.input_shape)
        net.recalibrate(arch, [x])
        assert not net.training
        if not net.has_batchnorm():  # nothing to re-estimate: scores stay as they were
            before = net(x, arch)
            net.recalibrate(arch, [torch.randn(2, *space.input_shape)])
            assert torch.equal(net(x, arch), before)

    def test_supernet_forward_rejects_invalid_arch(
        self, kit: ContractKit, preset_key: str, supernets: SupernetCache
    ) -> None:
        space, net = supernets.get(preset_key, kit)
        bad, field = kit.bad_archs(space)[0]
        x = torch.zeros(1, *space.input_shape)
        with pytest.raises(ValueError, match=re.escape(field)):
            net(x, bad)
        with pytest.raises(ValueError, match=re.escape(field)):
            net.extract(bad)
