#!/usr/bin/env bash
# For a GPU machine without package access: downloads the Debian packages whose headers (and
# zlib's static library) the build needs, and unpacks them into third_party/ (ignored by git).
# Run on a machine with package access, then carry third_party/ along; CMake looks there first
# (DIFFUSE_THIRD_PARTY_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-third_party}
mkdir -p "$dest/debs"
pkgs=(catch2 libcli11-dev nlohmann-json3-dev libstb-dev zlib1g-dev)
(cd "$dest/debs" && apt-get download "${pkgs[@]}")
for deb in "$dest"/debs/*.deb; do dpkg -x "$deb" "$dest"; done
# Only the unpacked files travel (the GPU machine's tree and carried folders share 64 MiB); the
# manual pages, docs and CMake files of the packages are not needed either.
rm -rf "$dest/debs" "$dest/usr/share"
echo "third-party headers unpacked under $dest/usr/include"
