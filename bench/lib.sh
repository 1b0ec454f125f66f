# Shared by the bench scripts (sourced, not run): free ports and the nginx upstream.

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_upstream WORKDIR: nginx answering a small body from memory on a free port. Sets
# `up_port` and adds nginx's pid to the `pids` array.
start_upstream() {
  local dir=$1
  up_port="$(port)"
  cat > "$dir/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$up_port;
    location / { return 200 "hello from upstream\n"; }
  }
}
NGINX
  nginx -c "$dir/nginx.conf" -p "$dir" &
  pids+=($!)
}
