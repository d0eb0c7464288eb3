#!/usr/bin/env bash
# Placeholder for the one-command demo (issue 9): builds the release binaries for now.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
echo "built: target/release/tcpcopy target/release/intercept"
echo "the one-command lab demo is not built yet; see README.md for a manual setup"
