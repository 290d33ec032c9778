#!/usr/bin/env bash
# Create .venv and install unmemorize with its test tools. Safe to re-run: it only installs
# when pyproject.toml or this script changed since the last successful install.
#
# Torch: on a machine without an NVIDIA driver we ask for exactly torch==2.13.0, which these
# machines serve as a CPU wheel from local disk; any other spec may pull a multi-GB CUDA build.
# On a GPU machine any torch>=2.3 already installed in the venv is kept.
#
# `scripts/setup-venv.sh core` (what `make demo` needs) installs the package and its dependencies only;
# with no argument (`make test`, CI) everything below as well. Each level has its own stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LEVEL=${1:-all}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
hash=$(cat pyproject.toml scripts/setup-venv.sh | sha256sum | cut -c1-16)
stamp=".venv/.unmemorize-installed-$hash"
core_stamp=".venv/.unmemorize-core-$hash"
[ -f "$stamp" ] && exit 0
[ "$LEVEL" = core ] && [ -f "$core_stamp" ] && exit 0
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install "torch>=2.3"; else pip install torch==2.13.0; fi
fi
TORCH=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
# Pin the installed torch so no dependency can swap it for another build.
pip install "torch==$TORCH" -e .
if [ "$LEVEL" = core ]; then
  rm -f .venv/.unmemorize-core-*
  touch "$core_stamp"
  exit 0
fi
# Test tools. curvlinops is the independent K-FAC oracle; its optional dependency backpack
# pulls torchvision (and with it a CUDA torch), so it is installed without dependencies and
# given the ones its K-FAC code imports.
pip install "torch==$TORCH" "pytest>=7" scipy einops opt-einsum linear_operator einconv rapidfuzz
pip install --no-deps "curvlinops-for-pytorch>=3.0"
# The optional extras (lm-evaluation-harness; parquet/datasets/zstd corpora; accelerate's device map; the
# documentation site) so that their tests run rather than skip, and 'build' for the wheel test; torch pinned
# again so that it can never be swapped.
pip install "torch==$TORCH" -e ".[eval,corpora,scale,docs]" "build>=1" "setuptools>=68"
rm -f .venv/.unmemorize-installed-* .venv/.unmemorize-core-*
touch "$stamp"
