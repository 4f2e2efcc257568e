#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on one machine, for failover tests and local trials.
#
#   deploy/rabbitmq-cluster.sh start  [--base-dir DIR] [--ports P1,P2,P3] [--name-prefix svc]
#   deploy/rabbitmq-cluster.sh stop   [--base-dir DIR]        # every node, then the data dirs
#   deploy/rabbitmq-cluster.sh status [--base-dir DIR]
#   deploy/rabbitmq-cluster.sh stop-node N | start-node N | kill-node N   [--base-dir DIR]
#   deploy/rabbitmq-cluster.sh [--base-dir DIR] urls | ctl N ARGS... | queues N ARGS...
#
# Real `rabbitmq-server` nodes, each with its own node name (<prefix>N@localhost), AMQP port
# (127.0.0.1 only), Erlang distribution port (AMQP port + 20000 unless --dist-ports), config,
# data and log dirs under the base dir, and no plugins (no management listener). Nodes 2 and 3
# join node 1; `start` prints one AMQP URL per node (guest/guest, which RabbitMQ allows from
# localhost only). Queues declared with `x-queue-type: quorum` get a member on each of the three
# nodes (3.10's default initial group size is 3; advanced.config pins it).
#
# The machine's own node (rabbit@localhost, 5672/25672) is never touched: every node here gets
# its own RABBITMQ_CONF_ENV_FILE (so /etc/rabbitmq/rabbitmq-env.conf and its NODENAME are not
# read), its own RABBITMQ_CONFIG_FILE and its own Erlang cookie (a random one in
# <base-dir>/home/.erlang.cookie, read through HOME by the nodes and by the CLI calls), so even a
# mistaken `join_cluster rabbit@localhost` could not reach that node.
#
# Run as root, the nodes run as the `rabbitmq` user (the data dirs are chowned to it); as any
# other user, as that user. Set RABBITMQ_BIN_DIR if the server's scripts are not found.
# Settings of a started cluster are kept in <base-dir>/cluster.env; the other commands read them.
set -euo pipefail

NODES=3
BASE_DIR=/tmp/sv-rabbitmq-cluster
PORTS=""
DIST_PORTS=""
PREFIX=""
DEFAULT_PORTS=5701,5702,5703
DEFAULT_PREFIX=svc
HOST=localhost
BOOT_TIMEOUT=${RABBITMQ_CLUSTER_BOOT_TIMEOUT:-120}
MARKER=cluster.env

log() { printf 'rabbitmq-cluster: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# -- the server's scripts, and who runs them ------------------------------------------------------

find_bin_dir() {
    if [[ -n "${RABBITMQ_BIN_DIR:-}" ]]; then
        echo "$RABBITMQ_BIN_DIR"
    elif [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        # Debian/Ubuntu: /usr/sbin/rabbitmq* are wrappers that `su rabbitmq` (resetting HOME, so
        # the cookie) and cd to /var/lib/rabbitmq; the real scripts are here.
        echo /usr/lib/rabbitmq/bin
    elif command -v rabbitmq-server >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v rabbitmq-server)")"
    else
        die "rabbitmq-server not found (install RabbitMQ or set RABBITMQ_BIN_DIR)"
    fi
}

RUN_AS=()
RUN_USER=$(id -un)
setup_user() {
    if [[ $EUID -eq 0 ]] && id rabbitmq >/dev/null 2>&1; then
        RUN_AS=(runuser -u rabbitmq --)
        RUN_USER=rabbitmq
    fi
}

# -- settings -------------------------------------------------------------------------------------

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --base-dir) BASE_DIR=${2:?--base-dir needs a value}; shift 2 ;;
            --ports) PORTS=${2:?--ports needs a value}; shift 2 ;;
            --dist-ports) DIST_PORTS=${2:?--dist-ports needs a value}; shift 2 ;;
            --name-prefix) PREFIX=${2:?--name-prefix needs a value}; shift 2 ;;
            -h | --help) usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    BASE_DIR=$(realpath -m "$BASE_DIR")
}

# Values given on the command line win over those of a started cluster, which win over defaults.
load_settings() {
    local saved_ports="" saved_dist="" saved_prefix=""
    if [[ -f "$BASE_DIR/$MARKER" ]]; then
        # Read, not sourced: the file belongs to the nodes' user, and this may run as root.
        saved_ports=$(sed -n 's/^CLUSTER_PORTS=\([0-9,]*\)$/\1/p' "$BASE_DIR/$MARKER")
        saved_dist=$(sed -n 's/^CLUSTER_DIST_PORTS=\([0-9,]*\)$/\1/p' "$BASE_DIR/$MARKER")
        saved_prefix=$(sed -n 's/^CLUSTER_PREFIX=\([A-Za-z0-9_-]*\)$/\1/p' "$BASE_DIR/$MARKER")
    fi
    PORTS=${PORTS:-${saved_ports:-$DEFAULT_PORTS}}
    PREFIX=${PREFIX:-${saved_prefix:-$DEFAULT_PREFIX}}
    IFS=, read -r -a PORT_LIST <<<"$PORTS"
    [[ ${#PORT_LIST[@]} -eq $NODES ]] || die "--ports needs $NODES comma-separated ports, got '$PORTS'"
    if [[ -z "$DIST_PORTS" ]]; then
        if [[ -n "$saved_dist" && "$PORTS" == "$saved_ports" ]]; then
            DIST_PORTS=$saved_dist
        else
            local q
            DIST_PORTS=$(for q in "${PORT_LIST[@]}"; do echo $((q + 20000)); done | paste -sd,)
        fi
    fi
    IFS=, read -r -a DIST_LIST <<<"$DIST_PORTS"
    [[ ${#DIST_LIST[@]} -eq $NODES ]] || die "--dist-ports needs $NODES comma-separated ports"
    [[ "$PREFIX" =~ ^[A-Za-z][A-Za-z0-9_-]*$ ]] || die "bad --name-prefix '$PREFIX'"
    local p
    for p in "${PORT_LIST[@]}" "${DIST_LIST[@]}"; do
        [[ "$p" =~ ^[0-9]+$ ]] || die "bad port '$p'"
        case "$p" in 5672 | 5671 | 25672 | 4369 | 15672) die "port $p belongs to the machine's own RabbitMQ" ;; esac
    done
}

node_name() { echo "${PREFIX}$1@${HOST}"; }
node_dir() { echo "$BASE_DIR/node$1"; }
node_port() { echo "${PORT_LIST[$(($1 - 1))]}"; }
dist_port() { echo "${DIST_LIST[$(($1 - 1))]}"; }
node_url() { echo "amqp://guest:guest@127.0.0.1:$(node_port "$1")/"; }
check_index() { [[ "${1:-}" =~ ^[1-3]$ ]] || die "node number must be 1, 2 or 3, got '${1:-}'"; }

# Environment of one node, for the server and for the CLI calls that talk to it.
node_env() {
    local n=$1 dir
    dir=$(node_dir "$n")
    echo "HOME=$BASE_DIR/home"
    echo "RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf"
    echo "RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf"
    echo "RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config"
    echo "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins"
    echo "RABBITMQ_NODENAME=$(node_name "$n")"
    echo "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
    echo "RABBITMQ_NODE_PORT=$(node_port "$n")"
    echo "RABBITMQ_DIST_PORT=$(dist_port "$n")"
    echo "RABBITMQ_MNESIA_BASE=$dir/mnesia"
    echo "RABBITMQ_LOG_BASE=$dir/log"
    echo "RABBITMQ_PID_FILE=$dir/rabbitmq.pid"
    echo "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
    echo "ERL_EPMD_ADDRESS=127.0.0.1"
}

# Run a command as the nodes' user, in node N's environment.
in_node_env() {
    local n=$1
    shift
    local -a vars
    mapfile -t vars < <(node_env "$n")
    (cd "$BASE_DIR" && "${RUN_AS[@]}" env "${vars[@]}" "$@")
}

ctl() {
    local n=$1
    shift
    in_node_env "$n" "$BIN/rabbitmqctl" -q -n "$(node_name "$n")" "$@"
}

node_pid() {
    local f
    f="$(node_dir "$1")/rabbitmq.pid"
    [[ -s "$f" ]] && tr -dc 0-9 <"$f"
}

# Alive and one of this cluster's VMs (a stale pid file may name a pid now reused by another process).
pid_alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null &&
        ps -ww -o args= -p "$1" 2>/dev/null | grep -qF -- "-home $BASE_DIR/home "
}

node_running() { ctl "$1" ping >/dev/null 2>&1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
    local n p
    for n in $(seq 1 $NODES); do
        for p in "$(node_port "$n")" "$(dist_port "$n")"; do
            port_free "$p" || die "port $p (node $n) is already in use"
        done
    done
}

# The VMs of this cluster, by the `-home <base-dir>/home` that each of their command lines carries
# (a node still booting may not have written its pid file yet).
# shellcheck disable=SC2009 # pgrep -f takes a regex; the path is matched literally here
cluster_pids() {
    ps -eww -o pid=,args= | grep -F -- "-home $BASE_DIR/home " | grep -v grep | awk '{print $1}' || true
}

kill_leftovers() {
    local pid
    for pid in $(cluster_pids); do
        log "killing leftover VM $pid of $BASE_DIR"
        kill -KILL "$pid" 2>/dev/null || true
    done
}

# -- files ----------------------------------------------------------------------------------------

write_files() {
    local n dir cookie
    mkdir -p "$BASE_DIR/home"
    cookie=$(head -c 48 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f | head -c 40)
    (umask 077 && printf '%s' "$cookie" >"$BASE_DIR/home/.erlang.cookie")
    chmod 400 "$BASE_DIR/home/.erlang.cookie"
    for n in $(seq 1 $NODES); do
        dir=$(node_dir "$n")
        mkdir -p "$dir/mnesia" "$dir/log"
        # Read by the server scripts instead of /etc/rabbitmq/rabbitmq-env.conf (whose NODENAME is
        # the machine's node); the same values are passed as RABBITMQ_* variables too.
        node_env "$n" | grep -v '^HOME=\|^RABBITMQ_CONF_ENV_FILE=' | sed -e 's/^RABBITMQ_//' \
            -e 's/^\(SERVER_ADDITIONAL_ERL_ARGS\)=\(.*\)$/\1="\2"/' >"$dir/rabbitmq-env.conf"
        sed -e "s/@PORT@/$(node_port "$n")/" "$TEMPLATES/rabbitmq.conf" >"$dir/rabbitmq.conf"
        cp "$TEMPLATES/advanced.config" "$dir/advanced.config"
        echo '[].' >"$dir/enabled_plugins"
    done
    {
        echo "# written by deploy/rabbitmq-cluster.sh start; read by its other commands"
        echo "CLUSTER_PORTS=$PORTS"
        echo "CLUSTER_DIST_PORTS=$DIST_PORTS"
        echo "CLUSTER_PREFIX=$PREFIX"
        echo "CLUSTER_NODES=\"$(for n in $(seq 1 $NODES); do printf '%s ' "$(node_name "$n")"; done | sed 's/ $//')\""
    } >"$BASE_DIR/$MARKER"
    if [[ "$RUN_USER" != "$(id -un)" ]]; then
        chown -R "$RUN_USER:" "$BASE_DIR"
    fi
}

remove_base_dir() {
    [[ -d "$BASE_DIR" ]] || return 0
    [[ -f "$BASE_DIR/$MARKER" ]] || die "$BASE_DIR has no $MARKER: not removing a directory this script did not make"
    rm -rf "$BASE_DIR"
}

# -- one node -------------------------------------------------------------------------------------

launch_node() {
    local n=$1 p
    for p in "$(node_port "$n")" "$(dist_port "$n")"; do
        port_free "$p" || die "port $p (node $n) is already in use"
    done
    in_node_env "$n" "$BIN/rabbitmq-server" -detached >>"$(node_dir "$n")/log/startup.log" 2>&1 ||
        die "rabbitmq-server for $(node_name "$n") failed; see $(node_dir "$n")/log"
}

await_node() {
    local n=$1
    # The pid file appears early in the boot; await_startup needs it to know which node to wait for.
    local _
    for _ in $(seq 1 $((BOOT_TIMEOUT * 5))); do
        [[ -s "$(node_dir "$n")/rabbitmq.pid" ]] && break
        sleep 0.2
    done
    ctl "$n" await_startup --timeout "$BOOT_TIMEOUT" >/dev/null ||
        die "$(node_name "$n") did not boot within ${BOOT_TIMEOUT}s; see $(node_dir "$n")/log"
}

start_node() {
    local n=$1
    check_index "$n"
    [[ -f "$BASE_DIR/$MARKER" ]] || die "no cluster in $BASE_DIR (run start first)"
    if node_running "$n"; then
        log "$(node_name "$n") is already running"
        return 0
    fi
    rm -f "$(node_dir "$n")/rabbitmq.pid"
    launch_node "$n"
    await_node "$n"
    log "started $(node_name "$n") on $(node_url "$n")"
}

stop_node() {
    local n=$1 pid
    check_index "$n"
    pid=$(node_pid "$n" || true)
    if node_running "$n"; then
        # With the pid file, `stop` returns once the VM has exited, not when it was asked to.
        ctl "$n" stop "$(node_dir "$n")/rabbitmq.pid" >/dev/null || true
    fi
    if pid_alive "$pid"; then
        local _
        for _ in $(seq 1 100); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            log "$(node_name "$n") did not stop; killing pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$(node_dir "$n")/rabbitmq.pid"
    log "stopped $(node_name "$n")"
}

kill_node() {
    local n=$1 pid
    check_index "$n"
    pid=$(node_pid "$n" || true)
    pid_alive "$pid" || die "$(node_name "$n") is not running"
    kill -KILL "$pid"
    local _
    for _ in $(seq 1 100); do
        pid_alive "$pid" || break
        sleep 0.05
    done
    rm -f "$(node_dir "$n")/rabbitmq.pid"
    log "killed $(node_name "$n") (pid $pid)"
}

# -- the cluster ----------------------------------------------------------------------------------

# The running nodes that node N sees, one a line (from cluster_status's JSON, without jq).
running_nodes() {
    ctl "$1" cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' |
        grep -o '"[^"]*@[^"]*"' | tr -d '"' || true
}

running_count() { running_nodes "$1" | grep -c @ || true; }

# Seconds since the command started, to a tenth (bash 5's EPOCHREALTIME).
elapsed() {
    local now=${EPOCHREALTIME/[.,]/}
    local ms=$(((now - T0) / 1000))
    printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
}

print_urls() {
    local n
    for n in $(seq 1 $NODES); do node_url "$n"; done
}

cmd_start() {
    local n up=0
    if [[ -f "$BASE_DIR/$MARKER" ]]; then
        for n in $(seq 1 $NODES); do node_running "$n" && up=$((up + 1)); done
        if [[ $up -eq $NODES && "$(running_count 1)" -eq $NODES ]]; then
            log "already running in $BASE_DIR"
            print_urls
            return 0
        fi
        [[ $up -eq 0 ]] || die "$up of $NODES nodes run in $BASE_DIR; use start-node N, or stop first"
        log "removing the leftovers of a stopped cluster in $BASE_DIR"
        kill_leftovers
        remove_base_dir
    elif [[ -e "$BASE_DIR" && -n "$(ls -A "$BASE_DIR" 2>/dev/null)" ]]; then
        die "$BASE_DIR exists, is not empty and is not a cluster of this script"
    fi
    check_ports
    write_files
    # A start that fails stops what it started; the dir stays for its logs (`stop` removes it).
    trap 'start_failed' EXIT
    # Boot the three at once (each boot is mostly waiting), then join 2 and 3 to 1 one by one.
    for n in $(seq 1 $NODES); do launch_node "$n"; done
    for n in $(seq 1 $NODES); do await_node "$n"; done
    log "$NODES nodes booted after $(elapsed)"
    for n in $(seq 2 $NODES); do
        ctl "$n" stop_app >/dev/null
        ctl "$n" join_cluster "$(node_name 1)" >/dev/null
        ctl "$n" start_app >/dev/null
        log "$(node_name "$n") joined $(node_name 1) after $(elapsed)"
    done
    ctl 1 await_online_nodes $NODES --timeout "$BOOT_TIMEOUT" >/dev/null ||
        die "the cluster did not reach $NODES running nodes"
    [[ "$(running_count 1)" -eq $NODES ]] || die "cluster_status does not show $NODES running nodes"
    trap - EXIT
    log "cluster of $NODES nodes up in $(elapsed) ($BASE_DIR)"
    print_urls
}

start_failed() {
    local status=$? n f
    [[ $status -ne 0 ]] || return 0
    for n in $(seq 1 $NODES); do
        f="$(node_dir "$n")/log/$(node_name "$n").log"
        if [[ -f "$f" ]]; then
            log "last lines of $f:"
            tail -n 15 "$f" >&2 || true
        fi
        stop_node "$n" 2>/dev/null || true
    done
    kill_leftovers
    log "start failed; logs kept in $BASE_DIR ('$0 stop --base-dir $BASE_DIR' removes them)"
    exit $status
}

cmd_stop() {
    local n
    if [[ ! -f "$BASE_DIR/$MARKER" ]]; then
        log "no cluster in $BASE_DIR"
        return 0
    fi
    # In parallel: each stop waits for its VM to exit; the data goes anyway.
    local -a pids=()
    for n in $(seq 1 $NODES); do
        stop_node "$n" &
        pids+=($!)
    done
    local status=0
    for n in "${pids[@]}"; do wait "$n" || status=1; done
    kill_leftovers
    remove_base_dir
    log "cluster in $BASE_DIR stopped and removed in $(elapsed)"
    return $status
}

cmd_status() {
    local n pid state first=""
    if [[ ! -f "$BASE_DIR/$MARKER" ]]; then
        echo "no cluster in $BASE_DIR"
        return 3
    fi
    for n in $(seq 1 $NODES); do
        pid=$(node_pid "$n" || true)
        if node_running "$n"; then
            state=running
            first=${first:-$n}
        else
            state=down
        fi
        printf '%s\t%s\t%s\tpid=%s\n' "$(node_name "$n")" "$(node_url "$n")" "$state" "${pid:--}"
    done
    if [[ -n "$first" ]]; then
        echo "running nodes seen by $(node_name "$first"): $(running_nodes "$first" | sort | paste -sd' ')"
    fi
}

T0=${EPOCHREALTIME/[.,]/}

main() {
    # Options may come before the command (needed for ctl/queues, whose arguments are the tool's)
    # or after it.
    local -a opts=()
    while [[ $# -gt 0 && "$1" == --* ]]; do
        [[ "$1" == --help ]] && usage
        [[ $# -ge 2 ]] || die "$1 needs a value"
        opts+=("$1" "$2")
        shift 2
    done
    [[ $# -ge 1 ]] || usage
    local cmd=$1 index=""
    shift
    local -a tool_args=()
    case "$cmd" in
        stop-node | start-node | kill-node)
            index=${1:-}
            [[ $# -gt 0 ]] && shift
            ;;
        ctl | queues)
            index=${1:-}
            [[ $# -gt 0 ]] && shift
            tool_args=("$@")
            set --
            ;;
    esac
    parse_args "${opts[@]}" "$@"
    load_settings
    setup_user
    BIN=$(find_bin_dir)
    TEMPLATES="$(cd "$(dirname "$0")" && pwd)/rabbitmq-cluster"
    case "$cmd" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        urls) print_urls ;;
        stop-node) stop_node "$index" ;;
        start-node) start_node "$index" ;;
        kill-node) kill_node "$index" ;;
        ctl)
            check_index "$index"
            ctl "$index" "${tool_args[@]}"
            ;;
        queues)
            check_index "$index"
            in_node_env "$index" "$BIN/rabbitmq-queues" -q -n "$(node_name "$index")" "${tool_args[@]}"
            ;;
        *) usage ;;
    esac
}

main "$@"
