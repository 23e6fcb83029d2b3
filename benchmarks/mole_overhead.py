"""What does TAS-LoRA cost? MoLE training step vs plain supernet step, merged vs plain inference.

For the smallest, a middle and the largest subnet of vit-28 at patch size 7 (16 patches + the
class token), batch 64, 2 threads:

(a) training step: forward + cross-entropy + backward + AdamW step

    * ``plain``: the plain supernet, AdamW on all its parameters (the AutoFormer stage),
    * ``mole``: the MoLE supernet with the base frozen, AdamW on ``mole_parameters()`` (the
      TAS-LoRA stage as configured by default); goal: ``mole / plain <= 1.15``,
    * ``mole_unfrozen``: the MoLE supernet with the base trainable too, AdamW on everything
      (the ``unfreeze`` option), reported for reference;

(b) inference: forward of the merged extracted timm model vs the plain extracted timm model
    of the same arch (``torch.no_grad``, eval mode); goal ``1.00 +- 0.02`` (the two are the same
    timm architecture; this checks that merging left nothing behind).

The variants of one case are interleaved (rotating which goes first) so drifting machine load
hits all alike; we report the ratio of the medians and, as a cross-check on a shared machine,
the ratio of the fastest repeats. Experts' B are random (not zero) so the merge is exercised.

    python benchmarks/mole_overhead.py            # full run, writes benchmarks/results/...
    python benchmarks/mole_overhead.py --quick    # a few repeats, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved, middle_arch  # noqa: E402
from search_spaces import SearchSpace, arch_id, build_space  # noqa: E402
from search_spaces.vit.mole import MoleSpec, MoleViTSupernet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "mole_overhead.json"
GOAL_TRAIN = 1.15
GOAL_INFER = (0.98, 1.02)


def _mole(space: SearchSpace, spec: MoleSpec) -> MoleViTSupernet:
    torch.manual_seed(0)
    net = MoleViTSupernet(space.build_supernet(), spec)
    with torch.no_grad():
        for experts in net.experts.values():
            experts.B.normal_(std=0.02)
    return net


def train_case(
    space: SearchSpace, spec: MoleSpec, arch: object, batch: int, repeats: int, warmup: int
) -> dict:
    """Median train-step seconds: plain supernet, MoLE (frozen base), MoLE (unfrozen)."""
    plain = space.build_supernet().train()
    frozen = _mole(space, spec).train()
    frozen.base.load_state_dict(plain.state_dict())
    frozen.freeze_base(True)
    unfrozen = _mole(space, spec).train()
    unfrozen.base.load_state_dict(plain.state_dict())
    x = torch.randn(batch, *space.input_shape)
    y = torch.randint(0, space.num_classes, (batch,))
    opts = {
        "plain": torch.optim.AdamW(plain.parameters(), lr=1e-4, weight_decay=0.05),
        "mole": torch.optim.AdamW(frozen.mole_parameters(), lr=1e-4, weight_decay=0.05),
        "mole_unfrozen": torch.optim.AdamW(unfrozen.parameters(), lr=1e-4, weight_decay=0.05),
    }
    nets = {"plain": plain, "mole": frozen, "mole_unfrozen": unfrozen}

    def make_step(name: str) -> Callable[[], None]:
        net, opt = nets[name], opts[name]

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x, arch), y).backward()
            opt.step()

        return step

    times = interleaved({name: make_step(name) for name in nets}, repeats, warmup)
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    return {
        "plain_ms": round(med["plain"] * 1e3, 3),
        "mole_ms": round(med["mole"] * 1e3, 3),
        "mole_unfrozen_ms": round(med["mole_unfrozen"] * 1e3, 3),
        "ratio": round(med["mole"] / med["plain"], 4),
        "ratio_of_min": round(best["mole"] / best["plain"], 4),
        "ratio_unfrozen": round(med["mole_unfrozen"] / med["plain"], 4),
        "mole_trainable_params": sum(p.numel() for p in frozen.mole_parameters()),
        "base_params": sum(p.numel() for p in plain.parameters()),
    }


def infer_case(
    space: SearchSpace, spec: MoleSpec, arch: object, batch: int, repeats: int, warmup: int
) -> dict:
    """Median no-grad forward seconds of the merged vs the plain extracted timm model."""
    mole = _mole(space, spec).eval()
    merged = mole.extract(arch).eval()
    plain = mole.base.extract(arch).eval()
    x = torch.randn(batch, *space.input_shape)
    with torch.no_grad():
        diff = (mole(x, arch) - merged(x)).abs().max().item()
    assert diff <= 1e-5, f"MoLE supernet and merged model disagree by {diff}"

    def run(model: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                model(x)

        return step

    times = interleaved({"merged": run(merged), "plain": run(plain)}, repeats, warmup)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "merged_ms": round(med["merged"] * 1e3, 3),
        "plain_ms": round(med["plain"] * 1e3, 3),
        "ratio": round(med["merged"] / med["plain"], 4),
        "ratio_of_min": round(min(times["merged"]) / min(times["plain"]), 4),
        "max_abs_diff_supernet_vs_merged": diff,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| subnet | params | plain step ms | MoLE step ms | ratio | min ratio | "
        "unfrozen ratio | merged infer ms | plain infer ms | infer ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t, i = r["train"], r["infer"]
        lines.append(
            f"| {r['subnet']} | {r['params'] / 1e6:.3f}M | {t['plain_ms']:.1f} | "
            f"{t['mole_ms']:.1f} | {t['ratio']:.3f} | {t['ratio_of_min']:.3f} | "
            f"{t['ratio_unfrozen']:.3f} | {i['merged_ms']:.2f} | {i['plain_ms']:.2f} | "
            f"{i['ratio']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--preset", default="vit-28")
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--experts", type=int, default=MoleSpec.experts)
    parser.add_argument("--rank", type=int, default=MoleSpec.rank)
    parser.add_argument("--per-layer-type", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    repeats, warmup = (5, 1) if args.quick else (21, 3)
    infer_repeats = repeats * 3

    space = build_space("vit", args.preset, overrides={"patch_size": args.patch_size})
    spec = MoleSpec(experts=args.experts, rank=args.rank, router_per_layer_type=args.per_layer_type)
    named = {"smallest": space.smallest(), "middle": middle_arch(space), "largest": space.largest()}
    rows = []
    for label, arch in named.items():
        cost = space.cost(arch)
        row = {
            "subnet": label,
            "arch_id": arch_id(arch),
            "arch": json.loads(space.to_json(arch)),
            "params": cost["params"],
            "macs": cost["flops"],
            "train": train_case(space, spec, arch, args.batch, repeats, warmup),
            "infer": infer_case(space, spec, arch, args.batch, infer_repeats, warmup),
        }
        rows.append(row)
        print(
            f"{label:8s} train ratio {row['train']['ratio']:.3f} "
            f"(unfrozen {row['train']['ratio_unfrozen']:.3f}), "
            f"infer ratio {row['infer']['ratio']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    result = {
        "benchmark": "mole_overhead",
        "what": "MoLE train step (frozen base, AdamW on experts+router) / plain supernet step "
        "(AdamW on all); merged / plain extracted model inference",
        "goal_train_ratio": GOAL_TRAIN,
        "goal_infer_ratio": list(GOAL_INFER),
        "quick": args.quick,
        "preset": args.preset,
        "patch_size": args.patch_size,
        "batch": args.batch,
        "mole": {
            "experts": spec.experts,
            "rank": spec.rank,
            "alpha": spec.alpha,
            "targets": list(spec.targets),
            "router_hidden": spec.router_hidden,
            "router_per_layer_type": spec.router_per_layer_type,
        },
        "threads": args.threads,
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "timm": timm.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
