"""TopK sparse autoencoders: a fast trainer, streaming evaluation, sae-lens interop.

One module per job:

| module | what |
| --- | --- |
| :mod:`geowall.sae.model` | ``TopKSAE`` (Gao et al. 2024; sparsify's layout), its config and outputs |
| :mod:`geowall.sae.train` | ``TrainConfig`` (every training setting), ``TopKTrainer``, ``train_sae``, ``train_grid`` |
| :mod:`geowall.sae.group` | ``train_group``: a layer's SAEs trained together (one encoder matmul, |
|                          | hand-written sparse gradients), learning curves, plateau statistic |
| :mod:`geowall.sae.evaluate` | ``evaluate``: fvu, mse, l0, dead fraction on held-out tokens (ours or sae-lens SAEs) |
| :mod:`geowall.sae.disk` | ``save_sae`` / ``load_sae`` in sae-lens's on-disk format |
| :mod:`geowall.sae.grid` | the metrics table, ``MetricsTable`` (resumable rows), ``run_grid``, width checks, |
|                         | the budget check's comparison (``budget_change``, ``budget_summary``) |
| :mod:`geowall.sae.data` | checked activation tensors and streaming moments |
| :mod:`geowall.sae.sparse_ops` | the sparse autograd ops (``sparse_decode``, ``SparseEncode``, ``scatter_rows``) |

The sparse autograd ops (sparse decode, sparse encoder backward, the sorted gradient
scatter) are in :mod:`geowall.sae.sparse_ops`. Everything public is importable from ``geowall.sae``.
"""

from geowall.sae.disk import load_sae, save_sae
from geowall.sae.evaluate import METRICS, evaluate
from geowall.sae.grid import (
    BUDGET_COLUMNS,
    CURVE_COLUMNS,
    METRIC_COLUMNS,
    MetricsTable,
    append_metrics,
    budget_change,
    budget_summary,
    check_width_trend,
    curves_path,
    read_curves,
    read_metrics,
    run_grid,
    sae_folder,
    width_trend,
)
from geowall.sae.group import GroupTrainer, plateau_change, train_group
from geowall.sae.model import DENSE_ENV, EncoderOutput, ForwardOutput, TopKConfig, TopKSAE, TrainedSAE
from geowall.sae.train import TopKTrainer, TrainConfig, default_lr, derive_seed, train_grid, train_sae

__all__ = [
    "BUDGET_COLUMNS",
    "CURVE_COLUMNS",
    "GroupTrainer",
    "plateau_change",
    "train_group",
    "curves_path",
    "read_curves",
    "DENSE_ENV",
    "METRICS",
    "METRIC_COLUMNS",
    "EncoderOutput",
    "ForwardOutput",
    "MetricsTable",
    "TopKConfig",
    "TopKSAE",
    "TopKTrainer",
    "TrainConfig",
    "TrainedSAE",
    "append_metrics",
    "budget_change",
    "budget_summary",
    "check_width_trend",
    "default_lr",
    "derive_seed",
    "evaluate",
    "load_sae",
    "read_metrics",
    "run_grid",
    "sae_folder",
    "save_sae",
    "train_grid",
    "train_sae",
    "width_trend",
]
