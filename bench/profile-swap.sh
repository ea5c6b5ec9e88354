#!/usr/bin/env bash
# bench/profile-swap.sh [STOP_TIMEOUT...]: traces blog-agent's cut-over during release swaps
# (default: stop_timeout 3s and 0s, PROFILE_RUNS=2 swaps each): each Engine API call of the
# cut-over next to when the HTTP prober saw the old version stop answering and the new one answer.
# Same setup and isolation as bench/profile-cold.sh.
#   bash bench/profile-swap.sh
exec env PROFILE_SCRIPT=profile_swap.py bash "$(dirname "$0")/profile-cold.sh" "$@"
