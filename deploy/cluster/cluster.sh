#!/usr/bin/env bash
# cluster.sh: three RabbitMQ nodes on this one machine, joined into one cluster, for tests and
# try-outs of Herald's fail-over (HERALD_AMQP_URLS). Not for production: the three nodes share
# one machine, the guest login and a throw-away Erlang cookie.
#
#   deploy/cluster/cluster.sh start        start the three nodes and join them into one cluster;
#                                          prints the three AMQP URLs, comma-separated, as its
#                                          last line on stdout (progress goes to stderr)
#   deploy/cluster/cluster.sh urls         print that comma-separated list again
#   deploy/cluster/cluster.sh status       which nodes run, then `rabbitmqctl cluster_status`
#   deploy/cluster/cluster.sh leader Q     print 1, 2 or 3: the node that leads quorum queue Q in
#                                          vhost / (asks a node that is running)
#   deploy/cluster/cluster.sh kill N       kill -9 node N's Erlang VM; returns once it is dead
#   deploy/cluster/cluster.sh restart N    start node N again; returns once the cluster shows it
#                                          running (it rejoins the cluster by itself)
#   deploy/cluster/cluster.sh stop         stop the three nodes (kill -9 any still up after 20 s)
#                                          and remove HERALD_CLUSTER_DIR with all it holds
#
# Settings, from the environment:
#   HERALD_CLUSTER_PORT  AMQP port of node 1 (default 5701). Node i (1, 2, 3) listens for AMQP on
#                        127.0.0.1:PORT+i-1 and for Erlang distribution (the nodes talking to each
#                        other, and rabbitmqctl to them) on 127.0.0.1:PORT+i-1+10000. Its name is
#                        herald<PORT>-<i>@localhost, so clusters on different ports (a test's
#                        private one and a try-out one, say) run side by side.
#   HERALD_CLUSTER_DIR   where everything goes (default ${TMPDIR:-/tmp}/herald-cluster): the
#                        Erlang cookie, and per node nodeI/ with its rabbitmq.conf, data (mnesia/),
#                        logs (log/) and pid file. `stop` removes it all. Give each cluster that runs
#                        at the same time a directory of its own.
#
# Exit status: 0 done; 1 failed (the message says why); 2 wrong usage; 3 `start` or `restart`
# found one of the cluster's ports taken (a test can pick another port and try again).
#
# The nodes run as whoever runs this script (root is fine) from RabbitMQ's own start scripts, not
# through the Debian wrappers in /usr/sbin, which would switch to the rabbitmq user and its
# cookie. Nothing here reads or changes the machine's own node (rabbit@localhost) or its
# /etc/rabbitmq; the nodes only share the machine's epmd (the Erlang port mapper on 4369), as
# every Erlang node on a machine does.

set -euo pipefail

PROG=cluster.sh
PORT=${HERALD_CLUSTER_PORT:-5701}
DIR=${HERALD_CLUSTER_DIR:-${TMPDIR:-/tmp}/herald-cluster}
NODES=(1 2 3)
DIST_OFFSET=10000      # node i's distribution port is its AMQP port + this
START_TIMEOUT=120      # seconds a node may take to boot, or the cluster to show it running
STOP_TIMEOUT=20        # seconds the nodes get to stop cleanly before they are killed
MARKER=.herald-cluster # a file in DIR that says this script made it, and for which port

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: cluster.sh start | urls | status | leader QUEUE | kill N | restart N | stop
  (N is 1, 2 or 3; settings HERALD_CLUSTER_PORT and HERALD_CLUSTER_DIR; see the top of the script)
EOF
    exit 2
}

# --- Settings and names ----------------------------------------------------------------------

[[ $PORT =~ ^[0-9]+$ ]] || die "HERALD_CLUSTER_PORT must be a port number, not '$PORT'"
PORT=$((10#$PORT))
((PORT >= 1024 && PORT + 2 + DIST_OFFSET <= 65535)) ||
    die "HERALD_CLUSTER_PORT must be between 1024 and $((65535 - 2 - DIST_OFFSET)), not $PORT"
[[ $DIR == /* ]] || DIR=$PWD/$DIR   # the nodes need an absolute path
DIR=${DIR%/}
[[ -n $DIR ]] || die "HERALD_CLUSTER_DIR must not be /"

# Our own RabbitMQ and Erlang settings come from the environment we build below; any that the
# caller happens to have set (RABBITMQ_NODENAME, RABBITMQ_ERLANG_COOKIE, ERL_FLAGS, ...) would mix
# with them, so drop them.
while read -r var; do
    case $var in RABBITMQ_* | ERL_FLAGS | ERL_AFLAGS | ERL_ZFLAGS | ERL_LIBS) unset "$var" ;; esac
done < <(compgen -e)

node_name() { printf 'herald%s-%s@localhost' "$PORT" "$1"; }
amqp_port() { echo $((PORT + $1 - 1)); }
dist_port() { echo $((PORT + $1 - 1 + DIST_OFFSET)); }
node_dir() { printf '%s/node%s' "$DIR" "$1"; }
pid_file() { printf '%s/node%s/rabbitmq.pid' "$DIR" "$1"; }

urls() {
    local i out=()
    for i in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$i")/%2f"); done
    (IFS=,; printf '%s\n' "${out[*]}")
}

check_node_arg() {
    [[ ${1:-} =~ ^[123]$ ]] || { say "N must be 1, 2 or 3, not '${1:-}'"; usage; }
}

# --- Finding RabbitMQ ------------------------------------------------------------------------

# RabbitMQ's own scripts (rabbitmq-server, rabbitmqctl, rabbitmq-queues). Debian and RPM packages
# keep them in /usr/lib/rabbitmq/bin and put wrappers in /usr/sbin that run them as the rabbitmq
# user, with that user's home and so its Erlang cookie; we need our own, so go round the
# wrappers. Elsewhere (the generic tarball, Homebrew, the Docker image) the scripts on PATH are
# the real ones.
find_rabbitmq() {
    local s
    if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        SBIN=/usr/lib/rabbitmq/bin
    elif s=$(command -v rabbitmq-server); then
        SBIN=$(dirname "$(readlink -f "$s")")
    else
        die "rabbitmq-server not found: install RabbitMQ (Debian: apt-get install rabbitmq-server)"
    fi
}

# The environment every node and every rabbitmqctl call of ours gets: HOME is the cluster's
# directory, so Erlang (the nodes and the CLI tools alike) reads the cluster's own cookie from
# $DIR/.erlang.cookie; RABBITMQ_CONF_ENV_FILE points away from /etc/rabbitmq/rabbitmq-env.conf,
# which names the machine's node (NODENAME=rabbit@localhost) and would take over ours; and epmd
# is asked on loopback only, like the machine's node does.
common_env() {
    COMMON_ENV=(
        HOME="$DIR"
        RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
        ERL_EPMD_ADDRESS=127.0.0.1
    )
}

# The environment of node $1: its name, its own files and directories (nothing of
# /etc/rabbitmq or /var/lib/rabbitmq), its distribution port, and distribution bound to loopback
# (inet_dist_use_interface, as the machine's node has in its ERL_FLAGS).
node_env() {
    local i=$1 nd
    nd=$(node_dir "$i")
    common_env
    NODE_ENV=(
        "${COMMON_ENV[@]}"
        RABBITMQ_NODENAME="$(node_name "$i")"
        RABBITMQ_USE_LONGNAME=false
        RABBITMQ_CONF_ENV_FILE="$nd/rabbitmq-env.conf"
        RABBITMQ_CONFIG_FILE="$nd/rabbitmq.conf"
        RABBITMQ_CONFIG_FILES="$nd/conf.d"
        RABBITMQ_ADVANCED_CONFIG_FILE="$nd/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$nd/enabled_plugins"
        RABBITMQ_MNESIA_BASE="$nd/mnesia"
        RABBITMQ_LOG_BASE="$nd/log"
        RABBITMQ_PID_FILE="$(pid_file "$i")"
        RABBITMQ_MOTD_FILE="$nd/motd"
        RABBITMQ_DIST_PORT="$(dist_port "$i")"
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    )
}

# rabbitmqctl / rabbitmq-queues against node $1 (of this cluster), with our cookie.
ctl() {
    local node=$1
    shift
    common_env
    env "${COMMON_ENV[@]}" "$SBIN/rabbitmqctl" -n "$node" "$@"
}
queues() {
    local node=$1
    shift
    common_env
    env "${COMMON_ENV[@]}" "$SBIN/rabbitmq-queues" -n "$node" "$@"
}

# --- Processes -------------------------------------------------------------------------------

# Is process $1 the Erlang VM of node name $2? Checked by its program (beam.smp) and by the
# RABBITMQ_NODENAME it was started with, so a stale pid file that now names some other process
# is not believed.
is_node_pid() {
    local pid=$1 name=$2 comm envs
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    { read -r comm <"/proc/$pid/comm"; } 2>/dev/null || return 1
    [[ $comm == beam.smp ]] || return 1
    envs=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ") || return 1
    [[ $'\n'$envs$'\n' == *$'\n'RABBITMQ_NODENAME=$name$'\n'* ]]
}

# Print the pid of node $1's Erlang VM if it runs; fail if it does not. The pid file is asked
# first; if there is none (a node that died before writing it, or a directory removed under a
# running node), every beam.smp on the machine is looked at.
node_pid() {
    local i=$1 name pid p
    name=$(node_name "$i")
    pid=$(cat "$(pid_file "$i")" 2>/dev/null) || pid=
    pid=${pid//[!0-9]/}
    if [[ -n $pid ]] && is_node_pid "$pid" "$name"; then
        echo "$pid"
        return 0
    fi
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if is_node_pid "$p" "$name"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

is_running() { node_pid "$1" >/dev/null; }

# Is process $1 alive? A zombie (dead, not yet reaped by its parent) counts as dead.
pid_alive() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# The first node that runs, as a node name; fails if none does.
running_node() {
    local i
    for i in "${NODES[@]}"; do
        if is_running "$i"; then
            node_name "$i"
            return 0
        fi
    done
    return 1
}

# The port of the cluster that HERALD_CLUSTER_DIR was made for (empty if it was not made by this
# script), and whether any node of the cluster on port $1 runs, found by name among all
# beam.smp processes.
dir_port() { cat "$DIR/$MARKER" 2>/dev/null || true; }
port_cluster_running() {
    local p envs comm
    for p in /proc/[0-9]*; do
        { read -r comm <"$p/comm"; } 2>/dev/null || continue
        [[ $comm == beam.smp ]] || continue
        envs=$(tr '\0' '\n' 2>/dev/null <"$p/environ") || continue
        [[ $'\n'$envs$'\n' == *$'\n'RABBITMQ_NODENAME=herald$1-[123]@localhost$'\n'* ]] && return 0
    done
    return 1
}

# Refuse (exit 1) to use or remove HERALD_CLUSTER_DIR while it holds the files of a running
# cluster on another port: one directory serves one cluster at a time.
check_dir_is_ours() {
    local p
    p=$(dir_port)
    if [[ -n $p && $p != "$PORT" ]] && port_cluster_running "$p"; then
        die "$DIR is in use by the running cluster on port $p;" \
            "set HERALD_CLUSTER_DIR to another directory for port $PORT"
    fi
}

# Is anything listening on TCP port $1 (on any address)?
port_taken() {
    if command -v ss >/dev/null; then
        [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# Fail (exit 3) if node $1's AMQP or distribution port is taken, or epmd already knows a node of
# that name (from another cluster directory on the same port).
check_ports() {
    local i=$1 p name
    for p in "$(amqp_port "$i")" "$(dist_port "$i")"; do
        if port_taken "$p"; then
            say "port $p (for node $i, $(node_name "$i")) is taken on this machine;" \
                "pick another HERALD_CLUSTER_PORT (see 'ss -ltnp sport = :$p')"
            exit 3
        fi
    done
    name=$(node_name "$i")
    if command -v epmd >/dev/null &&
        epmd -names 2>/dev/null | grep -q "^name ${name%@*} at port"; then
        say "a node named $name is already running (another cluster on the same port?)"
        exit 3
    fi
}

# --- Starting and waiting --------------------------------------------------------------------

# Make the cluster's directory, its cookie and node $i's files. The cookie is made once per
# cluster and kept across `restart`.
make_files() {
    mkdir -p "$DIR"
    echo "$PORT" >"$DIR/$MARKER"
    touch "$DIR/rabbitmq-env.conf"
    if [[ ! -s $DIR/.erlang.cookie ]]; then
        # Erlang refuses a cookie file that others may read, hence 400.
        rm -f "$DIR/.erlang.cookie"
        (umask 077 && od -An -N20 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/.erlang.cookie")
        chmod 400 "$DIR/.erlang.cookie"
    fi
    local i nd
    for i in "${NODES[@]}"; do
        nd=$(node_dir "$i")
        mkdir -p "$nd/mnesia" "$nd/log" "$nd/conf.d"
        cat >"$nd/rabbitmq.conf" <<EOF
# Node $i of the cluster made by deploy/cluster/cluster.sh ($(node_name "$i")).
# AMQP on loopback only; guest/guest works from loopback, as loopback_users is left alone.
listeners.tcp.local = 127.0.0.1:$(amqp_port "$i")
cluster_name = herald$PORT
# The log is in log/; console.log (stdout) keeps only what comes before logging starts.
log.console = false
EOF
        # No plugins ("[]." is an empty list in Erlang's syntax).
        echo '[].' >"$nd/enabled_plugins"
        # Read instead of /etc/rabbitmq/rabbitmq-env.conf; all settings come from the environment.
        echo '# Empty on purpose: cluster.sh sets everything in the environment.' \
            >"$nd/rabbitmq-env.conf"
    done
}

# Start node $1 in the background, in a session of its own so it outlives this script, with its
# output in log/console.log and nothing tied to the caller's stdin/stdout (a test harness reading
# our stdout would otherwise wait for the node to exit). Sets LAUNCHERS[$1] to a process that
# lives as long as the node: rabbitmq-server's shell script, the parent of the Erlang VM (or
# setsid, if it had to fork, waiting for that script).
LAUNCHERS=()
launch_node() {
    local i=$1 nd
    nd=$(node_dir "$i")
    node_env "$i"
    rm -f "$(pid_file "$i")"
    (cd "$nd" && exec setsid -w env "${NODE_ENV[@]}" "$SBIN/rabbitmq-server") \
        >>"$nd/log/console.log" 2>&1 </dev/null &
    LAUNCHERS[i]=$!
}

# Show why node $1 failed, for a failure message: the first errors in its log, and the end of
# its console output (where a boot that fails says "init terminating in do_boot" and why).
show_logs() {
    local i=$1 log console
    log=$(node_dir "$i")/log/$(node_name "$i").log
    console=$(node_dir "$i")/log/console.log
    if grep -q -F '[error]' "$log" 2>/dev/null; then
        say "--- first errors in $log:"
        grep -m 10 -F '[error]' "$log" | cut -c 1-300 >&2
    fi
    if [[ -s $console ]]; then
        say "--- last lines of $console:"
        tail -n 6 "$console" | cut -c 1-300 >&2
    fi
}

# Wait until node $1 has booted. A node that dies on the way (say on a taken port) is noticed by
# its launcher exiting, and reported with the end of its logs. First wait for the node to
# register with epmd, which says its Erlang distribution is up (cheap to ask, unlike rabbitmqctl,
# whose every call costs a second of CPU that the booting nodes want); then
# `rabbitmqctl await_startup` follows the boot to its end.
wait_booted() {
    local i=$1 name deadline said=''
    name=$(node_name "$i")
    deadline=$((SECONDS + START_TIMEOUT))
    if command -v epmd >/dev/null; then
        until epmd -names 2>/dev/null | grep -q "^name ${name%@*} at port"; do
            check_booting "$i" "$deadline" ''
            sleep 0.2
        done
    fi
    until said=$(ctl "$name" await_startup -t "$((deadline - SECONDS + 1))" 2>&1); do
        check_booting "$i" "$deadline" "$said"
        sleep 1
    done
}

# Fail if any node launched has exited (exit 3 if it was for a taken port), or if node $1's
# deadline $2 has passed; $3 is what rabbitmqctl said last, if anything.
check_booting() {
    local i=$1 deadline=$2 said=$3 j name
    for j in "${!LAUNCHERS[@]}"; do
        pid_alive "${LAUNCHERS[j]}" && continue
        name=$(node_name "$j")
        show_logs "$j"
        if cat "$(node_dir "$j")"/log/*.log 2>/dev/null |
            grep -q -E 'eaddrinuse|dist_port_already_used'; then
            say "node $j ($name) could not listen on its port $(amqp_port "$j") or" \
                "$(dist_port "$j"): taken by another program since this script checked"
            exit 3
        fi
        die "node $j ($name) exited while starting; its logs are in $(node_dir "$j")/log"
    done
    if ((SECONDS >= deadline)); then
        show_logs "$i"
        [[ -z $said ]] || say "rabbitmqctl await_startup said: $(head -n 3 <<<"$said" | tr '\n' ' ')"
        die "node $i ($(node_name "$i")) did not start within ${START_TIMEOUT}s"
    fi
}

# The running nodes that node $1 (a name) reports, one per line.
running_nodes_seen_by() {
    local json
    json=$(ctl "$1" cluster_status --formatter json -t 10 2>/dev/null) || return 1
    json=$(grep -o '"running_nodes":\[[^]]*\]' <<<"$json") || return 1
    grep -o '"[^"]*@[^"]*"' <<<"$json" | tr -d '"'
}

# Wait until node name $1 reports all of the node names that follow it as running.
wait_running() {
    local asked=$1 deadline seen n missing
    shift
    deadline=$((SECONDS + START_TIMEOUT))
    while :; do
        seen=$(running_nodes_seen_by "$asked") || seen=
        missing=
        for n in "$@"; do
            grep -qxF "$n" <<<"$seen" || missing+=" $n"
        done
        [[ -z $missing ]] && return 0
        ((SECONDS < deadline)) ||
            die "$asked does not show$missing running after ${START_TIMEOUT}s"
        sleep 1
    done
}

# If `start` fails half-way, kill the nodes it started (they would otherwise run on unseen) but
# keep HERALD_CLUSTER_DIR with their logs; `stop` removes it.
start_failed() {
    local rc=$? i pid
    ((rc != 0)) || return 0
    for i in "${NODES[@]}"; do
        if pid=$(node_pid "$i"); then kill -9 "$pid" 2>/dev/null || true; fi
    done
    say "start failed; the nodes it started are killed; logs are in $DIR (cluster.sh stop removes it)"
}

cmd_start() {
    local i started=$SECONDS n1
    find_rabbitmq
    for i in "${NODES[@]}"; do
        if is_running "$i"; then
            die "node $i ($(node_name "$i")) is already running; 'cluster.sh stop' first" \
                "(or 'cluster.sh urls' for its URLs)"
        fi
    done
    # A directory of ours left by a run that was never stopped: start afresh. Anything else
    # that is in the way is not ours to delete.
    if [[ -e $DIR ]]; then
        if [[ -e $DIR/$MARKER ]]; then
            check_dir_is_ours
            rm -rf "$DIR"
        elif [[ -n $(ls -A "$DIR" 2>/dev/null) || ! -d $DIR ]]; then
            die "$DIR exists and was not made by cluster.sh; set HERALD_CLUSTER_DIR elsewhere"
        fi
    fi
    for i in "${NODES[@]}"; do check_ports "$i"; done

    trap start_failed EXIT
    make_files
    say "starting nodes $(node_name 1), $(node_name 2), $(node_name 3) in $DIR"
    for i in "${NODES[@]}"; do launch_node "$i"; done
    for i in "${NODES[@]}"; do
        wait_booted "$i"
        say "node $i is up ($((SECONDS - started))s)"
    done

    # Nodes 2 and 3 join node 1, one after the other: the RabbitMQ application stops on the
    # joining node (the Erlang VM stays up), it joins, and starts again.
    n1=$(node_name 1)
    for i in 2 3; do
        say "joining node $i to node 1"
        ctl "$(node_name "$i")" stop_app >&2
        ctl "$(node_name "$i")" join_cluster "$n1" >&2
        ctl "$(node_name "$i")" start_app >&2
    done
    wait_running "$n1" "$(node_name 1)" "$(node_name 2)" "$(node_name 3)"
    trap - EXIT
    say "cluster herald$PORT is up: 3 nodes running ($((SECONDS - started))s)"
    urls
}

cmd_status() {
    local i pid state node
    for i in "${NODES[@]}"; do
        if pid=$(node_pid "$i"); then state="running, pid $pid"; else state="not running"; fi
        printf 'node %s  %-24s amqp 127.0.0.1:%s  distribution %s  %s\n' \
            "$i" "$(node_name "$i")" "$(amqp_port "$i")" "$(dist_port "$i")" "$state"
    done
    node=$(running_node) || die "no node of cluster herald$PORT is running (directory $DIR)"
    find_rabbitmq
    echo
    ctl "$node" cluster_status
}

# The leader of quorum queue $1 in vhost /, as the node's index. Asks each running node in turn
# (the first that answers wins), so it works while a node is down. The leader comes from the
# queue's Raft members themselves (rabbitmq-queues quorum_status), which know of a new leader as
# soon as it is elected. Just after a leader's node is killed there may be none for a moment
# (the election takes about a second here), so it asks again for up to LEADER_WAIT seconds.
LEADER_WAIT=15
cmd_leader() {
    local queue=$1 deadline
    [[ -n $queue ]] || usage
    find_rabbitmq
    deadline=$((SECONDS + LEADER_WAIT))
    until find_leader "$queue"; do
        if ((SECONDS >= deadline)); then
            [[ -z $LAST_SAID ]] || say "the last node asked said: $LAST_SAID"
            die "no node of cluster herald$PORT could tell the leader of quorum queue" \
                "'$queue' within ${LEADER_WAIT}s"
        fi
        sleep 0.5
    done
}

# One try of cmd_leader: print the leader's index, or fail with LAST_SAID saying why.
LAST_SAID=''
find_leader() {
    local queue=$1 i out leader term member
    for i in "${NODES[@]}"; do
        is_running "$i" || continue
        if ! out=$(queues "$(node_name "$i")" quorum_status -p / "$queue" --formatter json \
            -t 10 2>&1); then
            if [[ $out == *not_found* ]]; then
                die "there is no queue '$queue' in vhost /"
            elif [[ $out == *"Cannot get quorum status"* ]]; then
                die "queue '$queue' is not a quorum queue"
            fi
            # This node did not answer (stopping, say): try the next.
            LAST_SAID=$(head -n 3 <<<"$out" | tr '\n' ' ')
            continue
        fi
        # A JSON list with one object per member, e.g. {"Node Name":"herald5701-2@localhost",
        # "Raft State":"leader",...,"Term":2,...}. Just after an election an old leader may not
        # know yet that it has been replaced; the leader of the highest term is the real one.
        leader='' term=-1
        while IFS= read -r member; do
            [[ $member == *'"Raft State":"leader"'* ]] || continue
            [[ $member =~ \"Term\":([0-9]+) ]] || continue
            ((BASH_REMATCH[1] > term)) || continue
            term=${BASH_REMATCH[1]}
            [[ $member =~ \"Node\ Name\":\"herald${PORT}-([123])@ ]] && leader=${BASH_REMATCH[1]}
        done < <(tr '{' '\n' <<<"$out")
        if [[ -n $leader ]]; then
            echo "$leader"
            return 0
        fi
        LAST_SAID="no member of '$queue' is leader just now (an election under way?)"
        return 1
    done
    [[ -n $LAST_SAID ]] || LAST_SAID="no node of the cluster is running"
    return 1
}

cmd_kill() {
    local i=$1 pid
    if ! pid=$(node_pid "$i"); then
        say "node $i ($(node_name "$i")) is not running"
        return 0
    fi
    kill -9 "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while pid_alive "$pid"; do
        ((SECONDS < deadline)) || die "node $i (pid $pid) is still alive after kill -9"
        sleep 0.05
    done
    rm -f "$(pid_file "$i")"
    say "node $i ($(node_name "$i"), pid $pid) killed"
}

cmd_restart() {
    local i=$1 started=$SECONDS name j asked
    name=$(node_name "$i")
    [[ -e $DIR/$MARKER ]] || die "no cluster in $DIR: 'cluster.sh start' first"
    [[ $(dir_port) == "$PORT" ]] ||
        die "$DIR holds the cluster on port $(dir_port), not $PORT (HERALD_CLUSTER_PORT)"
    find_rabbitmq
    if is_running "$i"; then
        say "node $i ($name) is already running"
    else
        check_ports "$i"
        make_files
        launch_node "$i"
        wait_booted "$i"
    fi
    # The cluster shows it running: ask another running node if there is one (it is their view
    # that counts), else node $i itself.
    asked=$name
    for j in "${NODES[@]}"; do
        if ((j != i)) && is_running "$j"; then
            asked=$(node_name "$j")
            break
        fi
    done
    wait_running "$asked" "$name"
    say "node $i ($name) is running in the cluster again ($((SECONDS - started))s)"
}

cmd_stop() {
    local i pid pids=() deadline
    for i in "${NODES[@]}"; do
        if pid=$(node_pid "$i"); then
            # RabbitMQ stops cleanly on SIGTERM, as on `rabbitmqctl stop`, without a CLI call.
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]} > 0)); then
        say "stopping ${#pids[@]} node(s) of cluster herald$PORT"
        deadline=$((SECONDS + STOP_TIMEOUT))
        for pid in "${pids[@]}"; do
            while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
            if pid_alive "$pid"; then
                say "pid $pid did not stop within ${STOP_TIMEOUT}s; killing it"
                kill -9 "$pid" 2>/dev/null || true
                while pid_alive "$pid"; do sleep 0.05; done
            fi
        done
    fi
    if [[ -e $DIR ]]; then
        [[ -e $DIR/$MARKER ]] ||
            die "$DIR was not made by cluster.sh; not removing it"
        check_dir_is_ours
        rm -rf "$DIR"
        say "removed $DIR"
    fi
}

case ${1:-} in
    start) [[ $# -eq 1 ]] || usage; cmd_start ;;
    urls) [[ $# -eq 1 ]] || usage; urls ;;
    status) [[ $# -eq 1 ]] || usage; cmd_status ;;
    leader) [[ $# -eq 2 ]] || usage; cmd_leader "$2" ;;
    kill) [[ $# -eq 2 ]] || usage; check_node_arg "$2"; cmd_kill "$2" ;;
    restart) [[ $# -eq 2 ]] || usage; check_node_arg "$2"; cmd_restart "$2" ;;
    stop) [[ $# -eq 1 ]] || usage; cmd_stop ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
