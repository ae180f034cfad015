#!/usr/bin/env bash
# argv-logger: stand in for an OCI runtime, record how a client calls it, then
# exec the real runtime with the same argv, stdio, environment and pid.
#
#   NK_ARGV_LOG=/tmp/calls.log NK_ARGV_REAL=/usr/sbin/runc scripts/argv-logger.sh create ...
#
# Each call appends one line to $NK_ARGV_LOG:
#
#   <unix time.ns> <pid> <parent's comm> <argv[1..] quoted for bash>
#
# Clients do not always pass their environment on to the runtime (containerd's
# shim, dockerd), so the usual way to use this is a two-line wrapper that sets
# both variables and execs this script, given to the client as its runtime
# (test/e2e/daemons.ts writeArgvWrapper does that):
#
#   #!/bin/sh
#   NK_ARGV_LOG=/x/calls.log NK_ARGV_REAL=/abs/bin/nk-runtime exec /abs/scripts/argv-logger.sh "$@"
#
# With NK_ARGV_STATUS=1 it runs the runtime as a child instead and adds a
# second line "<time> <pid> exit <code>" (the client then sees one more
# process between it and the runtime; only for debugging).
set -u
log=${NK_ARGV_LOG:-}
real=${NK_ARGV_REAL:-}
if [ -z "$real" ]; then
  echo "argv-logger: NK_ARGV_REAL (the runtime to run) is not set" >&2
  exit 127
fi
if [ -n "$log" ]; then
  parent=$(cat "/proc/$PPID/comm" 2>/dev/null || echo "?")
  line="$(date +%s.%N) $$ $parent"
  for arg in "$@"; do line+=" $(printf '%q' "$arg")"; done
  # One write(2) per line, O_APPEND: concurrent calls do not interleave.
  printf '%s\n' "$line" >>"$log"
fi
if [ "${NK_ARGV_STATUS:-}" = 1 ]; then
  "$real" "$@"
  code=$?
  [ -n "$log" ] && printf '%s %s exit %s\n' "$(date +%s.%N)" "$$" "$code" >>"$log"
  exit "$code"
fi
exec "$real" "$@"
