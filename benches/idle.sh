#!/usr/bin/env bash
# Idle cost of `rollgate run` (#14): CPU seconds and reconcile passes over 60 s with one
# plan Succeeded and one Held for a change window (journal targets, --interval 30s), on
# a path remote (watched) or a file:// remote (polled). CPU time is the daemon's own
# (utime + stime from /proc), so other load on the machine hardly changes it.
# Run: cargo build --bin rollgate && BIN=target/debug/rollgate benches/idle.sh path|file
set -euo pipefail
BIN=${BIN:?set BIN to a rollgate binary}
BIN=$(realpath "$BIN")
kind=$1   # path | file
W=$(mktemp -d); pid=; trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf $W' EXIT
git init -q -b main $W/seed; cd $W/seed
cat > rollgate.yaml <<Y
apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  local: { local: {} }
Y
mkdir plans
plan() { cat <<Y
apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: { name: $1, labels: { team: demo } }
spec:
  target: local
  workload:
    local: { command: [srv, --port, "{{port}}"], listen: "127.0.0.1:$2" }
  artifact: $3
  strategy:
    canary:
      steps: [ { setWeight: 20 }, { setWeight: 100 } ]
${4:-}
  rollback: { onFailure: revert }
Y
}
WIN='  windows: { allow: ["0 3 * * *"], timezone: UTC }'
plan web 18081 v1 > plans/web.yaml; plan held 18082 v1 > plans/held.yaml
git add -A; git -c user.name=t -c user.email=t@t commit -qm seed
git clone -q --bare $W/seed $W/remote.git
repo=$W/remote.git; [ "$kind" = file ] && repo=file://$W/remote.git
port=$((20000 + RANDOM % 10000))
$BIN run --journal-targets --interval 30s --listen 127.0.0.1:$port --repo $repo --state-dir $W/state 2>$W/log &
pid=$!
passes() { curl -s 127.0.0.1:$port/metrics | awk '/^rollgate_reconciles_total/ {s+=$2} END {print s+0}'; }
until curl -sf 127.0.0.1:$port/readyz >/dev/null; do sleep 0.2; done
sleep 3
# the held plan gets a new artifact: outside its window it is Held
git -C $W/seed pull -q $W/remote.git main
plan held 18082 v2 "$WIN" > $W/seed/plans/held.yaml
git -C $W/seed -c user.name=t -c user.email=t@t commit -qam "held v2"; git -C $W/seed push -q $W/remote.git main
sleep 5
git --git-dir $W/remote.git show main:status/held.yaml | grep -E '^ *(phase|candidate|reason):' | head -4 || { echo "no status"; tail -20 $W/log; }
ticks() { awk '{print $14+$15}' /proc/$pid/stat; }
t0=$(ticks); p0=$(passes); sleep 60; t1=$(ticks); p1=$(passes)
hz=$(getconf CLK_TCK)
echo "$kind remote: cpu $(echo "scale=3; ($t1-$t0)/$hz" | bc) s in 60 s ($(echo "scale=2; ($t1-$t0)*100/$hz/60" | bc)% of a core), passes $((p1-p0))"
