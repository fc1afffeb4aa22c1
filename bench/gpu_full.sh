#!/usr/bin/env bash
# bench/gpu_full.sh [OUT_DIR]: the whole full-size study (profiles/full.yaml) on one bare GPU
# machine, inside one 10-minute command, outputs packed for the trip back.
#
# First, on a machine with a registry: bench/fetch_wheels.sh (writes .whl/, git-ignored). Then on
# the GPU machine, from the repository root, with .whl carried along:
#     bash bench/gpu_full.sh            # OUT_DIR defaults to $OUT
# It installs the wheels into /tmp/site (nothing from a registry), registers the enflens kernel,
# runs notebooks 01 -> 06 with the full profile (01 simulates the dataset on WORKERS = 16 cores),
# packs results/, figures/, the executed notebooks and their logs into at most 8 files of at most
# 16 MiB under OUT_DIR, and prints the headline numbers. The pipeline gets what is left of the
# deadline after the set-up and before the packing; when it runs out, what was made is packed.
#
# Env: ENFLENS_RUN_PROFILE (full; full_check is the CPU rehearsal, bench/gpu_full_check.sh),
#      PYTHON (python3), WHEEL_DIR (.whl), GPU_FULL_DEADLINE_S (585: seconds from the start by
#      which the script has finished), PACK_RESERVE_S (30), REQUIRE_GPU (1 for full, else 0).
set -uo pipefail
T0=$SECONDS
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT_DIR=${1:-${OUT:-}}
if [[ -z "$OUT_DIR" ]]; then echo "usage: bench/gpu_full.sh OUT_DIR (or set OUT)" >&2; exit 2; fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PROFILE=${ENFLENS_RUN_PROFILE:-full}
PY=${PYTHON:-python3}
WHEELS=${WHEEL_DIR:-.whl}
DEADLINE=${GPU_FULL_DEADLINE_S:-585}
PACK_RESERVE=${PACK_RESERVE_S:-30}
if [[ "$PROFILE" == full ]]; then REQUIRE_GPU=${REQUIRE_GPU:-1}; else REQUIRE_GPU=${REQUIRE_GPU:-0}; fi
SITE=/tmp/enflens-site
JUPYTER_PREFIX=/tmp/enflens-jupyter
stamp() { echo "[gpu_full +$((SECONDS - T0)) s] $*"; }

run_study() {
stamp "profile $PROFILE, repository $ROOT, output $OUT_DIR, $(nproc) cores, deadline ${DEADLINE} s"

# --- 1. wheels (no registry on the device machine) ---------------------------------------------
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if (( ${#wheels[@]} == 0 )); then
    echo "error: no wheels in $WHEELS: run bench/fetch_wheels.sh first and carry .whl" >&2; return 1
fi
rm -rf "$SITE"
if ! timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "${wheels[@]}"; then
    echo "error: installing the ${#wheels[@]} wheels of $WHEELS failed" >&2; return 1
fi
export PYTHONPATH="$SITE:$ROOT/lib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
stamp "installed ${#wheels[@]} wheels into $SITE"

# --- 2. the kernel papermill runs the notebooks in, and a check of the imports and the device ----
rm -rf "$JUPYTER_PREFIX"
export JUPYTER_PATH="$JUPYTER_PREFIX/share/jupyter"  # where papermill finds the kernel
timeout 60 "$PY" -m ipykernel install --prefix "$JUPYTER_PREFIX" --name enflens \
    --display-name "Python (enflens)" >/dev/null || { echo "error: kernel install failed" >&2; return 1; }
# compilations made by one notebook's kernel are reused by the next ones (06 retrains 05's models)
export JAX_COMPILATION_CACHE_DIR=/tmp/enflens-jax-cache
rm -rf "$JAX_COMPILATION_CACHE_DIR"  # a run starts from no compilations, as on a bare machine
timeout 120 "$PY" - "$REQUIRE_GPU" <<'EOF' || return 1
import sys
import jax, flax, lenstronomy, papermill, jupytext, astropy  # noqa: F401  (all must import)
import enflens.study.stages  # noqa: F401
devices = jax.devices()
print(f"python {sys.version.split()[0]}, jax {jax.__version__}, flax {flax.__version__}, "
      f"lenstronomy {lenstronomy.__version__}, papermill {papermill.__version__}, devices {devices}")
if sys.argv[1] == "1" and devices[0].platform != "gpu":
    sys.exit("error: no GPU for the full profile (it would take hours on the CPU); stopping")
EOF
WORKERS=$("$PY" -c "from enflens.study import pipeline as p; print(p.load_profile('$PROFILE')['common'].get('WORKERS', 2))")
stamp "checks done; notebook 01 simulates with WORKERS=$WORKERS on $(nproc) cores"

# --- 3. the study ---------------------------------------------------------------------------------
left=$((DEADLINE - (SECONDS - T0) - PACK_RESERVE))
stamp "pipeline: notebooks 01 -> 06 with profile $PROFILE, at most $left s"
# SIGINT: the pipeline stops the running kernel cleanly (KeyboardInterrupt), SIGKILL 15 s later
timeout -s INT -k 15 "$left" "$PY" -m enflens.study.pipeline run --profile "$PROFILE"
rc=$?
case $rc in
    0) stamp "pipeline finished" ;;
    124|137) stamp "pipeline stopped at its deadline (rc $rc): packing what was made" ;;
    *) stamp "pipeline failed (rc $rc): packing what was made" ;;
esac
"$PY" bench/pack_outputs.py headline --profile "$PROFILE" | tee "$OUT_DIR/headline.txt"
return $rc
}

# everything the study prints also lands in OUT_DIR as it goes, so a cut-short run brings its log
run_study 2>&1 | tee "$OUT_DIR/gpu_full.log"
rc=${PIPESTATUS[0]}


# --- 4. pack ----------------------------------------------------------------------------------
groups=(--group "results=results/$PROFILE,runs/$PROFILE/timings.json"
        --group "notebooks=runs/$PROFILE" --group "figures=figures/$PROFILE")
decoders=$(ls -d checkpoints/enf_decoder-* checkpoints/cnf_decoder-* 2>/dev/null | paste -sd, -)
[[ -n "$decoders" ]] && groups+=(--group "decoders=$decoders")
timeout 60 "$PY" bench/pack_outputs.py pack "$OUT_DIR" "${groups[@]}" > /tmp/enflens-pack.txt 2>&1
pack_rc=$?
# the file list and what the manifest says was missing or left out (not every member)
grep -v '^  [^ ]*$' /tmp/enflens-pack.txt | grep -v '^[a-z]*\.tar\.gz: [0-9]* files$'
# the headline last, so that it is in the tail of the output a device call returns
[[ -f "$OUT_DIR/headline.txt" ]] && cat "$OUT_DIR/headline.txt"
echo "[gpu_full +$((SECONDS - T0)) s] done: study rc $rc, pack rc $pack_rc"
exit $(( rc != 0 ? rc : pack_rc ))
