#!/usr/bin/env bash
# argv-logger: stand in for an OCI runtime, record how a client calls it, then
# exec the real runtime with the same argv, stdio, environment and pid.
#
#   NK_ARGV_LOG=/tmp/calls.jsonl NK_ARGV_REAL=/usr/sbin/runc scripts/argv-logger.sh create ...
#
# Each call appends one JSON line to $NK_ARGV_LOG:
#
#   {"time":1700000000.123456,"pid":123,"parent":"conmon","argv":["create","--bundle","/x","id"]}
#
# ("parent" is the calling process's comm: conmon, podman, containerd-shim...)
#
# Clients do not always pass their environment on to the runtime (dockerd and
# containerd start the shim with their own), so the usual way to use this is
# a small wrapper that sets both variables and execs this script, given to the
# client as its runtime (test/e2e/daemons.ts writeArgvWrapper writes one):
#
#   #!/bin/sh
#   NK_ARGV_LOG=/x/calls.jsonl NK_ARGV_REAL=/abs/bin/nk-runtime exec /abs/scripts/argv-logger.sh "$@"
#
# With NK_ARGV_STATUS=1 it runs the runtime as a child instead and then logs
# {"time":...,"pid":...,"exit":N} (the client then sees one more process
# between it and the runtime; for debugging only).
#
# No subprocess is started (bash builtins only), so the wrapper adds about a
# millisecond to each call.
set -u
log=${NK_ARGV_LOG:-}
real=${NK_ARGV_REAL:-}
if [ -z "$real" ]; then
  echo "argv-logger: NK_ARGV_REAL (the runtime to run) is not set" >&2
  exit 127
fi

# JSON string body of $1 (backslash, quote and control characters escaped).
json_escape() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  # Any other control character: \u00XX.
  local out="" c i
  if [[ $s == *[$'\x01'-$'\x1f']* ]]; then
    for ((i = 0; i < ${#s}; i++)); do
      c=${s:i:1}
      if [[ $c == [$'\x01'-$'\x1f'] ]]; then
        printf -v c '\\u%04x' "'$c"
      fi
      out+=$c
    done
    s=$out
  fi
  REPLY=$s
}

if [ -n "$log" ]; then
  parent="?"
  read -r parent <"/proc/$PPID/comm" 2>/dev/null || true
  json_escape "$parent"
  line="{\"time\":${EPOCHREALTIME/,/.},\"pid\":$$,\"parent\":\"$REPLY\",\"argv\":["
  sep=""
  for arg in "$@"; do
    json_escape "$arg"
    line+="$sep\"$REPLY\""
    sep=","
  done
  line+="]}"
  # One write(2) per line with O_APPEND: concurrent calls do not interleave.
  printf '%s\n' "$line" >>"$log"
fi
if [ "${NK_ARGV_STATUS:-}" = 1 ]; then
  "$real" "$@"
  code=$?
  [ -n "$log" ] && printf '{"time":%s,"pid":%s,"exit":%s}\n' "${EPOCHREALTIME/,/.}" "$$" "$code" >>"$log"
  exit "$code"
fi
exec "$real" "$@"
