#!/usr/bin/env bash
# default_v8 (results/default_v8/, not the shipped default: it beats default_v5 at ~9 kbps and
# loses at ~17 and ~25 kbps; docs/DESIGN.md "Where the error goes"): stage A of
# scripts/train_default.sh alone (many voices, the per-bin nsr loss, 24 + 14 + 14 + 4 epochs,
# about 67 minutes on the 2 cores, shared). Usage: bash scripts/train_nsr_v8.sh [results_dir]
set -euo pipefail
STAGES=A INSTALL=0 exec bash "$(dirname "$0")/train_default.sh" "$@"
