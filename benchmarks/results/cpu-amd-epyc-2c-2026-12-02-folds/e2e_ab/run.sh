#!/bin/bash
# The training-step rows of two checkouts, alternated in separate processes (old, new, old, new, ...),
# so that both see the same hours of a shared machine. Made for this folder with
#   git worktree add /tmp/wt_old 356222e
#   OLD=/tmp/wt_old NEW=/work/main PY=/work/main/.venv/bin/python OUT=/tmp/e2e bash run.sh
OLD=${OLD:?checkout of the old commit} NEW=${NEW:?checkout of the new commit} PY=${PY:-python3} OUT=${OUT:-/tmp/e2e}
mkdir -p "$OUT"
cd /tmp
for i in 1 2 3 4; do
  for v in old new; do
    if [ $v = old ]; then P=$OLD; else P=$NEW; fi
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=$P "$PY" -c "import sys; from gpunet.cli.main import main; sys.exit(main())" \
      bench --device cpu --only e2e --reps 20 --out "$OUT/$v$i" > "$OUT/$v$i.log" 2>&1
  done
done
