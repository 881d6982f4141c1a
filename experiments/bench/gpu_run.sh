#!/usr/bin/env bash
# The prepared GPU run of the performance work (issue 7), in priority order, each phase under
# its own time limit so that one slow phase cannot eat the others' device time.
#
#   OUT=DIR bash experiments/bench/gpu_run.sh        # from the repository root, on a CUDA machine
#   DEVICE=cpu SCALE=small OUT=DIR bash experiments/bench/gpu_run.sh   # rehearsal of the plumbing
#
# Writes into $OUT: gpu_tests.log, fewshot/ (bench fewshot, both settings), memory/ (bench memory),
# compile/ (bench fewshot --compile, with and without CUDA graphs, mini-ImageNet), env.txt.  The bench's 'higher' and
# 'parallel-metalearn' references are used when importable; on a machine without the package
# index, put their wheels in .bench-wheels/ (pip download --no-deps -d .bench-wheels higher
# parallel-metalearn) and carry that folder: they are installed from there without network.
set -uo pipefail
OUT=${OUT:-gpu-results}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-paper}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
shopt -s nullglob
wheels=(.bench-wheels/*.whl .bench-wheels/*.tar.gz)
if [ ${#wheels[@]} -gt 0 ]; then
    pip install --no-deps --no-index --quiet "${wheels[@]}" 2>&1 | tail -2
fi
{ git rev-parse HEAD 2>/dev/null || echo "commit unknown"; nvidia-smi -L 2>/dev/null; python -c \
  "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
phase() {  # phase SECONDS NAME COMMAND...
    local limit=$1 name=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s"; tail -25 "$OUT/$name.log"
}
phase 150 gpu_tests python -m pytest -q -m gpu tests/test_gpu.py
phase 200 fewshot python -m experiments.cli bench fewshot --setting all --device "$DEVICE" --scale "$SCALE" \
    --repeats 5 --out "$OUT/fewshot"
phase 120 memory python -m experiments.cli bench memory --setting miniimagenet-5w1s --device "$DEVICE" \
    --scale "$SCALE" --steps 1,5,10,20 --out "$OUT/memory"
phase 300 compile python -m experiments.cli bench fewshot --setting miniimagenet-5w1s --device "$DEVICE" \
    --scale "$SCALE" --repeats 5 --compile --compile-mode default,reduce-overhead --out "$OUT/compile"
