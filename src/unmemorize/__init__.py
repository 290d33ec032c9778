"""unmemorize: find and remove verbatim memorization by editing weights in the K-FAC eigenbasis.

The pipeline, one module per stage::

    corpus.py        documents and token rows from .txt, .jsonl[.gz|.zst], parquet, datasets folders
    data.py          token windows under a budget, padded batches
    targets.py       which linear modules to measure and edit (globs, presets)
    curvature/       collect K-FAC factors A, G (torchrun ranks, checkpoints, plans); save/load factor folders
    basis.py         eigendecompose A and G (the curvature eigenbasis)
    decompose.py     ... once, cached beside the factors (basis_cache.py), on the GPU or over ranks
    edit/            select curvature pairs, project W, save the edited model
    evaluate/        local suites, and lm-evaluation-harness (lm_eval_bridge.py)
    spectrum.py      inspect spectra (table, plot)
    paths.py         every command's paths checked before any work; _atomic.py claims and swaps outputs
    cli.py           the ``unmemorize`` command
"""

__version__ = "0.1.0"

from .basis import Eigendecomposition, ModuleBasis, decompose, decompose_factors  # noqa: E402
from .curvature import CollectConfig, KFACFactors, collect_factors, collect_from_files, load_factors, save_factors  # noqa: E402
from .edit import EditConfig, apply_edit, edited, load_plan, save_edited_model, select_pairs, uniform_plan  # noqa: E402
from .errors import UnmemorizeError  # noqa: E402
from .models import load_model  # noqa: E402
from .targets import resolve_targets  # noqa: E402

__all__ = [
    "CollectConfig", "EditConfig", "Eigendecomposition", "KFACFactors", "ModuleBasis", "UnmemorizeError", "__version__",
    "apply_edit", "collect_factors", "collect_from_files", "decompose", "decompose_factors", "edited", "load_factors",
    "load_model", "load_plan", "resolve_targets", "save_edited_model", "save_factors", "select_pairs", "uniform_plan",
]
