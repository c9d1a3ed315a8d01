#!/usr/bin/env bash
# The compose smoke test: proves docker-compose.yml builds, serves and scores, under rootful
# podman (no Docker engine or registry needed). One command, runnable alone:
#   scripts/compose_smoke.sh
# It installs podman (Debian packages) and podman-compose (PyPI, in its own venv), points
# podman at config files in a work folder (never edits /etc), builds a Debian 12 base image with
# debootstrap once (cached as localhost/ci-python-base), then: compose up, waits for the gRPC
# health check to say SERVING, classifies real test images from the host and compares them with
# onnxruntime run on the host on the model files copied out of the container, runs the score
# profile, scales to 2 replicas behind the load balancer, and brings everything down.
# Exit codes: 0 passed, 1 failed, 77 skipped (podman cannot be installed or run here).
set -euo pipefail
SCRIPT=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$SCRIPT")/.."

SKIPPED=77
WORK=${FMNIST_COMPOSE_WORK:-/var/tmp/fmnist-compose}
VENV=${FMNIST_VENV:-.venv}
[[ $VENV = /* ]] || VENV=$PWD/$VENV  # relative or absolute as given (./run's rule)
BASE_IMAGE=localhost/ci-python-base
# Bumped whenever build_base_image changes, so that a cached base image of an older recipe is
# rebuilt.
BASE_RECIPE=2
# A compose project and an image tag of its own for each run, so that two runs at once (two CI
# jobs) neither tear down each other's containers nor build over each other's images (nor a
# user's `latest`). A project named in FMNIST_COMPOSE_PROJECT is torn down first, as an
# interrupted run of that name left it; the images of a tag of its own are untagged at the end.
PROJECT=${FMNIST_COMPOSE_PROJECT:-fmnist-smoke-$$-$RANDOM}
GIVEN_TAG=${FMNIST_IMAGE_TAG:-}
export FMNIST_IMAGE_TAG=${FMNIST_IMAGE_TAG:-$PROJECT}
SERVE_IMAGE=localhost/fashion-mnist-service:$FMNIST_IMAGE_TAG
LB_IMAGE=localhost/fashion-mnist-lb:$FMNIST_IMAGE_TAG
COMPOSE=()
COMPOSE_UP=
SCRATCH=
PODMAN_COMPOSE_VERSION=1.6.0
PACKAGES=(podman runc netavark aardvark-dns iptables debootstrap)

log() { printf '==> [%4ss] %s\n' "$SECONDS" "$*" >&2; }
fail() { echo "compose smoke test FAILED: $*" >&2; exit 1; }
skip() { echo "compose smoke test SKIPPED: $*" >&2; exit "$SKIPPED"; }

# Rootful podman needs root: re-run under passwordless sudo, or skip.
become_root() {
    [ "$(id -u)" = 0 ] && return 0
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n env "PATH=$PATH" "FMNIST_COMPOSE_WORK=$WORK" "FMNIST_VENV=$VENV" \
            "FMNIST_COMPOSE_PROJECT=$PROJECT" ${GIVEN_TAG:+"FMNIST_IMAGE_TAG=$GIVEN_TAG"} \
            bash "$SCRIPT" "$@"
    fi
    skip "rootful podman needs root, and this user is not root and has no passwordless sudo"
}

install_packages() {
    local missing=() package
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || skip "no apt-get to install ${missing[*]}"
    log "apt-get install ${missing[*]}"
    apt-get update -qq || skip "apt-get update failed, cannot install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null || skip "apt-get install ${missing[*]} failed"
}

# Config files in the work folder, so /etc stays untouched. The ulimits stay within this
# sandbox's hard limits; runc + cgroupfs because crun rejects the hybrid cgroup layout.
configure_podman() {
    write_podman_configs
    export CONTAINERS_CONF="$WORK/containers.conf" CONTAINERS_STORAGE_CONF="$WORK/storage.conf"
    podman info >/dev/null 2>"$WORK/podman-info.err" \
        || skip "podman cannot run here: $(tail -1 "$WORK/podman-info.err")"
}

write_podman_configs() {
    check_work_folder
    local nofile nproc
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
    mkdir -p "$WORK/storage" "$WORK/run" "$WORK/networks"
    cat >"$WORK/containers.conf.$$" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$WORK/run/libpod"

[network]
network_backend = "netavark"
network_config_dir = "$WORK/networks"
CONF
    cat >"$WORK/storage.conf.$$" <<CONF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run/storage"
CONF
    # renamed into place: a run already going (they share the folder) never reads a half file
    mv -f "$WORK/containers.conf.$$" "$WORK/containers.conf"
    mv -f "$WORK/storage.conf.$$" "$WORK/storage.conf"
}

# Root runs what it keeps in the work folder (podman-compose's venv, podman's configs, the rootfs
# it chroots into and prunes): a folder another user made first (/var/tmp is anyone's) or may
# write in would have root run their code, and write and delete through their symlinks. So it,
# and each folder above it, must be root's (or the sudo user's) and no one else's to write in (a
# sticky folder above it, as /var/tmp, aside). Made if missing; resolved: WORK names no symlink.
check_work_folder() {
    mkdir -p "$WORK" && WORK=$(realpath "$WORK") || fail "work folder $WORK: cannot make it"
    local dirs=("$WORK") dir=$WORK owner mode
    while [ "$dir" != / ]; do dir=${dir%/*}; dir=${dir:-/}; dirs+=("$dir"); done
    while read -r owner mode dir; do
        if [[ $owner != 0 && $owner != "$EUID" && $owner != "${SUDO_UID:-0}" ]]; then
            fail "work folder $WORK: $dir is uid $owner's, who could make root run their code" \
                "there; remove it, or set FMNIST_COMPOSE_WORK to a folder of root's"
        fi
        if (( 8#$mode & 8#022 )) && [[ $dir == "$WORK" || $(( 8#$mode & 8#1000 )) == 0 ]]; then
            fail "work folder $WORK: $dir (mode $mode) may be written by others, who could make" \
                "root run their code there; chmod go-w it, or set FMNIST_COMPOSE_WORK elsewhere"
        fi
    done < <(stat -c '%u %a %n' "${dirs[@]}")
}

# A Debian 12 image with python3-venv and the host's extra CA certificates (HTTPS to the
# package registries may go through a proxy that only those certificates make trusted).
build_base_image() {
    if [ "$(podman image inspect --format '{{index .Labels "fmnist.base-recipe"}}' "$BASE_IMAGE" 2>/dev/null)" = "$BASE_RECIPE" ]; then
        log "base image $BASE_IMAGE exists"
        return 0
    fi
    local mirror rootfs="$WORK/rootfs"
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk '$2=="bookworm"{print $1; exit}')
    mirror=${mirror:-http://deb.debian.org/debian/}
    log "debootstrap bookworm from $mirror (a few minutes, once)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=ca-certificates,python3-venv bookworm "$rootfs" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    # Slim like the official -slim images: no documentation, manuals or translations, now or
    # from packages installed later.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
CONF
    find "$rootfs/usr/share/doc" ! -type d ! -name copyright -delete
    rm -rf "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/man/*
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | podman import -q --change 'CMD ["python3"]' \
        --change "LABEL fmnist.base-recipe=$BASE_RECIPE" - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "base image $BASE_IMAGE built"
}

# podman-compose from PyPI, in a venv of its own in the work folder (kept between runs).
install_podman_compose() {
    local venv="$WORK/podman-compose-venv"
    if ! grep -q "podman-compose version $PODMAN_COMPOSE_VERSION" \
            <<<"$("$venv/bin/podman-compose" --version 2>/dev/null)"; then
        log "pip install podman-compose==$PODMAN_COMPOSE_VERSION"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION" >"$WORK/pip.log" 2>&1 \
            || { cat "$WORK/pip.log" >&2; fail "pip install podman-compose failed"; }
    fi
    COMPOSE=("$venv/bin/podman-compose" --project-name "$PROJECT" --file docker-compose.yml)
}

# The host side needs the project's client and onnxruntime (the serve extra).
host_python() {
    if ! "$VENV/bin/python" -c 'import onnxruntime, serving.client.cli' 2>/dev/null; then
        log "pip install -e .[serve] into $VENV"
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q -e ".[serve]" >"$WORK/pip.log" 2>&1 \
            || { cat "$WORK/pip.log" >&2; fail "pip install -e .[serve] failed"; }
    fi
    PYTHON="$VENV/bin/python"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

containers_of() {
    podman ps --all --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" --format '{{.Names}}'
}

# Podman runs health checks only through systemd timers, which this machine lacks: run them here.
wait_healthy() {
    local container=$1 deadline=$((SECONDS + 180))
    log "waiting for $container to be healthy"
    until podman healthcheck run "$container" >/dev/null 2>&1; do
        if [ "$(podman inspect --format '{{.State.Running}}' "$container")" != true ]; then
            podman logs "$container" >&2 || true
            fail "$container stopped before it was healthy"
        fi
        [ $SECONDS -lt $deadline ] || { podman logs "$container" >&2; fail "$container not healthy after 180 s"; }
        sleep 2
    done
}

# Calls of method Classify (or of any, with $2 = .) that a replica answered, from its
# Prometheus endpoint.
classify_calls() {
    local address
    address=$(podman port "$1" 9090)
    "$PYTHON" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' 2>/dev/null \
        "http://$address/metrics" | awk -v method="${2:-Classify}" \
        '/^fmnist_requests_total\{/ && $0 ~ "method=\"" method { calls += $2 } END { print calls + 0 }'
}

project_leftovers() {
    podman ps --all --quiet --filter "label=com.docker.compose.project=$PROJECT"
    podman network ls --quiet --filter "label=com.docker.compose.project=$PROJECT"
}

# compose down, plus what podman-compose's down misses: it knows replica 1 of a scaled service
# only, so the other replicas (and the load balancer depending on them) and the network remain.
teardown() {
    "${COMPOSE[@]}" --profile score --profile lb down --timeout 30 >"$SCRATCH/down.log" 2>&1 || true
    local containers networks
    mapfile -t containers < <(podman ps --all --quiet --filter "label=com.docker.compose.project=$PROJECT")
    [ ${#containers[@]} -eq 0 ] \
        || podman rm --force --depend --time 30 "${containers[@]}" >/dev/null 2>&1 || true
    mapfile -t networks < <(podman network ls --quiet --filter "label=com.docker.compose.project=$PROJECT")
    [ ${#networks[@]} -eq 0 ] || podman network rm --force "${networks[@]}" >/dev/null 2>&1 || true
    COMPOSE_UP=
}

cleanup() {
    local status=$?
    trap - EXIT
    if [ -n "$COMPOSE_UP" ]; then
        log "compose down"
        teardown
    fi
    [ -z "$SCRATCH" ] || rm -rf "$SCRATCH"
    # its own tag only: the layers stay, as the next build's cache
    [ -n "$GIVEN_TAG" ] || podman untag "$SERVE_IMAGE" "$SERVE_IMAGE" >/dev/null 2>&1 || true
    [ -n "$GIVEN_TAG" ] || podman untag "$LB_IMAGE" "$LB_IMAGE" >/dev/null 2>&1 || true
    exit $status
}

main() {
    become_root "$@"
    install_packages
    configure_podman
    # Runs at once share the work folder: one at a time installs and builds what is kept there.
    exec 9>"$WORK/setup.lock"
    flock 9
    install_podman_compose
    host_python
    build_base_image
    exec 9>&-

    SCRATCH=$(mktemp -d)
    trap cleanup EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
    # What an interrupted earlier run may have left.
    teardown
    # Free host ports, so a server already listening on 50051 or 9090 does not get in the way.
    export BASE_IMAGE FMNIST_GRPC_PUBLISH FMNIST_HTTP_PUBLISH FMNIST_METRICS_PUBLISH \
        FMNIST_LB_PUBLISH FMNIST_LB_HTTP_PUBLISH
    local grpc_port http_port metrics_port lb_port lb_http_port
    grpc_port=$(free_port); http_port=$(free_port); metrics_port=$(free_port)
    lb_port=$(free_port); lb_http_port=$(free_port)
    FMNIST_GRPC_PUBLISH=127.0.0.1:$grpc_port
    FMNIST_HTTP_PUBLISH=127.0.0.1:$http_port
    FMNIST_METRICS_PUBLISH=127.0.0.1:$metrics_port
    FMNIST_LB_PUBLISH=127.0.0.1:$lb_port
    FMNIST_LB_HTTP_PUBLISH=127.0.0.1:$lb_http_port

    log "compose build (BASE_IMAGE=$BASE_IMAGE, tag $FMNIST_IMAGE_TAG)"
    "${COMPOSE[@]}" --profile lb build >"$SCRATCH/build.log" 2>&1 \
        || { tail -40 "$SCRATCH/build.log" >&2; fail "compose build failed"; }
    log "serve image: $(podman image inspect --format '{{.Size}}' "$SERVE_IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"

    log "compose up -d"
    COMPOSE_UP=1
    "${COMPOSE[@]}" up -d >"$SCRATCH/up.log" 2>&1 || { cat "$SCRATCH/up.log" >&2; fail "compose up failed"; }
    local classifier
    classifier=$(containers_of classifier)
    wait_healthy "$classifier"
    "$PYTHON" -m serving.client health --target "127.0.0.1:$grpc_port" \
        || fail "health check from the host did not answer SERVING"
    local logs  # read whole first: grep -q in a pipe may end it early, and pipefail fails it
    logs=$(podman logs "$classifier" 2>&1) || fail "podman logs failed: $logs"
    grep -q "workers serving" <<<"$logs" \
        || fail "the classifier does not serve with a worker per CPU: $(tail -3 <<<"$logs")"

    log "classify test images from the host and compare with onnxruntime on the container's models"
    podman cp "$classifier:/models" "$SCRATCH/models"
    podman cp "$classifier:/data" "$SCRATCH/data"
    "$PYTHON" scripts/compose_check.py --target "127.0.0.1:$grpc_port" \
        --http "http://127.0.0.1:$http_port" \
        --model-repository "$SCRATCH/models" --data-dir "$SCRATCH/data" \
        || fail "the service's answers differ from onnxruntime's"

    log "score profile"
    "${COMPOSE[@]}" --profile score run --rm -T score >"$SCRATCH/score.log" 2>&1 \
        || { cat "$SCRATCH/score.log" >&2; fail "the score profile failed"; }
    cat "$SCRATCH/score.log"

    log "stop drains: the server exits 0 on SIGTERM instead of being killed"
    "${COMPOSE[@]}" stop classifier >/dev/null 2>&1
    local exit_code
    exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$classifier")
    [ "$exit_code" = 0 ] || fail "the classifier exited with $exit_code on stop, expected 0"
    teardown

    # As README documents it: replicas on free host ports (deploy/scale.env), nginx in front.
    log "scale: 2 replicas behind the load balancer"
    COMPOSE_UP=1
    env -u FMNIST_GRPC_PUBLISH -u FMNIST_HTTP_PUBLISH -u FMNIST_METRICS_PUBLISH \
        "${COMPOSE[@]}" --env-file deploy/scale.env \
        --profile lb up -d --scale classifier=2 >"$SCRATCH/scale.log" 2>&1 \
        || { cat "$SCRATCH/scale.log" >&2; fail "compose up --scale classifier=2 failed"; }
    local replicas replica
    mapfile -t replicas < <(containers_of classifier)
    [ ${#replicas[@]} = 2 ] || fail "expected 2 classifier replicas, found: ${replicas[*]}"
    for replica in "${replicas[@]}"; do wait_healthy "$replica"; done
    "$PYTHON" scripts/compose_check.py --target "127.0.0.1:$lb_port" \
        --http "http://127.0.0.1:$lb_http_port" \
        --model-repository "$SCRATCH/models" --data-dir "$SCRATCH/data" \
        || fail "the answers through the load balancer differ from onnxruntime's"
    FMNIST_DATA_DIR="$SCRATCH/data" "$PYTHON" -m serving.client classify --test-index 0 1 2 \
        --target "127.0.0.1:$lb_port" || fail "fmnist classify through the load balancer failed"
    local calls
    for replica in "${replicas[@]}"; do
        calls=$(classify_calls "$replica") || fail "$replica: its metrics endpoint (port 9090) did not answer"
        log "$replica answered $calls Classify calls"
        [ "$calls" -gt 0 ] || fail "$replica answered no call: the load balancer does not reach it"
    done

    # A replica restarted (`compose restart`, stop and start, recreated with a new image) comes
    # back at another address: the load balancer must send it calls there and hold none on the
    # address it had.
    replica=${replicas[0]}
    log "restart $replica: calls through the load balancer reach it at its new address"
    podman restart --time 30 "$replica" >/dev/null 2>&1 || fail "podman restart $replica failed"
    wait_healthy "$replica"
    local i started deadline=$((SECONDS + 15))
    calls=0
    for ((i = 1; calls == 0; i++)); do
        [ $SECONDS -lt $deadline ] \
            || fail "$replica answered none of $((i - 1)) calls in 15 s after its restart: the load balancer does not send it its share"
        started=$SECONDS
        "$PYTHON" -m serving.client classify --test-index "$i" --timeout 5 \
            --target "127.0.0.1:$lb_port" >/dev/null 2>"$SCRATCH/lb-call.err" \
            || fail "call $i through the load balancer after a replica's restart failed after $((SECONDS - started)) s: $(tail -1 "$SCRATCH/lb-call.err")"
        curl -sf -m 5 -o /dev/null "http://127.0.0.1:$lb_http_port/v1/test-images/$i" \
            || fail "HTTP request $i through the load balancer after a replica's restart failed"
        # any method: each `fmnist classify` makes two calls, and nginx takes turns per call
        calls=$(classify_calls "$replica" .) || fail "$replica: its metrics endpoint did not answer"
    done
    log "$replica answered call $((i - 1)) after its restart"

    log "compose down"
    teardown
    local leftover
    leftover=$(project_leftovers)
    [ -z "$leftover" ] || fail "left after compose down: $leftover"
    log "compose smoke test passed"
}

# Sourced (tests/test_compose_smoke_names.py), it only sets its names.
[[ ${BASH_SOURCE[0]} != "$0" ]] || main "$@"
