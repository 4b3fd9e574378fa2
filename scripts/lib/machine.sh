# machine_report LABEL: one line on what the machine can give a test run right now — cores, load,
# CPU stolen by the host, memory, disk and the latency of a synced 4 KiB write. Printed by
# scripts/test before and after the suite, so a CI log that shows a slow or failing run also
# shows whether the machine was the cause (a run's timing failures on a starved host read the
# same as a bug).
machine_report() {
  local label=$1 cores load steal mem disk probe fsync_ms
  cores=$(nproc 2>/dev/null || echo "?")
  load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
  # Steal over one second: the share of CPU time the hypervisor gave to someone else.
  steal=$(
    read -r _ a1 a2 a3 a4 a5 a6 a7 a8 _ </proc/stat
    sleep 1
    read -r _ b1 b2 b3 b4 b5 b6 b7 b8 _ </proc/stat
    total=$(((b1 + b2 + b3 + b4 + b5 + b6 + b7 + b8) - (a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8)))
    ((total > 0)) && echo "$((100 * (b8 - a8) / total)) %" || echo "?"
  ) 2>/dev/null || steal="?"
  mem=$(awk '/^MemAvailable:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || echo "?")
  disk=$(df -Pk . 2>/dev/null | awk 'NR == 2 {printf "%.1f GiB", $4 / 1048576}')
  probe=$(mktemp -p . .fsync-probe.XXXXXX 2>/dev/null) || probe=""
  fsync_ms="?"
  if [[ -n $probe ]]; then
    local started=$EPOCHREALTIME
    if dd if=/dev/zero of="$probe" bs=4k count=100 oflag=dsync status=none 2>/dev/null; then
      fsync_ms=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f ms", (b - a) * 1000 / 100 }')
    fi
    rm -f "$probe"
  fi
  printf 'scripts/test: machine %s: %s cores, load %s, steal %s, %s available, %s disk free, synced 4 KiB write %s\n' \
    "$label" "$cores" "$load" "$steal" "$mem" "${disk:-?}" "$fsync_ms" >&2
}
