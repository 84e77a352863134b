#!/usr/bin/env bash
# Alternate before (cbf4e49) and after (8621124 tree) : the full gpunet bench --device cpu, --reps 10.
set -u
OUT=/tmp/opswork/benchfull
mkdir -p $OUT
for i in 1 2 3; do
  for side in before after; do
    tree=/tmp/ops-$side
    echo "== $side run $i $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/log.txt
    (cd $tree && PYTHONPATH=$tree env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /work/venv/bin/python -c "from gpunet.cli.main import main; main()" bench --device cpu --reps 10 --out $OUT/$side$i > $OUT/$side$i.txt 2>&1)
    echo "   rc $? $(date -u +%H:%M:%S)" >> $OUT/log.txt
  done
done
