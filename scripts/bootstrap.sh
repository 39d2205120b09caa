#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install flowkit into it.
#
# CPU machines: torch is pinned to 2.13.0 first and kept pinned through a constraints file, so
# nothing can pull the CUDA build (several GB of nvidia-* packages). For a GPU install see
# docs/install.md. Idempotent: a stamp keyed on pyproject.toml skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${FLOWKIT_TORCH:-torch==2.13.0}
EXTRAS=${FLOWKIT_EXTRAS:-coco,nflows,logging,test,bench}

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.flowkit-stamp
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16) $TORCH_SPEC $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[bootstrap] installing $TORCH_SPEC"
if ! .venv/bin/python -m pip install -q "$TORCH_SPEC" numpy > .venv/pip-install.log 2>&1; then
  grep -v "is ignored: it is neither" .venv/pip-install.log >&2
  echo "[bootstrap] error: could not install $TORCH_SPEC (log above, also in .venv/pip-install.log)" >&2
  exit 1
fi
constraints=$(mktemp)
.venv/bin/python -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
echo "[bootstrap] installing flowkit[$EXTRAS] (constrained to $(cat "$constraints"))"
if ! .venv/bin/python -m pip install -q -c "$constraints" -e ".[$EXTRAS]" > .venv/pip-install.log 2>&1; then
  grep -v "is ignored: it is neither" .venv/pip-install.log >&2
  echo "[bootstrap] error: pip install failed (log above, also in .venv/pip-install.log)" >&2
  exit 1
fi
rm -f "$constraints"
# Fail loudly rather than carry gigabytes of CUDA wheels on a CPU machine.
if [ "$TORCH_SPEC" = "torch==2.13.0" ] && .venv/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "[bootstrap] error: CUDA packages were installed on a CPU set-up; remove .venv and report this." >&2
  exit 1
fi
.venv/bin/python -c "import flowkit, torch; print(f'[bootstrap] flowkit {flowkit.__version__} with torch {torch.__version__}')"
echo "$want" > "$stamp"
