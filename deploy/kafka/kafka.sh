#!/usr/bin/env bash
# A real Apache Kafka (KRaft) for development, tests and the demo, without Docker.
#
#   kafka.sh fetch                         resolve the broker + tools jars with mvn (cached)
#   kafka.sh start  --dir D [--brokers N] [--port P] [--secure S]
#                                          format storage, start N combined broker+controller
#                                          nodes on 127.0.0.1, wait until ready, create topics;
#                                          --secure S: SASL_SSL listeners, TLS controllers,
#                                          SCRAM users and the ACL authorizer from folder S
#                                          (see below)
#   kafka.sh stop   --dir D                stop every node of D by PID (TERM, then KILL)
#   kafka.sh stop-node --dir D --node I    stop one node (fault tests)
#   kafka.sh start-node --dir D --node I   start one stopped node again
#   kafka.sh topics --bootstrap B [--replication R] [--partitions P] [--command-config F]
#                                          create the foliowatch topics (idempotent)
#   kafka.sh tool NAME [args...]           run one of Kafka's own tools from the same jars:
#                                          topics, console-consumer, console-producer,
#                                          consumer-perf, producer-perf, storage,
#                                          broker-api-versions, consumer-groups, acls,
#                                          configs, metadata-quorum (the active controller)
#
# --secure S (written by shell/kafka_security.py, or by hand): S/server.properties is
# appended to every node's properties (keystore, truststore, SASL, authorizer, super
# users), S/scram.txt holds one `kafka-storage format --add-scram` entry per line, and
# S/admin.properties is the super user's client config for Kafka's tools.
#
# Environment: FOLIOWATCH_CACHE (default ~/.cache/foliowatch) holds the jars;
# KAFKA_HEAP (default 512m) sizes each node's JVM.
#
# Start-up time: each JVM (a node, every tool) maps a class-data archive of the classes
# it loaded last time (JDK CDS; without it a tool spends most of its seconds loading and
# verifying classes). The first run of each writes the archive at its exit into the jars'
# cache folder; a missing, stale or unreadable archive only means a slower start.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
cache=${FOLIOWATCH_CACHE:-$HOME/.cache/foliowatch}
libs="$cache/kafka-$kafka_version/libs"
heap=${KAFKA_HEAP:-512m}

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven) to fetch Kafka's jars"
  command -v java >/dev/null || die "java not found: Kafka $kafka_version needs Java 17+ (apt-get install openjdk-17-jre-headless)"
  echo "kafka.sh: resolving Apache Kafka $kafka_version from Maven Central into $libs" >&2
  rm -rf "$libs.tmp"
  mkdir -p "$libs.tmp"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs.tmp" >&2 \
    || die "mvn could not resolve org.apache.kafka:kafka_2.13:$kafka_version (see output above)"
  ls "$libs.tmp"/kafka_2.13-"$kafka_version".jar >/dev/null 2>&1 || die "kafka_2.13-$kafka_version.jar missing after mvn"
  # slf4j 1.x from the tree cannot bind to log4j2's slf4j2 provider; drop it so logging works.
  rm -f "$libs.tmp"/slf4j-api-1.*.jar
  if ! ls "$libs.tmp"/slf4j-api-2.*.jar >/dev/null 2>&1; then
    mvn -q -B dependency:copy -Dartifact=org.slf4j:slf4j-api:2.0.17 -DoutputDirectory="$libs.tmp" >&2 \
      || die "mvn could not resolve org.slf4j:slf4j-api:2.0.17"
  fi
  touch "$libs.tmp/.complete"
  rm -rf "$libs"
  mv "$libs.tmp" "$libs"
}

cds_dir="$cache/kafka-$kafka_version/cds"

cds_opts() {  # cds_opts NAME TMP: the JVM options that use NAME's class-data archive or,
  # while there is none, write one to TMP at the JVM's exit (cds_keep moves it in place)
  local jsa="$cds_dir/$1.jsa"
  mkdir -p "$cds_dir"
  if [ -s "$jsa" ]; then
    # quiet: a stale archive (other jars, other JDK) is ignored, and must not print on stdout
    echo "-XX:SharedArchiveFile=$jsa -Xlog:cds=off,cds+dynamic=off"
  else
    echo "-XX:ArchiveClassesAtExit=$2 -Xlog:cds=off,cds+dynamic=off"
  fi
}

cds_keep() {  # cds_keep NAME TMP: an archive written at a JVM's exit becomes NAME's
  if [ -s "$2" ]; then mv -f "$2" "$cds_dir/$1.jsa"; else rm -f "$2"; fi
}

java_run() {  # java_run LOGFILE MAINCLASS ARGS...: one of Kafka's tools, in the foreground
  local log=$1 rc=0 tmp gc=(-XX:+UseG1GC)
  shift
  tmp="$cds_dir/tool-$1.$$.jsa.tmp"
  # the admin tools run for seconds: the JIT's top tier would not pay for itself there;
  # the perf tools (the benchmarks' reference) keep it
  case "$1" in *Performance) ;; *) gc=(-XX:TieredStopAtLevel=1 -XX:+UseSerialGC) ;; esac
  # shellcheck disable=SC2046  # cds_opts prints separate JVM options
  java -Xms64m -Xmx"$heap" "${gc[@]}" $(cds_opts "tool-$1" "$tmp") \
       -Djava.awt.headless=true \
       -Dlog4j2.configurationFile="$here/log4j2.xml" -Dfoliowatch.kafka.log="$log" \
       -cp "$libs/*" "$@" || rc=$?
  cds_keep "tool-$1" "$tmp"
  return "$rc"
}

tool() {
  fetch
  local name=${1:?tool name}; shift
  local cls
  case "$name" in
    topics) cls=org.apache.kafka.tools.TopicCommand ;;
    console-consumer) cls=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    console-producer) cls=org.apache.kafka.tools.ConsoleProducer ;;
    consumer-perf) cls=org.apache.kafka.tools.ConsumerPerformance ;;
    producer-perf) cls=org.apache.kafka.tools.ProducerPerformance ;;
    consumer-groups) cls=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    broker-api-versions) cls=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    metadata-quorum) cls=org.apache.kafka.tools.MetadataQuorumCommand ;;
    storage) cls=kafka.tools.StorageTool ;;
    acls) cls=org.apache.kafka.tools.AclCommand ;;
    configs) cls=org.apache.kafka.tools.ConfigCommand ;;
    *) die "unknown tool '$name': one of topics, console-consumer, console-producer, consumer-perf, producer-perf, consumer-groups, broker-api-versions, metadata-quorum, storage, acls, configs" ;;
  esac
  heap=${KAFKA_TOOL_HEAP:-256m} java_run /dev/null "$cls" "$@"
}

free_port() {
  python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

node_props() {  # node_props DIR I N [SECURE]
  local dir=$1 i=$2 n=$3 secure=${4:-} voters="" j proto=PLAINTEXT ctl=PLAINTEXT
  for ((j = 1; j <= n; j++)); do
    voters+="${voters:+,}$j@127.0.0.1:$(cat "$dir/node$j/controller.port")"
  done
  if [ -n "$secure" ]; then proto=SASL_SSL; ctl=SSL; fi
  cat <<EOF
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=$proto://127.0.0.1:$(cat "$dir/node$i/broker.port"),CONTROLLER://127.0.0.1:$(cat "$dir/node$i/controller.port")
advertised.listeners=$proto://127.0.0.1:$(cat "$dir/node$i/broker.port")
controller.listener.names=CONTROLLER
inter.broker.listener.name=$proto
listener.security.protocol.map=CONTROLLER:$ctl,$proto:$proto
log.dirs=$dir/node$i/data
num.partitions=6
default.replication.factor=$n
min.insync.replicas=$(( n >= 3 ? 2 : 1 ))
offsets.topic.replication.factor=$n
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=$n
transaction.state.log.min.isr=$(( n >= 3 ? 2 : 1 ))
share.coordinator.state.topic.replication.factor=$n
share.coordinator.state.topic.min.isr=$(( n >= 3 ? 2 : 1 ))
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
log.segment.bytes=134217728
EOF
  if [ -n "$secure" ]; then cat "$secure/server.properties"; fi
}

start_node() {  # start_node DIR I
  local dir=$1 i=$2
  local pidfile="$dir/node$i/pid"  # separate: $i must be this function's, not the caller's
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
  : >"$dir/node$i/server.log"
  # the node's class-data archive, if it writes one, is kept when the node stops (stop_pid)
  local cds
  cds=$(cds_opts broker "$dir/node$i/broker.jsa.tmp")
  case "$cds" in *ArchiveClassesAtExit*) : >"$dir/node$i/broker.jsa.pending" ;; esac
  # setsid: the node survives its caller's terminal, and stop() signals it by PID alone.
  # shellcheck disable=SC2086  # $cds: separate JVM options
  setsid bash -c 'exec "$@"' _ java -Xms128m -Xmx"$heap" -XX:+UseG1GC $cds -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$here/log4j2.xml" -Dfoliowatch.kafka.log="$dir/node$i/server.log" \
      -cp "$libs/*" kafka.Kafka "$dir/node$i/server.properties" \
      >"$dir/node$i/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

wait_node() {  # wait_node DIR I TIMEOUT_S
  local dir=$1 i=$2 timeout=$3 pid deadline
  pid=$(cat "$dir/node$i/pid")
  deadline=$(( $(date +%s) + timeout ))
  until grep -q "Kafka Server started" "$dir/node$i/server.log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "kafka.sh: node $i (pid $pid) exited during start; last lines of its logs:" >&2
      tail -n 30 "$dir/node$i/stdout.log" "$dir/node$i/server.log" >&2 || true
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "kafka.sh: node $i not ready after ${timeout}s; last lines of $dir/node$i/server.log:" >&2
      tail -n 30 "$dir/node$i/server.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

start() {
  local dir="" n=1 port="" secure="" f
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir=$2; shift 2 ;;
      --brokers) n=$2; shift 2 ;;
      --port) port=$2; shift 2 ;;
      --secure) secure=$(cd "$2" && pwd) || die "start: --secure $2: no such folder"; shift 2 ;;
      *) die "start: unknown argument '$1' (expected --dir D [--brokers N] [--port P] [--secure S])" ;;
    esac
  done
  if [ -n "$secure" ]; then
    for f in server.properties scram.txt admin.properties; do
      [ -f "$secure/$f" ] || die "start: --secure $secure: $f missing (see kafka.sh's header)"
    done
  fi
  [ -n "$dir" ] || die "start: --dir is required (a folder for the cluster's data, logs and PIDs)"
  [[ "$n" =~ ^[1-9]$ ]] || die "start: --brokers expects 1..9, got '$n'"
  fetch
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local i cluster_id
  if [ ! -f "$dir/cluster.id" ]; then
    for ((i = 1; i <= n; i++)); do
      mkdir -p "$dir/node$i"
      if [ -n "$port" ] && [ "$i" -eq 1 ]; then echo "$port" >"$dir/node$i/broker.port"; else free_port >"$dir/node$i/broker.port"; fi
      free_port >"$dir/node$i/controller.port"
    done
    echo "$n" >"$dir/brokers"
    # Kafka's Uuid.randomUuid(): 16 random bytes (a version-4 UUID), base64url without
    # padding, never starting with '-'; a JVM start less than `storage random-uuid`
    cluster_id=$(python3 -c 'import base64, uuid
while True:
    u = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not u.startswith("-"): break
print(u)')
    local scram=() line
    if [ -n "$secure" ]; then
      echo "$secure" >"$dir/secure"
      while IFS= read -r line; do [ -n "$line" ] && scram+=(--add-scram "$line"); done <"$secure/scram.txt"
    fi
    for ((i = 1; i <= n; i++)); do
      node_props "$dir" "$i" "$n" "$secure" >"$dir/node$i/server.properties"
      chmod 600 "$dir/node$i/server.properties"
      tool storage format -t "$cluster_id" -c "$dir/node$i/server.properties" --ignore-formatted "${scram[@]}" >"$dir/node$i/format.log" 2>&1 \
        || { cat "$dir/node$i/format.log" >&2; die "formatting storage of node $i failed"; }
    done
    echo "$cluster_id" >"$dir/cluster.id"
  fi
  n=$(cat "$dir/brokers")
  for ((i = 1; i <= n; i++)); do start_node "$dir" "$i"; done
  for ((i = 1; i <= n; i++)); do
    wait_node "$dir" "$i" 90 || { stop --dir "$dir"; die "broker $i did not start (logs in $dir/node$i)"; }
  done
  local bootstrap=""
  for ((i = 1; i <= n; i++)); do bootstrap+="${bootstrap:+,}127.0.0.1:$(cat "$dir/node$i/broker.port")"; done
  echo "$bootstrap" >"$dir/bootstrap"
  local admin=()
  if [ -f "$dir/secure" ]; then admin=(--command-config "$(cat "$dir/secure")/admin.properties"); fi
  topics --bootstrap "$bootstrap" --replication "$n" "${admin[@]}" >&2 || { stop --dir "$dir"; die "creating topics failed"; }
  echo "$bootstrap"
}

stop_pid() {  # stop_pid PIDFILE
  local pidfile=$1 pid k clean=1 jsa
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # a node writing its class-data archive (its first clean stop) takes longer to exit
    local waits=150
    if [ -f "$(dirname "$pidfile")/broker.jsa.pending" ]; then waits=600; fi
    for ((k = 0; k < waits; k++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; clean=0
    fi
  fi
  rm -f "$pidfile"
  # the node's class-data archive is written at its exit: kept after a clean stop only
  # (a node killed while writing it leaves part of one)
  jsa="$(dirname "$pidfile")/broker.jsa.tmp"
  if [ -f "$jsa" ]; then
    if [ "$clean" = 1 ]; then cds_keep broker "$jsa"; else rm -f "$jsa"; fi
  fi
  rm -f "$(dirname "$pidfile")/broker.jsa.pending"
}

stop() {
  local dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir=$2; shift 2 ;;
      *) die "stop: unknown argument '$1' (expected --dir D)" ;;
    esac
  done
  [ -n "$dir" ] || die "stop: --dir is required"
  [ -d "$dir" ] || return 0
  local f
  for f in "$dir"/node*/pid; do [ -e "$f" ] && stop_pid "$f"; done
  return 0
}

node_cmd() {  # node_cmd start|stop ARGS
  local what=$1 dir="" node=""; shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir=$2; shift 2 ;;
      --node) node=$2; shift 2 ;;
      *) die "$what-node: unknown argument '$1' (expected --dir D --node I)" ;;
    esac
  done
  [ -n "$dir" ] && [ -n "$node" ] || die "$what-node: --dir and --node are required"
  [ -d "$dir/node$node" ] || die "$what-node: no node $node in $dir"
  if [ "$what" = stop ]; then stop_pid "$dir/node$node/pid"; else
    fetch; start_node "$dir" "$node"; wait_node "$dir" "$node" 90 || die "node $node did not start"
  fi
}

topics() {
  local bootstrap="" repl=1 partitions=${FOLIOWATCH_PARTITIONS:-6} cc=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --bootstrap) bootstrap=$2; shift 2 ;;
      --replication) repl=$2; shift 2 ;;
      --partitions) partitions=$2; shift 2 ;;
      --command-config) cc=(--command-config "$2"); shift 2 ;;
      *) die "topics: unknown argument '$1'" ;;
    esac
  done
  [ -n "$bootstrap" ] || die "topics: --bootstrap host:port is required"
  local min_isr=$(( repl >= 3 ? 2 : 1 ))
  # samples: 7 days, zstd from producers kept as is; dlq: 30 days for forensics;
  # regressions: compacted history is not wanted (each record is an event), 90 days.
  tool topics --bootstrap-server "$bootstrap" "${cc[@]}" --create --if-not-exists --topic foliowatch.samples.v1 \
    --partitions "$partitions" --replication-factor "$repl" \
    --config retention.ms=604800000 --config min.insync.replicas=$min_isr --config compression.type=producer
  tool topics --bootstrap-server "$bootstrap" "${cc[@]}" --create --if-not-exists --topic foliowatch.samples.dlq \
    --partitions 1 --replication-factor "$repl" \
    --config retention.ms=2592000000 --config min.insync.replicas=$min_isr
  tool topics --bootstrap-server "$bootstrap" "${cc[@]}" --create --if-not-exists --topic foliowatch.regressions.v1 \
    --partitions 1 --replication-factor "$repl" \
    --config retention.ms=7776000000 --config min.insync.replicas=$min_isr
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  fetch) fetch; echo "$libs" ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  stop-node) node_cmd stop "$@" ;;
  start-node) node_cmd start "$@" ;;
  topics) topics "$@" ;;
  tool) tool "$@" ;;
  *) die "usage: kafka.sh fetch | start --dir D [--brokers N] | stop --dir D | stop-node/start-node --dir D --node I | topics --bootstrap B | tool NAME ARGS" ;;
esac
