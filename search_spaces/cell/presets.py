"""Named cell spaces: configuration as data, one frozen :class:`CellSpaceConfig` per preset.

* ``nas-bench-201``: the benchmark's own skeleton (AutoDL ``TinyNetwork``): 32x32x3, C=16,
  N=5 cells per stage, 10 classes. Its cells cost 73,306 .. 1,531,546 parameters and
  7.78M .. 220.1M MACs: NB201's published range (``cost.py``).
* ``nb201-28``: the same skeleton for 28x28x1 (Fashion-MNIST) at C=8, N=2, sized for 2 CPU
  cores: cells cost 18,594 .. 165,090 parameters and 1.46M .. 17.7M MACs.
* ``darts``: DARTS's CIFAR search network: 32x32x3, C=16, 8 cells (reductions at cells 2 and
  5), stem multiplier 3, 10 classes. With ``layers: 20, channels: 36`` it is DARTS's final
  CIFAR network (DARTS-V2: 3,349,342 parameters, as DARTS's ``train.py`` logs).
* ``darts-28``: a small DARTS for 28x28x1: C=8, 5 cells (reductions at cells 1 and 3).

All use the IT selector (``it_dim`` 32, 1 transformer layer, 2 heads) unless overridden with
``selector: darts``.

Measured on 2 CPU threads (torch 2.14, an idle 2-core VM; forward + backward + SGD step at
batch 64 on random inputs, no data loading; noisy, +-15% between runs):

============== ======================= ===================== ==============================
preset          mixed step (IT)         discrete step          one mixed epoch of 10k images
============== ======================= ===================== ==============================
nb201-28        0.40-0.46 s             0.07 s (0.12 largest)  about 62-73 s
nas-bench-201   2.5 s                   0.37 s (0.68 largest)  about 6.5 min
darts-28        3.6 s                   0.32 s (0.60 largest)  about 9.5 min
darts           12.8 s                  1.2 s (2.2 largest)    about 33 min
============== ======================= ===================== ==============================

The DARTS selector instead of IT saves about 20% of a mixed NB201 step. The DARTS presets are
slow on CPU because of the many depthwise convolutions (their backward dominates); they are
meant for GPUs. Bi-level training adds one selector step per weight step.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from search_spaces.cell.config import CellSpaceConfig

_CIFAR = {"img_size": 32, "in_chans": 3, "num_classes": 10}
_FMNIST = {"img_size": 28, "in_chans": 1, "num_classes": 10}

PRESETS: Mapping[str, CellSpaceConfig] = MappingProxyType(
    {
        "nas-bench-201": CellSpaceConfig(kind="nb201", **_CIFAR, channels=16, cells_per_stage=5),
        "nb201-28": CellSpaceConfig(kind="nb201", **_FMNIST, channels=8, cells_per_stage=2),
        "darts": CellSpaceConfig(kind="darts", **_CIFAR, channels=16, layers=8),
        "darts-28": CellSpaceConfig(kind="darts", **_FMNIST, channels=8, layers=5),
    }
)

DEFAULT_PRESET = "nb201-28"
