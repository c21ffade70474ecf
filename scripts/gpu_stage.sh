#!/usr/bin/env bash
# The GPU acceptance's two staging calls (scripts/gpu_prep.sh prints all the calls): each brings one half of
# the Inception trunk into $CEM_STAGE (default /tmp/cem-stage), where it waits for the acceptance call.
#   scripts/gpu_stage.sh 1 OUT   # half 1, and the quick benchmark (bench.gpu --quick; needs only pydantic;
#                                # CEM_BENCH_SECONDS=0 skips it: the acceptance call then runs it itself)
#   scripts/gpu_stage.sh 2 OUT   # half 2, and the joined trunk's sha1 against pipeline/inception.py's
set -uo pipefail
part=${1:?usage: scripts/gpu_stage.sh 1|2 OUT}; OUT=${2:?usage: scripts/gpu_stage.sh 1|2 OUT}
cd "$(dirname "$0")/.."
STAGE=${CEM_STAGE:-/tmp/cem-stage}; SITE=${CEM_SITE:-/tmp/cem-site}
mkdir -p "$STAGE" "$OUT"
cp .gpu/inception-"$part"/inception.part-* "$STAGE/" || { echo "no .gpu/inception-$part: run scripts/gpu_prep.sh"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "$part" = 1 ] && [ "${CEM_BENCH_SECONDS:-150}" != 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .gpu/bench-whl/*.whl || exit 1
  PYTHONPATH="$PWD:$SITE" PYTHONUNBUFFERED=1 timeout "${CEM_BENCH_SECONDS:-150}" \
    python3 -m bench.gpu --quick --out "$STAGE/bench.json"
  rc=$?
  [ -f "$STAGE/bench.json" ] && cp "$STAGE/bench.json" "$OUT/"
  exit $rc
fi
want=$(sed -n 's/^TRUNK_SHA1 = "\([0-9a-f]*\)"/\1/p' pipeline/inception.py)
got=$(cat "$STAGE"/inception.part-* | sha1sum | cut -d' ' -f1)
ls -l "$STAGE"
[ "$got" = "$want" ] && echo "trunk sha1 ok ($got)" || { echo "trunk sha1 $got is not $want"; exit 1; }
