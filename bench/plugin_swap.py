#!/usr/bin/env python3
"""Plugin swap latency and failures under load: wasmesh vs Envoy, same control plane and agent.

For each gateway (our proxy, then real Envoy 1.40), starts `wasmesh control-plane` watching a
temp directory, `wasmesh agent` in front of it, the gateway over ADS through the agent, and an
upstream; 4 client threads send requests on keep-alive connections the whole time. The script
then edits the WasmPlugin N times and measures, each time, from the file save (atomic rename) to
the first response carrying the new value. Prints both gateways side by side. Not a test.

Usage: bench/plugin_swap.py [N]     (env WASMESH=path/to/wasmesh, ENVOY=path/to/envoy)
Build first: cargo build -p wasmesh (debug is fine) or --release for release figures.
"""
import http.client, json, os, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
WASMESH = os.environ.get("WASMESH", os.path.join(TARGET, "debug", "wasmesh"))
ENVOY = os.environ.get("ENVOY", shutil.which("envoy") or "envoy")
PLUGIN = os.path.join(TARGET, "wasm-plugins", "bin", "headers.wasm")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def plugin_yaml(v):
    return f"""apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: swap, namespace: bench}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  url: file://{PLUGIN}
  pluginConfig:
    response_add: {{x-version: "{v}"}}
"""


def routing_yaml(gw, up):
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: up, namespace: bench}}
spec:
  hosts: [up.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {up}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: bench}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {gw}, name: http, protocol: HTTP}}, hosts: ['*']}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: bench}}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - route: [{{destination: {{host: up.local}}}}]
"""


def bootstrap(agent, admin):
    return {
        "node": {"id": "router~127.0.0.1~gw.bench~bench.svc.cluster.local", "cluster": "gw.bench",
                 "metadata": {"NAMESPACE": "bench", "LABELS": {"istio": "ingressgateway"}}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
                              "cds_config": {"ads": {}, "resource_api_version": "V3"},
                              "lds_config": {"ads": {}, "resource_api_version": "V3"}},
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": agent}}}}]}]}}]},
    }


class Load:
    def __init__(self, port, clients=4):
        self.port, self.stop, self.ok, self.failed, self.last = port, False, 0, 0, None
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def run(self):
        conn = None
        while not self.stop:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/")
                r = conn.getresponse(); r.read()
                with self.lock:
                    if r.status == 200:
                        self.ok += 1; self.last = r.getheader("x-version")
                    else:
                        self.failed += 1
            except Exception:
                with self.lock:
                    self.failed += 1
                conn = None
                time.sleep(0.01)

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join()


def run(kind):
    d = tempfile.mkdtemp(prefix="wasmesh-swap-")
    cfg = os.path.join(d, "config"); os.makedirs(cfg)
    gw, up, xds, agent, admin = (free_port() for _ in range(5))
    procs = []
    log = open(os.path.join(d, "log"), "w")
    def spawn(args):
        procs.append(subprocess.Popen(args, stdout=log, stderr=log, cwd=d)); return procs[-1]
    try:
        spawn([sys.executable, "-m", "http.server", str(up), "--bind", "127.0.0.1"])
        write(os.path.join(cfg, "routing.yaml"), routing_yaml(gw, up))
        write(os.path.join(cfg, "plugin.yaml"), plugin_yaml("v0"))
        spawn([WASMESH, "control-plane", "--config-dir", cfg, "--xds-addr", f"127.0.0.1:{xds}"])
        spawn([WASMESH, "agent", "--listen", f"127.0.0.1:{agent}", "--discovery-address", f"127.0.0.1:{xds}",
               "--cache-dir", os.path.join(d, "cache"), "--metrics-addr", ""])
        with open(os.path.join(d, "gw.json"), "w") as f:
            json.dump(bootstrap(agent, admin), f)
        if kind == "wasmesh":
            gwp = spawn([WASMESH, "proxy", "-c", os.path.join(d, "gw.json"), "--concurrency", "1"])
        else:
            gwp = spawn([ENVOY, "-c", os.path.join(d, "gw.json"), "--concurrency", "1", "--base-id", str(admin), "-l", "error"])
        deadline = time.time() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", gw, timeout=2); c.request("GET", "/")
                r = c.getresponse(); r.read()
                if r.status == 200 and r.getheader("x-version") == "v0":
                    break
            except Exception:
                pass
            if time.time() > deadline:
                raise SystemExit(f"{kind}: gateway not serving the plugin; log in {d}/log")
            time.sleep(0.05)
        rss_kib = int(open(f"/proc/{gwp.pid}/status").read().split("VmRSS:")[1].split()[0])
        load = Load(gw)
        time.sleep(0.5)
        lat = []
        for i in range(1, N + 1):
            v = f"v{i}"
            t0 = time.time()
            write(os.path.join(cfg, "plugin.yaml"), plugin_yaml(v))
            while load.last != v and time.time() - t0 < 10:
                time.sleep(0.002)
            lat.append((time.time() - t0) * 1000 if load.last == v else float("inf"))
            time.sleep(0.2)
        load.finish()
        return {"lat": lat, "ok": load.ok, "failed": load.failed, "rss": rss_kib}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except Exception:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)


def main():
    if not os.path.exists(PLUGIN):
        raise SystemExit(f"{PLUGIN} missing: cargo build -p test-plugins")
    res = {k: run(k) for k in ("wasmesh", "envoy")}
    print(f"\nplugin swap: save WasmPlugin -> first response with the new value ({N} edits, 4 clients, keep-alive)")
    print(f"{'':28}{'wasmesh':>14}{'envoy':>14}")
    for name, f in [("p50 (ms)", lambda r: statistics.median(r["lat"])),
                    ("max (ms)", lambda r: max(r["lat"])),
                    ("requests ok", lambda r: r["ok"]),
                    ("requests failed", lambda r: r["failed"]),
                    ("gateway RSS (MiB)", lambda r: r["rss"] / 1024)]:
        print(f"{name:28}{f(res['wasmesh']):>14.1f}{f(res['envoy']):>14.1f}")


if __name__ == "__main__":
    main()
