#!/usr/bin/env bash
# A/B in one run: weir with header affinity (x-user-id over 10,000 keys) vs the plain 90/10 split.
# Proxy alone on core 1 (one worker), nginx backends and wrk on core 0; 3 alternating reps.
# usage: benches/e2e/affinity_ab.sh   (after cargo build --release --bin weir; needs nginx, wrk)
set -u
W=${WEIR:-target/release/weir}
D=$(mktemp -d)
cat > $D/backend.conf <<B
worker_processes 1; daemon off; pid $D/b.pid; error_log $D/b.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000; client_body_temp_path $D; proxy_temp_path $D; fastcgi_temp_path $D; uwsgi_temp_path $D; scgi_temp_path $D;
 server { listen 127.0.0.1:18181; add_header X-Revision hello-00001 always; return 200 "hello 1\n"; }
 server { listen 127.0.0.1:18182; add_header X-Revision hello-00002 always; return 200 "hello 2\n"; } }
B
for mode in plain affinity; do
  aff=""; [ $mode = affinity ] && aff="    affinity: {header: x-user-id}"
  cat > $D/$mode.yaml <<C
services:
  - name: hello
    traffic:
      - {revision: hello-00001, percent: 90}
      - {revision: hello-00002, percent: 10}
$aff
revisions:
  - {name: hello-00001, endpoints: ["127.0.0.1:18181"]}
  - {name: hello-00002, endpoints: ["127.0.0.1:18182"]}
C
done
cat > $D/keys.lua <<'L'
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/", {["Host"]="hello.default.example.com", ["x-user-id"]="user-" .. (i % 10000)})
end
L
taskset -c 0 nginx -c $D/backend.conf & BP=$!
sleep 1
for rep in 1 2 3; do for mode in plain affinity; do
  taskset -c 1 $W proxy --config $D/$mode.yaml --http 127.0.0.1:18180 --admin 127.0.0.1:18190 --threads 1 --log-level error & P=$!
  for i in $(seq 50); do curl -s -o /dev/null -H 'Host: hello.default.example.com' http://127.0.0.1:18180/ && break; sleep 0.1; done
  taskset -c 0 wrk -t1 -c64 -d2s -s $D/keys.lua http://127.0.0.1:18180/ >/dev/null
  r=$(taskset -c 0 wrk -t1 -c64 -d8s -s $D/keys.lua http://127.0.0.1:18180/ | awk '/Requests\/sec/{print $2}')
  echo "rep $rep $mode req/s $r"
  kill $P; wait $P 2>/dev/null
done; done
kill $BP; wait $BP 2>/dev/null
