#!/usr/bin/env bash
# bench/arp-stall.sh: shows where the ~1 s stall of a container swap comes from, with no deploy
# tool involved (bench/arp_stall.py): a lone container vs one beside another on docker0, and
# docker0's ARP retransmit time at the kernel default vs as packaged. Needs root (it sets
# net.ipv4.neigh.docker0.retrans_time_ms and puts it back). Same setup as bench/profile-cold.sh.
#   bash bench/arp-stall.sh
exec env PROFILE_SCRIPT=arp_stall.py bash "$(dirname "$0")/profile-cold.sh" "$@"
