#!/usr/bin/env bash
# Measures sn_jax on this machine's accelerator with `sn-jax bench --suite accelerator` and
# records the result in benchmarks/README.md (the section between <!-- bench:accelerator -->
# and <!-- /bench:accelerator -->) and benchmarks/results/accelerator_<backend>.json.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash benchmarks/accelerator.sh [--dry-run] [--cpu] [--no-install] [--venv DIR]

On a fresh GPU machine: creates a virtual environment, installs sn_jax with its `train` extra
and, where nvidia-smi finds a GPU, jax[cuda12] at the installed jax's version; prints the GPU
and jax.devices(); runs `sn-jax bench --suite accelerator` (ELU-Net and the mini AlexNet,
batches 128 and 1024, float32 and bfloat16); writes benchmarks/results/accelerator_<backend>.json
and the accelerator section of benchmarks/README.md.

Options:
  --dry-run      the tiny preset (--tiny: seconds on a CPU); prints the section, writes nothing
  --cpu          no CUDA install, and JAX on the CPU even where a GPU is present
  --no-install   no virtual environment: run with the current python3 (sn_jax installed)
  --venv DIR     the virtual environment to create or reuse (default: .venv)
  -h, --help     this help

Environment: PYTHON (default python3) creates the environment, or runs with --no-install;
JAX_CUDA_EXTRA (default cuda12) is the jax extra installed for the GPU.
EOF
}

die() {
  echo "accelerator.sh: error: $*" >&2
  exit 2
}

dry_run=0
cpu=0
install=1
venv=.venv
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --cpu) cpu=1 ;;
    --no-install) install=0 ;;
    --venv)
      (($# > 1)) || die "--venv needs a directory."
      venv=$2
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown option '$1'; \`bash benchmarks/accelerator.sh --help\` lists them." ;;
  esac
  shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "no $python on PATH (set PYTHON)."

gpu=0
if ((!cpu)) && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
fi

if ((install)); then
  echo "== Installing sn_jax into $venv"
  "$python" -m venv "$venv"
  python=$venv/bin/python
  "$python" -m pip install --quiet --upgrade pip
  "$python" -m pip install --quiet -e '.[train]'
  if ((gpu)); then
    jax_version=$("$python" -c 'import jax; print(jax.__version__)')
    extra=${JAX_CUDA_EXTRA:-cuda12}
    echo "== Installing jax[$extra]==$jax_version"
    "$python" -m pip install --quiet "jax[$extra]==$jax_version"
  fi
fi

if ((cpu)); then
  export JAX_PLATFORMS=cpu
fi
if ((gpu)); then
  echo "== nvidia-smi"
  nvidia-smi
elif ((!cpu)); then
  echo "== No GPU found (no nvidia-smi, or it lists none): measuring on what jax finds."
fi
echo "== jax.devices()"
"$python" -c 'import jax; print(jax.devices())'
backend=$("$python" -c 'import jax; print(jax.default_backend())')
if ((gpu)) && [[ $backend != gpu ]]; then
  die "nvidia-smi finds a GPU but jax's backend is $backend: check the jax[cuda] install."
fi

if ((dry_run)); then
  results=$(mktemp -d)
  trap 'rm -rf "$results"' EXIT
  tiny=(--tiny)
else
  results=benchmarks/results
  mkdir -p "$results"
  tiny=()
fi
json=$results/accelerator_$backend.json
section=$results/accelerator_$backend.md

echo "== sn-jax bench --suite accelerator ${tiny[*]}"
"$python" -m sn_jax bench --suite accelerator "${tiny[@]}" --out "$json" --markdown "$section"

if ((dry_run)); then
  echo "== The section (dry run: benchmarks/README.md is not changed)"
  cat "$section"
else
  "$python" - "$section" <<'EOF'
import pathlib
import sys

from sn_jax.bench import write_section

write_section("benchmarks/README.md", "accelerator", pathlib.Path(sys.argv[1]).read_text())
EOF
  rm "$section"
  echo "== Written: $json and the accelerator section of benchmarks/README.md."
fi
