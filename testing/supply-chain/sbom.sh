#!/usr/bin/env bash
# A CycloneDX 1.5 SBOM (JSON) of the `ron` binary: every crate it is built from, with versions,
# licences and checksums, for Linux x86_64 with the default features. Writes ron.cdx.json
# beside cli/Cargo.toml and prints its path. Installs cargo-cyclonedx once when missing.
#   bash testing/supply-chain/sbom.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v cargo-cyclonedx >/dev/null; then
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ron-tools-target}" RUSTFLAGS="" \
    cargo install --locked cargo-cyclonedx --version 0.5.9
fi
cargo cyclonedx --manifest-path cli/Cargo.toml --format json --spec-version 1.5 \
  --target x86_64-unknown-linux-gnu --override-filename ron.cdx
# cargo-cyclonedx describes every member of the workspace: keep the binary's.
find . -name ron.cdx.json -not -path ./cli/ron.cdx.json -not -path "./target/*" -delete
echo "cli/ron.cdx.json"
