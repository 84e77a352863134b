#!/usr/bin/env bash
# Alternate before (cbf4e49, the branch point) and after (branch ops) trees: gpunet bench --device cpu on a row subset.
set -u
OUT=/tmp/opswork/bench
mkdir -p $OUT
ONLY='*fwd+bwd,*train step,maxpool*'
for i in 1 2 3; do
  for side in before after; do
    tree=/tmp/ops-$side
    echo "== $side run $i $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/log.txt
    (cd $tree && PYTHONPATH=$tree env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /work/venv/bin/python -c "from gpunet.cli.main import main; main()" bench --device cpu --reps 5 --only "$ONLY" --out $OUT/$side$i > $OUT/$side$i.txt 2>&1)
    echo "   rc $? $(date -u +%H:%M:%S)" >> $OUT/log.txt
  done
done
