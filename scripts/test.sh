#!/usr/bin/env bash
# Install what the tests need, then run the default (fast) test suite. Extra arguments go to
# pytest, for example `scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$repo"
exec python -m pytest -q "$@"
