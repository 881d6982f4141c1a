#!/usr/bin/env bash
# The prepared GPU run of the performance work (issue 7), in priority order, each phase under
# its own time limit so that one slow phase cannot eat the others' device time.
#
#   OUT=DIR bash experiments/bench/gpu_run.sh        # from the repository root, on a CUDA machine
#   DEVICE=cpu SCALE=small OUT=DIR bash experiments/bench/gpu_run.sh   # rehearsal of the plumbing
#   PHASES=compile COMPILE_LIMIT=480 OUT=DIR bash experiments/bench/gpu_run.sh   # one phase, longer
#
# Phases, in the order they run: gpu_tests (pytest -m gpu), graphs (bench fewshot --cuda-graph,
# both settings: the fewshot phase's tables plus the core under one captured CUDA graph per
# meta-gradient; skipped, with a line saying so, when DEVICE is not cuda*), graph_memory
# (python -m experiments.bench.graph_memory --setting all: the eager loop's peak against a graph's,
# cuBLAS workspaces counted; CUDA only, as graphs), precision (python -m
# experiments.fewshot.precision_study: MAML on Omniglot 5-way 1-shot trained under float32, tf32
# and bf16 with --cuda-graph, test accuracy compared; PRECISION_ITERATIONS meta-iterations, data
# from DATA_ROOT, default .gpu-data when it holds omniglot/, else ../shared/data; on a CPU float32
# and bf16 at toy sizes), fewshot (bench fewshot, both settings), memory (bench memory,
# mini-ImageNet), compile (bench fewshot --compile with and without CUDA graphs, mini-ImageNet).
# PHASES selects a subset; they still run in this order.
# The phase limits add up to 920 s (90 + 200 + 90 + 150 + 150 + 60 + 180), more than the device
# tool's 600 s for one command: the seven do not fit in one.  Split them, e.g.
# PHASES=gpu_tests,graphs,graph_memory,precision (530 s) then PHASES=fewshot,memory,compile (390 s),
# each leaving room for the install and the archive; or drop fewshot, whose tables the graphs
# phase also makes.
#
# $OUT receives two files, because the device tool brings back at most 8 (README.md of the
# tool): summary.md (every phase's exit status and time, then every table) and
# gpu-results.tar.gz (env.txt, every phase's log, every table and JSON), both rewritten after
# each phase so that a run stopped at its limit still returns what it finished.  The working
# files are in $WORK (default: a fresh temporary folder).
#
# The bench's 'higher' and 'parallel-metalearn' references are used when importable; on a
# machine without the package index, put their wheels in .bench-wheels/
# (pip download --no-deps -d .bench-wheels higher parallel-metalearn) and carry that folder:
# they are installed from there without network.
set -uo pipefail
OUT=${OUT:-gpu-results}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-paper}
REPEATS=${REPEATS:-3}
PHASES=${PHASES:-gpu_tests,graphs,graph_memory,precision,fewshot,memory,compile}   # which phases, in this order of priority
COMPILE_LIMIT=${COMPILE_LIMIT:-180}   # inductor compiling the double backward took > 180 s on an H200
GPU_TESTS_LIMIT=${GPU_TESTS_LIMIT:-90}   # the non-compile GPU tests took 32 s there, the compile ones more
PRECISION_LIMIT=${PRECISION_LIMIT:-150}   # float32, tf32, bf16 MAML runs side by side, then 600 test episodes each
PRECISION_ITERATIONS=${PRECISION_ITERATIONS:-1000}
DATA_ROOT=${DATA_ROOT:-$( [ -d .gpu-data/omniglot ] && echo .gpu-data || echo ../shared/data )}   # the device gets no ../shared: carry .gpu-data
GRAPH_MEMORY_LIMIT=${GRAPH_MEMORY_LIMIT:-90}   # three arrangements per setting from no cuBLAS workspace: 22 s on an H200
GRAPHS_LIMIT=${GRAPHS_LIMIT:-200}   # fewshot's work plus captures and graphed rounds: 76-79 s on an H200
PY=${PYTHON:-$(command -v python3 || command -v python)}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
shopt -s nullglob
WHEELS=${WHEELS:-.bench-wheels}
wheels=("$WHEELS"/*.whl "$WHEELS"/*.tar.gz)
if [ ${#wheels[@]} -gt 0 ]; then
    "$PY" -m pip install --no-deps --no-index --quiet "${wheels[@]}" 2>&1 | tail -2
fi
{ git rev-parse HEAD 2>/dev/null || echo "commit unknown"; git status --short 2>/dev/null | head -5
  nvidia-smi -L 2>/dev/null; "$PY" -c \
  "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$WORK/env.txt" 2>&1
cat "$WORK/env.txt"
{ echo "# gpu_run.sh: device $DEVICE, scale $SCALE, repeats $REPEATS"; echo; sed 's/^/    /' "$WORK/env.txt"; echo; } \
    > "$WORK/phases.md"

pack() {  # summary.md and the archive into $OUT, from what $WORK holds now
    { cat "$WORK/phases.md"
      for f in "$WORK"/*/*/*.md "$WORK"/*/*.md; do echo; echo "## ${f#"$WORK"/}"; echo; cat "$f"; done
    } > "$OUT/summary.md"
    tar czf "$OUT/gpu-results.tar.gz" -C "$WORK" .
}
selected() {  # selected NAME: is NAME one of $PHASES
    case ",$PHASES," in *",$1,"*) return 0 ;; esac
    return 1
}
phase() {  # phase SECONDS NAME COMMAND...
    local limit=$1 name=$2; shift 2
    selected "$name" || return 0
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s"; tail -25 "$WORK/$name.log"
    echo "- $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" >> "$WORK/phases.md"
    pack
}
skip() {  # skip NAME REASON: a selected phase that cannot run on this device, said so in the summary
    selected "$1" || return 0
    echo "== $1: skipped, $2"
    echo "- $1: skipped, $2" >> "$WORK/phases.md"
    pack
}
phase "$GPU_TESTS_LIMIT" gpu_tests "$PY" -m pytest -q -m gpu tests/test_gpu.py
case "$DEVICE" in
    cuda*) phase "$GRAPHS_LIMIT" graphs "$PY" -m experiments.cli bench fewshot --setting all --device "$DEVICE" \
               --scale "$SCALE" --repeats "$REPEATS" --cuda-graph --out "$WORK/graphs" ;;
    *) skip graphs "bench fewshot --cuda-graph needs a CUDA device, DEVICE is $DEVICE" ;;
esac
case "$DEVICE" in
    cuda*) phase "$GRAPH_MEMORY_LIMIT" graph_memory "$PY" -m experiments.bench.graph_memory --setting all \
               --out "$WORK/graph_memory" ;;
    *) skip graph_memory "python -m experiments.bench.graph_memory measures CUDA memory, DEVICE is $DEVICE" ;;
esac
case "$DEVICE" in   # tf32 and --cuda-graph are CUDA modes: off CUDA the study compares float32 and bf16
    cuda*) precision_args=(--cuda-graph) ;;
    *) precision_args=(--hidden 4 --queries 2 --meta-batch 2 --eval-episodes 4) ;;
esac
phase "$PRECISION_LIMIT" precision "$PY" -m experiments.fewshot.precision_study --device "$DEVICE" \
    --iterations "$PRECISION_ITERATIONS" --data-root "$DATA_ROOT" "${precision_args[@]}" --out "$WORK/precision"
phase 150 fewshot "$PY" -m experiments.cli bench fewshot --setting all --device "$DEVICE" --scale "$SCALE" \
    --repeats "$REPEATS" --out "$WORK/fewshot"
phase 60 memory "$PY" -m experiments.cli bench memory --setting miniimagenet-5w1s --device "$DEVICE" \
    --scale "$SCALE" --steps 1,5,10,20 --out "$WORK/memory"
phase "$COMPILE_LIMIT" compile "$PY" -m experiments.cli bench fewshot --setting miniimagenet-5w1s --device "$DEVICE" \
    --scale "$SCALE" --repeats "$REPEATS" --compile --compile-mode default,reduce-overhead \
    --out "$WORK/compile"
