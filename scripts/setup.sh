#!/usr/bin/env bash
# Set up vrcurve in a virtual environment (default .venv; override with VRCURVE_VENV), with the test extras.
#
# PyTorch: a torch that is already importable in that environment is kept as it is, never upgraded. Only
# where none is present is one installed: TORCH_SPEC (default torch==2.13.0, which these machines serve as a
# CPU build; set e.g. TORCH_SPEC='torch==2.5.1' or point pip at a CPU index with PIP_INDEX_URL elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VRCURVE_VENV:-.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
py="$venv/bin/python"
pip_quiet=(-q --disable-pip-version-check)
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "setup: no torch in $venv; installing ${TORCH_SPEC:-torch==2.13.0}" >&2
  "$py" -m pip install "${pip_quiet[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
# --upgrade-strategy only-if-needed (pip's default, made explicit): what is installed and satisfies the
# requirements, torch included, stays as it is.
"$py" -m pip install "${pip_quiet[@]}" --upgrade-strategy only-if-needed -e ".[test]"
echo "setup: vrcurve $("$py" -c 'import vrcurve; print(vrcurve.__version__)') with torch $("$py" -c 'import torch; print(torch.__version__)') in $venv" >&2
