#!/bin/sh
# The `lb` image's entry point: nginx over every replica of the compose service `classifier`,
# kept current. nginx resolves an upstream's name only when it starts, and a replica that is
# restarted, recreated or added comes at another address: with the addresses of its
# start, nginx held calls on a gone one (a connect to it waits until ARP gives up: 3 to 30 s)
# and never sent any to the replica's new address. So this writes the upstreams from DNS
# (compose's resolver drops stopped containers at once), starts nginx, and every 2 s writes
# them again and reloads nginx when they changed (a reload lets calls in flight finish).
set -u
UPSTREAMS=/tmp/nginx-upstreams.conf
PIDFILE=/tmp/nginx.pid  # nginx-grpc-lb.conf's

# The upstream blocks for the addresses `classifier` has now, into $UPSTREAMS.new. When DNS
# says the name does not exist (no replica runs), upstreams of one server marked down, which
# fail each call at once (nginx's 502, "no live upstreams"; the gone addresses, kept, made each
# call wait nginx's 2 s connect timeout, then 502), and status 2. Status 1, nothing written,
# when DNS did not answer (a transient failure: a replica may be there, its calls go on).
# getent cannot tell the two apart (status 2 for both); Python's getaddrinfo can (the base
# image has it).
# `classifier.`, absolute: while no replica runs, compose's DNS says `classifier` does not exist,
# and the resolver then tries it under the host's search domains (`classifier.<domain>`, which
# a wildcard record or a LAN host may answer), and calls went to that outside host. And only an
# address on a network of this container (no gateway between): a replica is on compose's, where
# Docker's DNS, knowing no `classifier`, asks the host's resolvers (a LAN's router answers its
# hosts' bare names), and calls, bearer tokens and images, went to a host outside. Such an
# address is as no replica (status 2), said in $outside.
render() {
    addresses=$(python3 -I -S -c '
import socket, struct, sys
try:
    found = socket.getaddrinfo("classifier.", None, socket.AF_INET, socket.SOCK_STREAM)
except socket.gaierror as error:
    sys.exit(2 if error.errno in (socket.EAI_NONAME, socket.EAI_NODATA) else 1)
with open("/proc/net/route") as table:  # (network, mask) of each route with no gateway
    linked = [(int(f[1], 16), int(f[7], 16)) for f in map(str.split, list(table)[1:])
              if int(f[2], 16) == 0 and not int(f[3], 16) & 0x200]  # not RTF_REJECT
addresses = sorted({address[4][0] for address in found})
near = [a for a in addresses if any(
    struct.unpack("=I", socket.inet_aton(a))[0] & mask == network for network, mask in linked)]
print(" ".join(near or addresses))
sys.exit(0 if near else 2)')
    case $? in
        0) server=50051 http=8080 down= outside= ;;
        2) outside=${addresses:+" ($addresses, which answered for it, is on no network of"}
           outside=${outside:+"$outside this container: not a replica)"}
           addresses=127.0.0.1 server=1 http=1 down=" down" ;;  # never tried: down
        *) outside= && return 1 ;;
    esac
    {
        echo "upstream classifier {"
        for address in $addresses; do echo "    server $address:$server$down;"; done
        echo "}"
        echo "upstream classifier_http {"
        for address in $addresses; do echo "    server $address:$http$down;"; done
        echo "    keepalive 32;"
        echo "}"
    } >"$UPSTREAMS.new"
    [ -z "$down" ] || return 2
}

# Until nginx runs, a stop (SIGQUIT, the image's STOPSIGNAL; SIGTERM; SIGINT) ends this at once:
# as a container's process 1 it gets only the signals it traps (`compose stop` waited 10 s).
trap 'exit 0' QUIT TERM INT
# SIGHUP (`docker kill -s HUP lb`, a reload while nginx was process 1) looks up the replicas now
# and reloads nginx, as a change of replicas does; a reload waits until nginx has written its
# pid file (after it set its signal handlers: a SIGHUP before would end it, its default action).
reload= outside=
trap 'reload=SIGHUP' HUP
# Until a replica resolves, nginx has nothing to serve.
until render; do
    echo "nginx-lb.sh: waiting for the service classifier to resolve$outside" >&2
    sleep 1
done
mv "$UPSTREAMS.new" "$UPSTREAMS"
# -e: its error log before it reads the configuration (by default /var/log/nginx/error.log,
# which only root may open) is stderr too.
nginx -e stderr -g "daemon off;" &
nginx=$!
# SIGQUIT (the image's STOPSIGNAL), SIGTERM and SIGINT go to nginx, whose exit ends this.
trap 'kill -QUIT "$nginx" 2>/dev/null' QUIT TERM INT
# "No replica" is taken once three looks in a row (4 s) say so: a DNS may say for a moment that
# the name does not exist while replicas run (podman's aardvark-dns as one restarts, the host's
# resolver answering while it is away), and each call failed at once until the next look.
absent=0
while kill -0 "$nginx" 2>/dev/null; do
    sleep 2 &
    wait $! 2>/dev/null
    render
    case $? in
        1) now= ;;  # DNS did not answer: the upstreams as they are
        2) absent=$((absent + 1)) now=
           [ "$absent" -lt 3 ] || now="no replica of classifier now (calls fail at once, 502)$outside" ;;
        *) absent=0 now="classifier replicas now $addresses" ;;
    esac
    if [ -n "$now" ] && ! cmp -s "$UPSTREAMS.new" "$UPSTREAMS"; then
        mv "$UPSTREAMS.new" "$UPSTREAMS"
        reload=$now
    fi
    if [ -n "$reload" ] && [ "$(cat "$PIDFILE" 2>/dev/null)" = "$nginx" ]; then
        echo "nginx-lb.sh: $reload: reloading nginx" >&2
        reload=
        kill -HUP "$nginx"
    fi
done
wait "$nginx"
