"""unmemorize: find and remove verbatim memorization by editing weights in the K-FAC eigenbasis.

The pipeline, one folder per stage::

    data -> curvature/ -> basis/ -> edit/ -> evaluate/ -> analysis/

    curvature/   collect K-FAC factors A = E[a a^T], G = E[g g^T] per module (torchrun ranks,
                 checkpoints, dry-run plans); save and load factor folders
    basis/       eigendecompose A and G (the curvature eigenbasis); cache it beside the factors;
                 the spectrum view
    edit/        select curvature pairs (exact rho selection), project W, save the edited model;
                 the SVD and random controls; the label-free plan search
    evaluate/    recitation, perplexity, task suites, stress test, nDCG, attacks; lm-evaluation-harness
    analysis/    how memorized, task and clean inputs load on curvature bands (paper Figures 2 and 4)

Beside the pipeline: ``baselines/`` (BalancedSubnet), ``testbed/`` (a generated world and a model
trained on it: ``unmemorize demo`` and ``compare``), ``vision/`` (noisy labels in a ViT) and
``commands/`` (one module per ``unmemorize`` command; ``cli.py`` is the entry point).

Cross-cutting modules at the root: ``corpus.py`` and ``data.py`` (documents, token windows,
batches), ``models.py`` (loading, dtypes, devices), ``targets.py`` (which modules, presets),
``errors.py``, ``paths.py`` and ``_atomic.py`` (inputs checked, outputs claimed and swapped in
atomically), ``jsonio.py`` (strict JSON), ``tiny.py`` (tiny models for tests), ``_timing.py``,
``_version.py``.
"""

from ._version import __version__
from .basis import Eigendecomposition, ModuleBasis, decompose, decompose_factors
from .curvature import CollectConfig, KFACFactors, collect_factors, collect_from_files, load_factors, save_factors
from .edit import EditConfig, apply_edit, edited, load_plan, save_edited_model, select_pairs, uniform_plan
from .errors import UnmemorizeError
from .models import load_model
from .targets import resolve_targets

__all__ = [
    "CollectConfig", "EditConfig", "Eigendecomposition", "KFACFactors", "ModuleBasis", "UnmemorizeError", "__version__",
    "apply_edit", "collect_factors", "collect_from_files", "decompose", "decompose_factors", "edited", "load_factors",
    "load_model", "load_plan", "resolve_targets", "save_edited_model", "save_factors", "select_pairs", "uniform_plan",
]
