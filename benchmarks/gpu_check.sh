#!/usr/bin/env bash
# One short device-machine session: what the card and its software are, the ResNet-18 GPU benchmark
# (benchmarks/gpu_resnet18.py), then the whole test suite with a CUDA card visible (the bf16 test runs instead of
# skipping, and `--device auto` resolves to the card). Prepared so that one call does it all:
#
#   bash benchmarks/gpu_check.sh            # writes env.txt, gpu_resnet18.txt, pytest.txt under $OUT
#
# Missing Python packages (the device image has no pydantic or jsonschema) travel as wheels in .whl/ (see
# /work/.library/device/README.md); each step has its own time limit so that one slow step cannot eat the lease.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check -e . || exit 1
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, torchvision, peft, transformers, pydantic, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, 'cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0), '| bf16', torch.cuda.is_bf16_supported(), '| torchvision', torchvision.__version__, '| peft', peft.__version__, '| transformers', transformers.__version__, '| pydantic', pydantic.__version__)"
    nproc
} 2>&1 | tee "$OUT/env.txt"
timeout "${BENCH_S:-300}" python3 benchmarks/gpu_resnet18.py --work /tmp/gpu_resnet18 ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu_resnet18.txt"
echo "benchmark exit ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_resnet18.txt"
timeout "${TESTS_S:-200}" python3 -m pytest -q -n "${WORKERS:-14}" -p no:cacheprovider -rs tests > "$OUT/pytest.txt" 2>&1
echo "pytest exit $?" >> "$OUT/pytest.txt"
tail -40 "$OUT/pytest.txt"
