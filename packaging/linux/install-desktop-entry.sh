#!/usr/bin/env bash
# Puts LM Station in this user's application menu (no root): the .desktop entry and the icon in
# every size, under ~/.local/share (or $XDG_DATA_HOME).
# Usage: install-desktop-entry.sh [PATH_TO_LMSTATION]   (default: the bundle beside this script,
#        else `lmstation` on the PATH). --uninstall removes both.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
icons="$here/icons"; [ -d "$icons" ] || icons="$here/../../assets/icons"
entry="$data/applications/lmstation.desktop"

if [ "${1:-}" = "--uninstall" ]; then
  rm -f "$entry"
  for png in "$icons"/lmstation-*.png; do
    size="$(basename "$png" .png)"; size="${size#lmstation-}"
    rm -f "$data/icons/hicolor/${size}x${size}/apps/lmstation.png"
  done
  rm -f "$data/icons/hicolor/scalable/apps/lmstation.svg"
  echo "LM Station removed from the application menu."
  exit 0
fi

target="${1:-}"
if [ -z "$target" ]; then
  if [ -x "$here/lmstation" ]; then target="$here/lmstation"; else target="$(command -v lmstation || true)"; fi
fi
[ -n "$target" ] && [ -x "$target" ] || { echo "error: no lmstation executable found; pass its path" >&2; exit 1; }
target="$(cd "$(dirname "$target")" && pwd)/$(basename "$target")"

for png in "$icons"/lmstation-*.png; do
  size="$(basename "$png" .png)"; size="${size#lmstation-}"
  install -D -m 644 "$png" "$data/icons/hicolor/${size}x${size}/apps/lmstation.png"
done
install -D -m 644 "$icons/lmstation.svg" "$data/icons/hicolor/scalable/apps/lmstation.svg"
mkdir -p "$data/applications"
# Exec with the absolute path, quoted as the Desktop Entry spec asks when it has spaces
sed "s|^Exec=lmstation|Exec=\"${target//|/\\|}\"|" "$here/lmstation.desktop" > "$entry"
chmod 644 "$entry"
command -v update-desktop-database >/dev/null && update-desktop-database "$data/applications" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$data/icons/hicolor" || true
echo "LM Station is in the application menu ($entry)."
