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

# The upstream blocks for the addresses `classifier` has now, into $UPSTREAMS.new; fails if none.
# `classifier.`, absolute: while no replica runs, compose's DNS says `classifier` does not exist,
# and the resolver then tries it under the host's search domains (`classifier.<domain>`, which
# a wildcard record or a LAN host may answer), and calls went to that outside host.
render() {
    addresses=$(getent ahostsv4 classifier. | awk '{ print $1 }' | sort -u)
    [ -n "$addresses" ] || return 1
    {
        echo "upstream classifier {"
        for address in $addresses; do echo "    server $address:50051;"; done
        echo "}"
        echo "upstream classifier_http {"
        for address in $addresses; do echo "    server $address:8080;"; done
        echo "    keepalive 32;"
        echo "}"
    } >"$UPSTREAMS.new"
}

# Until nginx runs, a stop (SIGQUIT, the image's STOPSIGNAL; SIGTERM; SIGINT) ends this at once:
# as a container's process 1 it gets only the signals it traps (`compose stop` waited 10 s).
trap 'exit 0' QUIT TERM INT
until render; do
    echo "nginx-lb.sh: waiting for the service classifier to resolve" >&2
    sleep 1
done
mv "$UPSTREAMS.new" "$UPSTREAMS"
# -e: its error log before it reads the configuration (by default /var/log/nginx/error.log,
# which only root may open) is stderr too.
nginx -e stderr -g "daemon off;" &
nginx=$!
# SIGQUIT (the image's STOPSIGNAL), SIGTERM and SIGINT go to nginx, whose exit ends this.
trap 'kill -QUIT "$nginx" 2>/dev/null' QUIT TERM INT
while kill -0 "$nginx" 2>/dev/null; do
    sleep 2 &
    wait $! 2>/dev/null
    if render && ! cmp -s "$UPSTREAMS.new" "$UPSTREAMS"; then
        mv "$UPSTREAMS.new" "$UPSTREAMS"
        echo "nginx-lb.sh: classifier replicas now $(echo $addresses): reloading nginx" >&2
        kill -HUP "$nginx"
    fi
done
wait "$nginx"
