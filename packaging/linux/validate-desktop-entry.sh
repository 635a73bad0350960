#!/usr/bin/env bash
# desktop-file-validate on a .desktop file; where the tool is not installed, it is fetched from the
# distribution's archive (apt-get download, unpacked in a temporary folder, no root).
# Usage: validate-desktop-entry.sh FILE.desktop
set -euo pipefail
tool="$(command -v desktop-file-validate || true)"
if [ -z "$tool" ]; then
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download desktop-file-utils >/dev/null && dpkg -x desktop-file-utils_*.deb root)
  tool="$work/root/usr/bin/desktop-file-validate"
fi
"$tool" "$1"
