#!/usr/bin/env bash
# After the e2e binary exits: no process of its control plane is left and its ports are free.
# Reads the state file the e2e binary wrote ("pids ..." and "ports ..." lines).
set -euo pipefail
state=${1:?usage: check-plane-stopped.sh STATE_FILE}
if [ ! -f "$state" ]; then
	echo "check-plane-stopped: no state file (the suite ran against an existing cluster)" >&2
	exit 0
fi
bad=0
for pid in $(sed -n 's/^pids //p' "$state"); do
	if kill -0 "$pid" 2>/dev/null; then
		echo "check-plane-stopped: process $pid ($(tr '\0' ' ' </proc/"$pid"/cmdline | cut -c1-80)) is still running" >&2
		bad=1
	fi
done
for port in $(sed -n 's/^ports //p' "$state"); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "check-plane-stopped: 127.0.0.1:$port still accepts connections" >&2
		bad=1
	fi
done
rm -f "$state"
[ "$bad" = 0 ] && echo "check-plane-stopped: every plane process is gone and its ports are free" >&2
exit "$bad"
