"""The real ThingsBoard IoT Gateway against a real Corral, on loopback.

Corral serves MQTT over TLS; a local mosquitto is the field bus; the gateway's MQTT connector
reads `sensor/<name>/data` from it and speaks the gateway API to Corral as a device marked as a
gateway, whose `Thermometer` type maps to a fleet of its own. Checked, each with a bounded wait:

1. the sub-device is created in the Thermometer fleet as a Thermometer sub-device, online, with
   its telemetry and attributes stored;
2. a shared attribute an operator sets reaches the field bus through the gateway's mapping;
3. a two-way job reaches the field device through the gateway and completes with its reply;
4. Corral restarts; the gateway reconnects by itself and its data flows again.

Run by run.sh, which prepares the venv. Exit status 0 when every check passed.
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as paho

HOST = "127.0.0.1"
STEP_TIMEOUT = 40.0


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def fail(msg):
    raise AssertionError(msg)


def wait_for(fn, what, timeout=STEP_TIMEOUT, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


class Corral:
    def __init__(self, binary, work):
        self.binary, self.work = binary, work
        self.data_dir = os.path.join(work, "corral-data")
        self.key = secrets.token_hex(20)
        self.http_port, self.tls_port = free_port(), free_port()
        self.base = f"http://{HOST}:{self.http_port}"
        self.proc = None
        self.log = open(os.path.join(work, "corral.log"), "ab")

    def start(self):
        env = dict(os.environ)
        env.update({
            "CORRAL_DATA_DIR": self.data_dir,
            "CORRAL_ADMIN_KEY": self.key,
            "CORRAL_LOG__FORMAT": "json",
            "CORRAL_MQTT__TLS_LISTEN": f"{HOST}:{self.tls_port}",
            "CORRAL_HTTP__LISTEN": f"{HOST}:{self.http_port}",
            "CORRAL_HTTPS__ENABLED": "false",
            "CORRAL_STORE__MIN_FREE_MB": "16",
        })
        for k in ("CORRAL_CONFIG", "CORRAL_ADMIN_KEY_FILE"):
            env.pop(k, None)
        self.proc = subprocess.Popen([self.binary, "serve"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ready, "corral /readyz", 30)

    def ready(self):
        if self.proc.poll() is not None:
            fail(f"corral exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def call(self, method, path, body=None, timeout=10):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + "/api/v1" + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def ok(self, method, path, body=None):
        status, doc = self.call(method, path, body)
        if status not in (200, 201, 204):
            fail(f"{method} {path} -> {status} {doc}")
        return doc

    def device(self, fleet, name):
        doc = self.ok("GET", f"/devices?fleet_id={fleet}&name={name}")
        return next((d for d in doc["items"] if d["name"] == name), None)


class FieldBus:
    """mosquitto on a free loopback port, and a client playing the field devices."""

    def __init__(self, work):
        self.port = free_port()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} {HOST}\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(work, "mosquitto.log"), "ab"),
                                     start_new_session=True)
        self.got = []
        self.cond = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="field-devices")
        self.client.on_message = self._on_message
        wait_for(self._connect, "connect to mosquitto", 10)
        self.client.loop_start()
        self.client.subscribe("sensor/+/firmwareVersion", qos=1)
        self.client.subscribe("sensor/+/request/#", qos=1)

    def _connect(self):
        try:
            self.client.connect(HOST, self.port)
            return True
        except OSError:
            return False

    def _on_message(self, client, userdata, m):
        with self.cond:
            self.got.append((m.topic, m.payload.decode(errors="replace")))
            self.cond.notify_all()

    def wait_message(self, pred, what, timeout=STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, (t, p) in enumerate(self.got):
                    if pred(t, p):
                        return self.got.pop(i)
                left = deadline - time.monotonic()
                if left <= 0:
                    fail(f"{what}: nothing within {timeout:.0f} s (got {self.got})")
                self.cond.wait(left)

    def publish(self, topic, body):
        self.client.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()
        self.proc.terminate()
        self.proc.wait(10)


def gateway_config(dir, corral, token, bus):
    tb = {
        "thingsboard": {
            "host": "localhost",
            "port": corral.tls_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600,
                           "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": 8196,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60,
            "handleDeviceRenaming": True,
            "security": {"type": "accessToken", "accessToken": token,
                         "caCert": os.path.join(dir, "ca.pem")},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "mqtt", "name": "MQTT Broker Connector", "configuration": "mqtt.json"}],
    }
    mqtt = {
        "broker": {"host": HOST, "port": bus.port, "clientId": "tb-gateway", "version": 5,
                   "maxMessageNumberPerWorker": 10, "maxNumberOfWorkers": 10,
                   "cleanSession": True, "cleanStart": True, "sessionExpiryInterval": 0,
                   "security": {"type": "anonymous"}},
        "mapping": [{
            "topicFilter": "sensor/+/data",
            "subscriptionQos": 1,
            "converter": {
                "type": "json",
                "deviceInfo": {
                    "deviceNameExpressionSource": "topic",
                    "deviceNameExpression": "(?<=sensor/)(.*?)(?=/data)",
                    "deviceProfileExpressionSource": "constant",
                    "deviceProfileExpression": "Thermometer",
                },
                "sendDataOnlyOnChange": False,
                "timeout": 60000,
                "attributes": [{"type": "string", "key": "model", "value": "${sensorModel}"}],
                "timeseries": [{"type": "double", "key": "temperature", "value": "${temp}"}],
            },
        }],
        "requestsMapping": {
            "connectRequests": [],
            "disconnectRequests": [],
            "attributeRequests": [],
            "attributeUpdates": [{
                "retain": False,
                "deviceNameFilter": ".*",
                "attributeFilter": "firmwareVersion",
                "topicExpression": "sensor/${deviceName}/firmwareVersion",
                "valueExpression": "{\"firmwareVersion\":\"${attributeValue}\"}",
            }],
            "serverSideRpc": [{
                "type": "twoWay",
                "deviceNameFilter": ".*",
                "methodFilter": "echo",
                "requestTopicExpression": "sensor/${deviceName}/request/${methodName}/${requestId}",
                "responseTopicExpression": "sensor/${deviceName}/response/${methodName}/${requestId}",
                "responseTopicQoS": 1,
                "responseTimeout": 10000,
                "valueExpression": "${params}",
            }],
        },
    }
    with open(os.path.join(dir, "tb_gateway.json"), "w") as f:
        json.dump(tb, f, indent=1)
    with open(os.path.join(dir, "mqtt.json"), "w") as f:
        json.dump(mqtt, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="corral-tb-gateway-")
    corral, bus, gw = Corral(args.binary, work), None, None
    passed = []
    ok = False
    try:
        corral.start()
        ws = corral.ok("POST", "/workspaces", {"name": "plant"})["id"]
        edge = corral.ok("POST", "/fleets", {"workspace_id": ws, "name": "edge"})["id"]
        thermo = corral.ok("POST", "/fleets", {"workspace_id": ws, "name": "thermometers"})["id"]
        doc = corral.ok("POST", "/devices", {"fleet_id": edge, "name": "edge-gateway", "gateway": True,
                                              "gateway_type_fleets": {"Thermometer": thermo}})
        token = doc["credentials"]["token"]
        bus = FieldBus(work)
        conf = os.path.join(work, "gateway-config")
        os.makedirs(conf)
        with urllib.request.urlopen(f"{corral.base}/api/v1/ca.pem", timeout=5) as r:
            with open(os.path.join(conf, "ca.pem"), "wb") as f:
                f.write(r.read())
        shutil.copy(os.path.join(os.path.dirname(args.gateway), "..", "lib",
                                 f"python{sys.version_info.major}.{sys.version_info.minor}",
                                 "site-packages", "thingsboard_gateway", "config", "logs.json"), conf)
        gateway_config(conf, corral, token, bus)
        gw_dir = os.path.join(work, "gateway-run")
        os.makedirs(gw_dir)
        env = dict(os.environ, TB_GW_CONFIG_DIR=conf)
        gw = subprocess.Popen([args.gateway], cwd=gw_dir, env=env,
                              stdout=open(os.path.join(work, "gateway.out"), "ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)

        # 1. data from the field bus: a Thermometer sub-device with its data.
        t0 = time.monotonic()

        def sub():
            bus.publish("sensor/SN-001/data", {"temp": 21.5, "sensorModel": "T1000"})
            d = corral.device(thermo, "SN-001")
            if not d:
                return None
            latest = corral.ok("GET", f"/devices/{d['id']}/telemetry/latest?keys=temperature")
            return d if latest["data"].get("temperature", {}).get("value") == 21.5 else None

        d = wait_for(sub, "SN-001 created with its telemetry", interval=1.0)
        if d["gateway"] != {"role": "sub_device", "gateway_id": doc["device"]["id"], "device_type": "Thermometer"}:
            fail(f"SN-001 is not the gateway's Thermometer sub-device: {d}")
        if d["status"] != "online":
            fail(f"SN-001 is {d['status']}")
        sid = d["id"]
        wait_for(lambda: corral.ok("GET", f"/devices/{sid}/attributes?scope=client")
                 .get("client", {}).get("model", {}).get("value") == "T1000", "client attribute model")
        passed.append(f"1 sub-device created with data ({time.monotonic() - t0:.1f} s after the gateway started)")

        # 2. a shared attribute reaches the field bus through the gateway's mapping.
        corral.ok("PUT", f"/devices/{sid}/attributes/shared", {"firmwareVersion": "2.0"})
        _, body = bus.wait_message(lambda t, p: t == "sensor/SN-001/firmwareVersion", "attribute update")
        if json.loads(body) != {"firmwareVersion": "2.0"}:
            fail(f"attribute update on the field bus: {body}")
        passed.append("2 shared attribute pushed to the field device")

        # 3. a two-way job: request on the field bus, the field device's reply completes it.
        result = {}

        def create():
            result["r"] = corral.call("POST", f"/devices/{sid}/jobs?wait_ms=20000",
                                      {"method": "echo", "params": {"x": 1}, "two_way": True}, timeout=30)

        th = threading.Thread(target=create)
        th.start()
        topic, body = bus.wait_message(lambda t, p: t.startswith("sensor/SN-001/request/echo/"), "RPC request")
        rid = topic.rsplit("/", 1)[1]
        bus.publish(f"sensor/SN-001/response/echo/{rid}", {"x": 1})
        th.join(40)
        status, job = result.get("r", (None, None))
        if status != 201 or job.get("state") != "succeeded" or job.get("result") != {"x": 1}:
            fail(f"two-way job -> {status} {job}")
        passed.append(f"3 two-way job answered by the field device (request id {rid})")

        # 4. Corral restarts: the gateway reconnects and data flows again.
        corral.stop()
        corral.start()

        def fresh():
            bus.publish("sensor/SN-001/data", {"temp": 22.5, "sensorModel": "T1000"})
            latest = corral.ok("GET", f"/devices/{sid}/telemetry/latest?keys=temperature")
            return latest["data"].get("temperature", {}).get("value") == 22.5

        t0 = time.monotonic()
        wait_for(fresh, "telemetry after Corral restarted", timeout=60, interval=1.0)
        passed.append(f"4 reconnected after a restart ({time.monotonic() - t0:.1f} s)")
        ok = True
    except AssertionError as e:
        print(f"FAIL: {e}")
    finally:
        for line in passed:
            print(f"PASS {line}")
        if gw and gw.poll() is None:
            os.killpg(gw.pid, signal.SIGTERM)
            try:
                gw.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(gw.pid, signal.SIGKILL)
        if bus:
            bus.stop()
        corral.stop()
        if not ok:
            for name in ("gateway.out", "corral.log"):
                p = os.path.join(work, name)
                if os.path.exists(p):
                    with open(p, errors="replace") as f:
                        tail = f.read()[-4000:]
                    print(f"--- end of {name}:\n{tail}")
            gwlogs = os.path.join(work, "gateway-run", "logs")
            if os.path.isdir(gwlogs):
                for n in sorted(os.listdir(gwlogs)):
                    with open(os.path.join(gwlogs, n), errors="replace") as f:
                        tail = f.read()[-2000:]
                    if tail.strip():
                        print(f"--- end of gateway log {n}:\n{tail}")
        if args.keep or not ok:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"summary: {len(passed)} of 4 passed")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
