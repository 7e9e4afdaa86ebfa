#!/usr/bin/env bash
# TLS handshakes per second and HTTPS keep-alive throughput: weir vs nginx in one run,
# same certificate (ECDSA P-256), same nginx backends, 90/10 split by SNI/Host.
# Proxy alone on core 1 (one worker), backends and h2load on core 0; targets alternate.
#   handshakes: h2load --h1 -n N -c N  (one request per connection = one full handshake each)
#   keep-alive: h2load --h1 -n 200000 -c 64  (HTTP/1.1 over one TLS connection per client)
#   h2:         h2load -n 200000 -c 64 -m 10 (HTTP/2 over TLS, ALPN h2)
# usage: benches/e2e/tls.sh [REPS]   (after cargo build --release --bin weir; needs nginx,
#        h2load from nghttp2-client, openssl). Adds `127.0.0.1 hello.default.example.com` to
#        /etc/hosts if missing, so that clients send the SNI the proxies select by.
set -u
REPS=${1:-3}
W=${WEIR:-target/release/weir}
D=$(mktemp -d)
HOST=hello.default.example.com
grep -q " $HOST\$" /etc/hosts || echo "127.0.0.1 $HOST" >> /etc/hosts
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$D/key.pem" -out "$D/cert.pem" -days 2 -subj "/CN=$HOST" \
  -addext "subjectAltName=DNS:$HOST" 2>/dev/null
TEMPS="client_body_temp_path $D; proxy_temp_path $D; fastcgi_temp_path $D; uwsgi_temp_path $D; scgi_temp_path $D;"
cat > "$D/backend.conf" <<B
worker_processes 1; daemon off; pid $D/b.pid; error_log $D/b.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000; $TEMPS
 server { listen 127.0.0.1:18281; add_header X-Revision hello-00001 always; return 200 "hello 1\n"; }
 server { listen 127.0.0.1:18282; add_header X-Revision hello-00002 always; return 200 "hello 2\n"; } }
B
cat > "$D/nginx.conf" <<N
worker_processes 1; daemon off; pid $D/n.pid; error_log $D/n.err warn;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 10000000; $TEMPS
 upstream split { server 127.0.0.1:18281 weight=90; server 127.0.0.1:18282 weight=10; keepalive 128; }
 server { listen 127.0.0.1:18443 ssl http2; server_name $HOST;
   ssl_certificate $D/cert.pem; ssl_certificate_key $D/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
   location / { proxy_pass http://split; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
N
cat > "$D/weir.yaml" <<C
services:
  - name: hello
    traffic:
      - {revision: hello-00001, percent: 90}
      - {revision: hello-00002, percent: 10}
revisions:
  - {name: hello-00001, endpoints: ["127.0.0.1:18281"]}
  - {name: hello-00002, endpoints: ["127.0.0.1:18282"]}
tls:
  - {hosts: [$HOST], cert: cert.pem, key: key.pem}
C
taskset -c 0 nginx -c "$D/backend.conf" & BP=$!
sleep 1
start() {
  case $1 in
    weir) taskset -c 1 "$W" proxy --config "$D/weir.yaml" --http 127.0.0.1:18280 --https 127.0.0.1:18443 \
            --admin 127.0.0.1:18290 --threads 1 --log-level error & P=$! ;;
    nginx) taskset -c 1 nginx -c "$D/nginx.conf" & P=$! ;;
  esac
  for _ in $(seq 50); do curl -sk -o /dev/null "https://$HOST:18443/" && return; sleep 0.1; done
}
rate() { awk '/^finished in/{gsub(",","",$4); print $4}'; }
echo -e "rep\ttarget\thandshakes/s\th1 keep-alive req/s\th2 req/s"
for rep in $(seq "$REPS"); do for t in weir nginx; do
  start $t
  taskset -c 0 h2load --h1 -n 2000 -c 64 "https://$HOST:18443/" >/dev/null 2>&1   # warm-up
  hs=$(taskset -c 0 h2load --h1 -n 4000 -c 4000 "https://$HOST:18443/" 2>/dev/null | rate)
  ka=$(taskset -c 0 h2load --h1 -n 200000 -c 64 "https://$HOST:18443/" 2>/dev/null | rate)
  h2=$(taskset -c 0 h2load -n 200000 -c 64 -m 10 "https://$HOST:18443/" 2>/dev/null | rate)
  echo -e "$rep\t$t\t$hs\t$ka\t$h2"
  kill "$P"; wait "$P" 2>/dev/null; sleep 0.5
done; done
kill "$BP"; wait "$BP" 2>/dev/null
