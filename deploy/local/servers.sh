#!/usr/bin/env bash
# Local Kafka (KRaft, from Maven Central jars) and Redis (Debian's redis-server) for machines
# without a Docker engine. Idempotent: `up` on running servers only reports where they listen.
#
#   deploy/local/servers.sh up | down | status | install
#
# `shadowgate up --secure` (make up-secure) starts them secured instead (SASL_SSL + ACLs, TLS + ACL users; see
# docs/security.md) with the same PID files, so `down` and `status` here serve both; $run/secure marks it.
#
# Environment (defaults in brackets):
#   SHADOWGATE_STATE_DIR   [<repo>/.local]   jars cache, data, logs and PID files
#   SHADOWGATE_KAFKA_PORT  [9092]            broker listener (controller listens on port+1)
#   SHADOWGATE_REDIS_PORT  [6379]
#   SHADOWGATE_KAFKA_JARS  [$SHADOWGATE_STATE_DIR/kafka-jars]  where the assembled broker jars are cached
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${SHADOWGATE_STATE_DIR:-$repo/.local}
kafka_port=${SHADOWGATE_KAFKA_PORT:-9092}
controller_port=$((kafka_port + 1))
redis_port=${SHADOWGATE_REDIS_PORT:-6379}
jars=${SHADOWGATE_KAFKA_JARS:-$state/kafka-jars}
kafka_data=$state/kafka-data
redis_data=$state/redis-data
logs=$state/logs
run=$state/run

say() { printf 'shadowgate-local: %s\n' "$*"; }
die() { printf 'shadowgate-local: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >"$logs/apt.log" 2>&1; then
      apt-get update -q >>"$logs/apt.log" 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >>"$logs/apt.log" 2>&1 \
        || die "apt-get install redis-server failed; see $logs/apt.log"
    fi
  else
    die "redis-server not found: install it (Debian: apt-get install redis-server)"
  fi
}

install_kafka() {
  if [ -f "$jars/.complete" ] && cmp -s "$here/pom.xml" "$jars/.pom"; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: Maven assembles the Kafka broker from Maven Central"
  command -v java >/dev/null 2>&1 || die "java not found: the Kafka broker needs Java 17+"
  say "assembling the Kafka broker from Maven Central into $jars"
  rm -rf "$jars"; mkdir -p "$jars"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$jars" -DincludeScope=runtime >"$logs/maven.log" 2>&1 \
    || die "maven could not fetch the Kafka jars; see $logs/maven.log"
  cp "$here/pom.xml" "$jars/.pom"
  touch "$jars/.complete"
}

kafka_java() {
  java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
       -Dlog4j2.configurationFile="$here/log4j2.properties" \
       -cp "$jars/*" "$@"
}

start_kafka() {
  if pid_alive "$run/kafka.pid"; then say "Kafka already running (pid $(cat "$run/kafka.pid"))"; return 0; fi
  port_open "$kafka_port" && die "port $kafka_port is taken by another process; set SHADOWGATE_KAFKA_PORT"
  port_open "$controller_port" && die "port $controller_port (the KRaft controller's, Kafka port + 1) is taken by another process; set SHADOWGATE_KAFKA_PORT"
  mkdir -p "$kafka_data"
  local props=$state/server.properties
  cat >"$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$kafka_data
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=840
PROPS
  if [ ! -f "$kafka_data/meta.properties" ]; then
    say "formatting KRaft storage in $kafka_data"
    kafka_java kafka.tools.StorageTool format --standalone -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
      -c "$props" >"$logs/kafka-format.log" 2>&1 || die "formatting KRaft storage failed; see $logs/kafka-format.log"
  fi
  say "starting Kafka on 127.0.0.1:$kafka_port"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
       -Dlog4j2.configurationFile="$here/log4j2.properties" \
       -cp "$jars/*" kafka.Kafka "$props" >"$logs/kafka.log" 2>&1 &
  echo $! >"$run/kafka.pid"
}

start_redis() {
  if pid_alive "$run/redis.pid"; then say "Redis already running (pid $(cat "$run/redis.pid"))"; return 0; fi
  port_open "$redis_port" && die "port $redis_port is taken by another process; set SHADOWGATE_REDIS_PORT"
  mkdir -p "$redis_data"
  say "starting Redis on 127.0.0.1:$redis_port (AOF on)"
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$redis_data" \
      --appendonly yes --appendfsync everysec --save "" \
      --daemonize yes --pidfile "$run/redis.pid" --logfile "$logs/redis.log"
}

wait_ready() {
  local deadline=$((SECONDS + ${SHADOWGATE_START_TIMEOUT_S:-120}))
  until redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; do
    [ $SECONDS -lt $deadline ] || die "Redis did not answer on port $redis_port; see $logs/redis.log"
    sleep 0.2
  done
  until kafka_ready; do
    pid_alive "$run/kafka.pid" || die "Kafka exited during start; see $logs/kafka.log"
    [ $SECONDS -lt $deadline ] || die "Kafka did not answer on port $kafka_port; see $logs/kafka.log"
    sleep 1
  done
}

kafka_ready() {
  port_open "$kafka_port" || return 1
  # The port opens before the broker has joined its own quorum: ask for metadata.
  python3 - "$kafka_port" <<'PY' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}"}).list_topics(timeout=2)
sys.exit(0 if md.brokers else 1)
PY
}

stop_pid() {
  local name=$1 file=$run/$1.pid
  if pid_alive "$file"; then
    local pid; pid=$(cat "$file")
    say "stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { say "$name did not stop in 30 s; killing it"; kill -9 "$pid"; }
  fi
  rm -f "$file"
}

mkdir -p "$logs" "$run"
case "${1:-}" in
  install) install_redis; install_kafka ;;
  up)
    if [ -f "$run/secure" ] && { pid_alive "$run/kafka.pid" || pid_alive "$run/redis.pid"; }; then
      die "the secured servers of \`shadowgate up --secure\` are running; stop them with \`shadowgate down\` first"
    fi
    install_redis; install_kafka
    start_redis; start_kafka; wait_ready
    say "Kafka listens on 127.0.0.1:$kafka_port   (SHADOWGATE_KAFKA_BOOTSTRAP=127.0.0.1:$kafka_port)"
    say "Redis listens on 127.0.0.1:$redis_port   (SHADOWGATE_REDIS_URL=redis://127.0.0.1:$redis_port/0)"
    say "state, logs and PID files: $state"
    ;;
  down) stop_pid kafka; stop_pid redis; rm -f "$run/secure" ;;
  status)
    [ -f "$run/secure" ] && say "mode: secured (SASL_SSL Kafka, TLS Redis; settings in $state/secure/env/<role>.env)"
    pid_alive "$run/kafka.pid" && say "Kafka running on 127.0.0.1:$kafka_port" || say "Kafka stopped"
    pid_alive "$run/redis.pid" && say "Redis running on 127.0.0.1:$redis_port" || say "Redis stopped"
    ;;
  *) die "usage: $0 up | down | status | install" ;;
esac
