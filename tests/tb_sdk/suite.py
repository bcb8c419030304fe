#!/usr/bin/env python3
"""External-client suite: the real ThingsBoard Python SDK (tb-mqtt-client 1.13.14) against a real
`corral` binary.

Usage: suite.py BINARY [--only SUBSTR ...] [--keep] [--verbose]

Starts `BINARY serve` on free 127.0.0.1 ports with a fresh data directory, runs every check
(each makes its own workspace, fleet and devices), prints PASS/FAIL/SKIP per check and a summary,
stops the server and exits 1 if any check failed. Every wait is bounded.

The device side uses only the SDK's public API (TBDeviceMqttClient, TBPublishInfo, provision(),
TBHTTPDevice.provision()); the admin side uses urllib against the REST API.
"""

import argparse
import base64
import ctypes
import datetime
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# The SDK imports mmh3 (or tries to pip-install it at import time); run.sh installs it up front.
from tb_device_http import TBHTTPDevice  # noqa: E402
from tb_device_mqtt import TBDeviceMqttClient, TBPublishInfo  # noqa: E402

HOST = "127.0.0.1"
CONNECT_TIMEOUT = 10.0  # seconds to wait for is_connected()
REFUSED_WINDOW = 3.0  # a refused client must stay disconnected this long
REST_TIMEOUT = 5.0  # seconds to wait for telemetry/status to show up over REST
PROVISION_MAX = 10.0  # provision() must return within this (its own limit is 60 s)
CHECK_TIMEOUT = 60.0  # hard limit per check, in case the SDK blocks somewhere unexpected


class CheckFailed(Exception):
    pass


class CheckSkipped(Exception):
    pass


def fail(msg):
    raise CheckFailed(msg)


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def uid(n=6):
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def bounded(fn, timeout, what):
    """Runs fn() in a daemon thread; returns its result, re-raises its exception, or fails the
    check after `timeout` seconds (the thread is abandoned)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            box["error"] = e

    t = threading.Thread(target=run, name=f"bounded:{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        fail(f"{what}: no return within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def poll(fn, timeout, interval=0.1):
    """Calls fn() until it returns something truthy or `timeout` passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# certificates


def make_self_signed(workdir, cn):
    """EC P-256 self-signed device certificate; returns (cert_path, key_path, cert_pem, der)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return write_pair(workdir, cn, cert_pem, key_pem) + (
        cert_pem,
        cert.public_bytes(serialization.Encoding.DER),
    )


def write_pair(workdir, stem, cert_pem, key_pem):
    cert_path = os.path.join(workdir, f"{stem}.crt")
    key_path = os.path.join(workdir, f"{stem}.key")
    with open(cert_path, "w") as f:
        f.write(cert_pem)
    with open(key_path, "w") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    return cert_path, key_path


# --------------------------------------------------------------------------------------------
# the server


def _pdeathsig():
    """In the child: get SIGTERM if the suite dies without cleaning up (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


class Server:
    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        self.log_path = os.path.join(workdir, "corral.log")
        self.admin_key = "".join(
            secrets.choice(string.ascii_letters + string.digits) for _ in range(39)
        )
        self.admin_key = "k" + self.admin_key  # starts with a letter: never read as a TOML number
        self.http_port = free_port()
        self.plain_port = free_port()
        # ProvisionClient only uses TLS when the port is literally 8883: take it when it is free
        # so that provisioning over TLS can be checked too.
        self.tls_port = 8883 if port_is_free(8883) else free_port()
        self.proc = None
        self.ca_path = os.path.join(workdir, "ca.pem")

    @property
    def base(self):
        return f"http://{HOST}:{self.http_port}"

    def start(self):
        env = dict(os.environ)
        env.update(
            {
                "CORRAL_DATA_DIR": self.data_dir,
                "CORRAL_ADMIN_KEY": self.admin_key,
                "CORRAL_LOG__FORMAT": "json",
                "CORRAL_MQTT__TLS_LISTEN": f"{HOST}:{self.tls_port}",
                "CORRAL_MQTT__PLAIN_ENABLED": "true",
                "CORRAL_MQTT__PLAIN_LISTEN": f"{HOST}:{self.plain_port}",
                "CORRAL_HTTP__LISTEN": f"{HOST}:{self.http_port}",
                "CORRAL_HTTPS__ENABLED": "false",
            }
        )
        for k in ("CORRAL_CONFIG", "CORRAL_ADMIN_KEY_FILE"):
            env.pop(k, None)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "serve"],
            env=env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_pdeathsig,
        )
        log.close()
        pidfile = os.environ.get("TB_SDK_PIDFILE")
        if pidfile:
            with open(pidfile, "w") as f:
                f.write(str(self.proc.pid))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral exited with {self.proc.returncode} before /readyz")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("/readyz did not answer 200 within 30 s")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        pidfile = os.environ.get("TB_SDK_PIDFILE")
        if pidfile and self.proc is not None and os.path.exists(pidfile):
            open(pidfile, "w").close()  # stopped: nothing left for run.sh to kill

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.readlines()[-lines:]
        except OSError:
            return []


# --------------------------------------------------------------------------------------------
# admin REST


class Api:
    def __init__(self, base, key):
        self.base = base
        self.key = key

    def call(self, method, path, body=None, auth=True, timeout=10):
        """Returns (status, parsed JSON or raw text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def ok(self, method, path, body=None, expect_status=(200, 201), auth=True):
        status, doc = self.call(method, path, body, auth=auth)
        if status not in expect_status:
            fail(f"{method} {path} -> {status} {short(doc)}")
        return doc

    # registry helpers

    def workspace_fleet(self, prefix):
        ws = self.ok("POST", "/api/v1/workspaces", {"name": f"{prefix}-ws-{uid()}"})
        fl = self.ok("POST", "/api/v1/fleets", {"workspace_id": ws["id"], "name": f"{prefix}-fl"})
        return ws["id"], fl["id"]

    def device(self, fleet_id, name):
        """Creates a device; returns (device_id, access_token)."""
        doc = self.ok("POST", "/api/v1/devices", {"fleet_id": fleet_id, "name": name})
        return doc["device"]["id"], doc["credentials"]["token"]

    def new_device(self, prefix):
        _, fleet = self.workspace_fleet(prefix)
        return self.device(fleet, f"{prefix}-dev")

    def add_credential(self, device_id, body):
        return self.ok("POST", f"/api/v1/devices/{device_id}/credentials", body, expect_status=(201,))

    def provisioning(self, fleet_id, strategy="allow_create_new_devices", **extra):
        body = {"strategy": strategy, **extra}
        doc = self.ok("PUT", f"/api/v1/fleets/{fleet_id}/provisioning", body, expect_status=(200,))
        expect(isinstance(doc, dict) and doc.get("key") and doc.get("secret"),
               f"provisioning settings lack key/secret: {short(doc)}")
        return doc["key"], doc["secret"]

    def find_device(self, fleet_id, name):
        q = urllib.parse.urlencode({"fleet_id": fleet_id, "name": name})
        doc = self.ok("GET", f"/api/v1/devices?{q}")
        for d in doc.get("items", []):
            if d.get("name", "").lower() == name.lower():
                return d
        return None

    def status(self, device_id):
        return self.ok("GET", f"/api/v1/devices/{device_id}").get("status")

    def latest(self, device_id, key):
        q = urllib.parse.urlencode({"keys": key})
        doc = self.ok("GET", f"/api/v1/devices/{device_id}/telemetry/latest?{q}")
        point = (doc or {}).get("data", {}).get(key)
        return None if point is None else point.get("value")


def short(doc, n=300):
    s = doc if isinstance(doc, str) else json.dumps(doc)
    return s if len(s) <= n else s[:n] + "..."


# --------------------------------------------------------------------------------------------
# the device side


class Suite:
    def __init__(self, server, api, workdir):
        self.server = server
        self.api = api
        self.workdir = workdir
        self.clients = []  # every TBDeviceMqttClient made, stopped after its check
        self.results = []  # (name, verdict, reason, seconds)

    # -- SDK helpers ------------------------------------------------------------------------

    def client(self, host=HOST, port=None, **kwargs):
        c = TBDeviceMqttClient(host, port=port, **kwargs)
        self.clients.append(c)
        return c

    def connect(self, c, tls=False, cert_file=None, key_file=None, ca_certs=None, timeout=CONNECT_TIMEOUT):
        """connect() and wait for is_connected(); returns the CONNACK reason seen, if any."""
        seen = {}

        def on_connect(client, userdata, flags, rc, *extra):
            seen["rc"] = rc

        bounded(
            lambda: c.connect(
                callback=on_connect,
                tls=tls,
                ca_certs=(ca_certs or self.server.ca_path) if tls else None,
                cert_file=cert_file,
                key_file=key_file,
            ),
            timeout,
            "connect()",
        )
        if not poll(c.is_connected, timeout):
            fail(f"not connected within {timeout:.0f} s (CONNACK: {rc_text(seen.get('rc'))})")
        return seen.get("rc")

    def expect_refused(self, c, tls=False, cert_file=None, key_file=None):
        """The connection must fail: a TLS/socket error from connect(), or no is_connected()
        within REFUSED_WINDOW. Returns a description of how it was refused."""
        seen = {}

        def on_connect(client, userdata, flags, rc, *extra):
            seen.setdefault("rc", rc)

        try:
            bounded(
                lambda: c.connect(
                    callback=on_connect,
                    tls=tls,
                    ca_certs=self.server.ca_path if tls else None,
                    cert_file=cert_file,
                    key_file=key_file,
                ),
                CONNECT_TIMEOUT,
                "connect()",
            )
        except ConnectionRefusedError as e:  # nothing listening is not a refusal
            fail(f"connect() raised {type(e).__name__}: {e}")
        except (ssl.SSLError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as e:
            return f"connect() raised {type(e).__name__}: {e}"
        deadline = time.monotonic() + REFUSED_WINDOW
        while time.monotonic() < deadline:
            if c.is_connected():
                fail("connection was accepted")
            time.sleep(0.05)
        return f"never connected; CONNACK {rc_text(seen.get('rc'))}"

    def telemetry(self, c, values):
        """send_telemetry(values) and TBPublishInfo.get() == 0 with the PUBACK in."""
        info = bounded(lambda: c.send_telemetry(values), 10, "send_telemetry()")
        expect(isinstance(info, TBPublishInfo), f"send_telemetry returned {info!r}")
        rc = bounded(info.get, 10, "TBPublishInfo.get()")
        expect(rc == TBPublishInfo.TB_ERR_SUCCESS, f"TBPublishInfo.get() = {rc!r}, want 0")
        infos = info.message_info if isinstance(info.message_info, list) else [info.message_info]
        expect(infos, "send_telemetry published nothing")
        # get() waits about 1 s per message; the PUBACK must be in by then (spec §10.4).
        expect(all(mi.is_published() for mi in infos), "no PUBACK within the SDK's 1 s wait")

    def expect_latest(self, device_id, key, value):
        if not poll(lambda: self.api.latest(device_id, key) == value, REST_TIMEOUT):
            fail(f"latest {key} over REST is {self.api.latest(device_id, key)!r}, want {value!r}")

    def expect_status(self, device_id, want):
        if not poll(lambda: self.api.status(device_id) == want, REST_TIMEOUT):
            fail(f"device status is {self.api.status(device_id)!r}, want {want!r}")

    def round_trip(self, c, device_id, key="temperature", value=None, tls=False, **connect_kw):
        """Connect, send one value, check it over REST."""
        if value is None:
            value = round(20 + secrets.randbelow(1000) / 100, 2) + 0.25
        self.connect(c, tls=tls, **connect_kw)
        self.telemetry(c, {key: value})
        self.expect_latest(device_id, key, value)
        return value

    def stop_clients(self):
        clients, self.clients = self.clients, []
        for c in clients:
            try:
                c.stop()
                bounded(c.disconnect, 5, "disconnect()")
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass

    def provision(self, key, secret, port=None, **kw):
        """TBDeviceMqttClient.provision(); returns (response or None, seconds taken)."""
        port = port or self.server.plain_port
        t0 = time.monotonic()
        resp = bounded(
            lambda: TBDeviceMqttClient.provision(HOST, key, secret, port=port, **kw),
            70,
            "provision()",
        )
        return resp, time.monotonic() - t0

    # -- running --------------------------------------------------------------------------

    def run(self, name, fn):
        t0 = time.monotonic()
        try:
            note = bounded(fn, CHECK_TIMEOUT, name)
            verdict, reason = "PASS", note or ""
        except CheckSkipped as e:
            verdict, reason = "SKIP", str(e)
        except CheckFailed as e:
            verdict, reason = "FAIL", str(e)
        except Exception as e:  # noqa: BLE001
            verdict = "FAIL"
            reason = f"{type(e).__name__}: {e}"
            if os.environ.get("TB_SDK_VERBOSE"):
                traceback.print_exc()
        finally:
            self.stop_clients()
        dt = time.monotonic() - t0
        self.results.append((name, verdict, reason, dt))
        print(f"{verdict} {name} ({dt:.1f} s){': ' + reason if reason else ''}", flush=True)


def rc_text(rc):
    if rc is None:
        return "none received"
    value = getattr(rc, "value", rc)
    name = rc.getName() if hasattr(rc, "getName") else ""
    return f"0x{value:02x} {name}".strip() if isinstance(value, int) else str(rc)


# --------------------------------------------------------------------------------------------
# checks


def checks(s: Suite):
    api, srv = s.api, s.server

    def token_tls():
        dev, token = api.new_device("tok-tls")
        # "localhost" exercises the DNS SAN; the SDK checks the hostname.
        c = s.client("localhost", port=srv.tls_port, username=token)
        s.connect(c, tls=True)
        s.telemetry(c, {"temperature": 21.5})
        s.expect_latest(dev, "temperature", 21.5)
        s.expect_status(dev, "online")
        bounded(c.disconnect, 5, "disconnect()")
        s.expect_status(dev, "offline")

    def token_plain():
        dev, token = api.new_device("tok-plain")
        c = s.client(port=srv.plain_port, username=token)
        s.connect(c)
        s.telemetry(c, {"temperature": 22.5})
        s.expect_latest(dev, "temperature", 22.5)
        s.expect_status(dev, "online")

    def wrong_token():
        api.new_device("tok-wrong")
        plain = s.expect_refused(s.client(port=srv.plain_port, username="wrong-" + uid(20)))
        tls = s.expect_refused(s.client(port=srv.tls_port, username="wrong-" + uid(20)), tls=True)
        return f"plain: {plain}; tls: {tls}"

    def mqtt_basic():
        dev, _ = api.new_device("basic")
        cid, user, pw = f"cid-{uid()}", f"user-{uid()}", f"pw-{uid(12)}"
        api.add_credential(dev, {"type": "mqtt_basic", "client_id": cid, "username": user, "password": pw})
        s.round_trip(s.client(port=srv.plain_port, username=user, password=pw, client_id=cid), dev)
        s.round_trip(s.client(port=srv.tls_port, username=user, password=pw, client_id=cid), dev,
                     key="humidity", tls=True)
        bad = s.expect_refused(
            s.client(port=srv.plain_port, username=user, password=pw + "x", client_id=cid))
        return f"wrong password: {bad}"

    def x509_self_signed():
        dev, _ = api.new_device("x509")
        cert, key, pem, _ = make_self_signed(s.workdir, f"x509-{uid()}")
        api.add_credential(dev, {"type": "x509_certificate", "certificate_pem": pem})
        s.round_trip(s.client(port=srv.tls_port), dev, tls=True, cert_file=cert, key_file=key)
        s.expect_status(dev, "online")
        other, other_key, _, _ = make_self_signed(s.workdir, f"x509-unreg-{uid()}")
        refused = s.expect_refused(s.client(port=srv.tls_port), tls=True, cert_file=other, key_file=other_key)
        return f"unregistered cert: {refused}"

    def x509_issued():
        dev, _ = api.new_device("issued")
        doc = api.add_credential(dev, {"type": "issued_certificate"})
        bundle = doc.get("bundle") or {}
        for field in ("private_key_pem", "certificate_pem", "ca_pem"):
            expect(bundle.get(field), f"bundle lacks {field}: {short(doc)}")
        stem = f"issued-{uid()}"
        cert, key = write_pair(s.workdir, stem, bundle["certificate_pem"], bundle["private_key_pem"])
        ca = os.path.join(s.workdir, f"{stem}-ca.pem")
        with open(srv.ca_path) as f:
            server_ca = f.read()
        with open(ca, "w") as f:  # the server CA, plus the bundle's CA if it is another one
            f.write(server_ca if bundle["ca_pem"].strip() in server_ca else server_ca + "\n" + bundle["ca_pem"])
        s.round_trip(s.client(port=srv.tls_port), dev, tls=True, cert_file=cert, key_file=key, ca_certs=ca)

    # -- provisioning over MQTT (spec §5.9) --

    def prov_fleet(prefix, strategy="allow_create_new_devices"):
        _, fleet = api.workspace_fleet(prefix)
        key, secret = api.provisioning(fleet, strategy)
        return fleet, key, secret

    def provisioned_ok(resp, dt, ctype):
        expect(resp is not None, f"provision() returned None after {dt:.1f} s")
        expect(resp.get("status") == "SUCCESS", f"status {resp.get('status')!r}: {short(resp)}")
        expect(resp.get("credentialsType") == ctype, f"credentialsType {resp.get('credentialsType')!r}, want {ctype}")
        return resp.get("credentialsValue")

    def provisioned_device(fleet, name):
        d = api.find_device(fleet, name)
        expect(d is not None, f"no device {name!r} in the fleet after provisioning")
        return d["id"]

    def prov_generated_token():
        fleet, key, secret = prov_fleet("prov-gen")
        name = f"prov-gen-{uid()}"
        resp, dt = s.provision(key, secret, device_name=name)
        token = provisioned_ok(resp, dt, "ACCESS_TOKEN")
        expect(isinstance(token, str) and token, f"credentialsValue is not a token: {short(resp)}")
        dev = provisioned_device(fleet, name)
        s.round_trip(s.client(port=srv.plain_port, username=token), dev)
        return f"provision() took {dt:.1f} s"

    def prov_access_token():
        fleet, key, secret = prov_fleet("prov-tok")
        name, chosen = f"prov-tok-{uid()}", f"chosen-{uid(16)}"
        resp, dt = s.provision(key, secret, device_name=name, access_token=chosen)
        token = provisioned_ok(resp, dt, "ACCESS_TOKEN")
        expect(token == chosen, f"credentialsValue {token!r}, want the chosen token {chosen!r}")
        dev = provisioned_device(fleet, name)
        s.round_trip(s.client(port=srv.tls_port, username=chosen), dev, tls=True)

    def prov_mqtt_basic():
        fleet, key, secret = prov_fleet("prov-basic")
        name = f"prov-basic-{uid()}"
        cid, user, pw = f"cid-{uid()}", f"user-{uid()}", f"pw-{uid(12)}"
        # All three fields: the SDK sends JSON null for any left None (spec §5.9).
        resp, dt = s.provision(key, secret, device_name=name, client_id=cid, username=user, password=pw)
        value = provisioned_ok(resp, dt, "MQTT_BASIC")
        expect(isinstance(value, dict), f"credentialsValue is not an object: {short(resp)}")
        want = {"clientId": cid, "userName": user, "password": pw}
        for k, v in want.items():
            expect(value.get(k) == v, f"credentialsValue.{k} = {value.get(k)!r}, want {v!r}")
        dev = provisioned_device(fleet, name)
        s.round_trip(s.client(port=srv.plain_port, username=user, password=pw, client_id=cid), dev)

    def prov_x509():
        fleet, key, secret = prov_fleet("prov-x509")
        name = f"prov-x509-{uid()}"
        cert, ckey, _, der = make_self_signed(s.workdir, name)
        body = base64.b64encode(der).decode()  # "hash" is the certificate body, base64 DER
        resp, dt = s.provision(key, secret, device_name=name, hash=body)
        provisioned_ok(resp, dt, "X509_CERTIFICATE")
        dev = provisioned_device(fleet, name)
        s.round_trip(s.client(port=srv.tls_port), dev, tls=True, cert_file=cert, key_file=ckey)

    def prov_bad_secret():
        _, key, secret = prov_fleet("prov-bad")
        resp, dt = s.provision(key, secret + "x", device_name=f"prov-bad-{uid()}")
        expect(resp is None, f"provision() succeeded with a wrong secret: {short(resp)}")
        # With errorMsg in the response the SDK returns on its next 1 s tick; without it the
        # paho thread raises and provision() runs into its 60 s limit.
        expect(dt < PROVISION_MAX, f"provision() took {dt:.1f} s to fail (errorMsg missing?)")
        resp, dt2 = s.provision("no-such-key-" + uid(), secret, device_name=f"prov-bad-{uid()}")
        expect(resp is None, f"provision() succeeded with an unknown key: {short(resp)}")
        expect(dt2 < PROVISION_MAX, f"unknown key: provision() took {dt2:.1f} s to fail")
        return f"failed in {dt:.1f} s / {dt2:.1f} s"

    def prov_duplicate():
        fleet, key, secret = prov_fleet("prov-dup")
        name = f"prov-dup-{uid()}"
        api.device(fleet, name)
        resp, dt = s.provision(key, secret, device_name=name)
        expect(resp is None, f"provision() of an existing name succeeded: {short(resp)}")
        expect(dt < PROVISION_MAX, f"provision() took {dt:.1f} s to fail (errorMsg missing?)")
        return f"failed in {dt:.1f} s"

    def prov_pre_provisioned():
        fleet, key, secret = prov_fleet("prov-pre", "check_pre_provisioned_devices")
        name = f"prov-pre-{uid()}"
        dev, _ = api.device(fleet, name)
        resp, dt = s.provision(key, secret, device_name=name)
        token = provisioned_ok(resp, dt, "ACCESS_TOKEN")
        s.round_trip(s.client(port=srv.plain_port, username=token), dev)
        again, dt2 = s.provision(key, secret, device_name=name)
        expect(again is None, f"a second provision() of the same device succeeded: {short(again)}")
        missing, dt3 = s.provision(key, secret, device_name=f"prov-pre-missing-{uid()}")
        expect(missing is None, f"provision() of a device that does not exist succeeded: {short(missing)}")
        expect(max(dt2, dt3) < PROVISION_MAX, f"failures took {dt2:.1f} s / {dt3:.1f} s")

    def prov_tls():
        if srv.tls_port != 8883:
            raise CheckSkipped("the SDK provisions over TLS only on port 8883, which was taken")
        fleet, key, secret = prov_fleet("prov-tls")
        name = f"prov-tls-{uid()}"
        resp, dt = s.provision(key, secret, port=8883, device_name=name)
        token = provisioned_ok(resp, dt, "ACCESS_TOKEN")
        dev = provisioned_device(fleet, name)
        s.round_trip(s.client(port=srv.tls_port, username=token), dev, tls=True)

    # -- provisioning over HTTP (spec §7) --

    def http_provision():
        fleet, key, secret = prov_fleet("http-prov")
        name = f"http-prov-{uid()}"
        body = {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}
        status, doc = api.call("POST", "/api/v1/provision", body, auth=False)
        expect(status == 200, f"POST /api/v1/provision -> {status} {short(doc)}")
        expect(isinstance(doc, dict) and doc.get("status") == "SUCCESS", f"response {short(doc)}")
        expect(doc.get("credentialsType") == "ACCESS_TOKEN", f"credentialsType in {short(doc)}")
        token = doc.get("credentialsValue")
        expect(isinstance(token, str) and token, f"credentialsValue in {short(doc)}")
        dev = provisioned_device(fleet, name)
        s.round_trip(s.client(port=srv.plain_port, username=token), dev)

        # The SDK's own HTTP helper (requests): needs status SUCCESS and ACCESS_TOKEN.
        name2 = f"http-prov-sdk-{uid()}"
        device = bounded(lambda: TBHTTPDevice.provision(srv.base, name2, key, secret), 15,
                         "TBHTTPDevice.provision()")
        expect(device.token, "TBHTTPDevice.provision() gave no token")
        s.round_trip(s.client(port=srv.plain_port, username=device.token), provisioned_device(fleet, name2))

        bad = {"deviceName": f"http-prov-bad-{uid()}", "provisionDeviceKey": key,
               "provisionDeviceSecret": secret + "x"}
        status, doc = api.call("POST", "/api/v1/provision", bad, auth=False)
        expect(status == 200, f"bad secret: HTTP {status} (TB answers 200): {short(doc)}")
        expect(isinstance(doc, dict) and doc.get("status") == "NOT_FOUND",
               f"bad secret: want status NOT_FOUND, got {short(doc)}")
        expect(doc.get("errorMsg"), f"bad secret: no errorMsg in {short(doc)}")

    return [
        ("1 token over TLS", token_tls),
        ("2 token over plain MQTT", token_plain),
        ("3 wrong token refused", wrong_token),
        ("4 MQTT basic (+ wrong password refused)", mqtt_basic),
        ("5 X.509 self-signed (+ unregistered refused)", x509_self_signed),
        ("6 X.509 Corral-issued bundle", x509_issued),
        ("7a provision: server-generated token", prov_generated_token),
        ("7b provision: chosen ACCESS_TOKEN", prov_access_token),
        ("7c provision: MQTT_BASIC", prov_mqtt_basic),
        ("7d provision: X509_CERTIFICATE", prov_x509),
        ("7e provision: bad secret/key -> None, fast", prov_bad_secret),
        ("7f provision: duplicate name -> None", prov_duplicate),
        ("7g provision: check_pre_provisioned_devices", prov_pre_provisioned),
        ("7h provision over TLS (port 8883)", prov_tls),
        ("8 HTTP provisioning", http_provision),
    ]


# --------------------------------------------------------------------------------------------


def fetch_ca(srv, api):
    status, text = None, None
    req = urllib.request.Request(f"{srv.base}/api/v1/ca.pem")
    req.add_header("Authorization", f"Bearer {api.key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.URLError as e:
        text = str(e)
    if status == 200 and "BEGIN CERTIFICATE" in text:
        source = "GET /api/v1/ca.pem"
    else:
        with open(os.path.join(srv.data_dir, "pki", "ca.pem")) as f:
            text = f.read()
        source = "data_dir/pki/ca.pem"
    with open(srv.ca_path, "w") as f:
        f.write(text)
    return source


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--only", action="append", default=[], help="run checks whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--verbose", action="store_true", help="SDK logs to stderr, tracebacks")
    args = ap.parse_args()

    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        print(f"not an executable: {binary}", file=sys.stderr)
        return 2
    if args.verbose:
        os.environ["TB_SDK_VERBOSE"] = "1"

    # SIGTERM (from timeout(1) or run.sh's trap) unwinds through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    # Everything is on 127.0.0.1: never through a proxy (urllib and requests read these).
    for var in ("no_proxy", "NO_PROXY"):
        os.environ[var] = ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get(var)]))

    workdir = tempfile.mkdtemp(prefix="corral-tb-sdk-")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        filename=None if args.verbose else os.path.join(workdir, "sdk.log"),
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    srv = Server(binary, workdir)
    failed = True
    try:
        print(f"corral: {binary}", flush=True)
        print(f"ports: http {srv.http_port}, mqtt plain {srv.plain_port}, mqtt tls {srv.tls_port}; "
              f"work dir {workdir}", flush=True)
        srv.start()
        api = Api(srv.base, srv.admin_key)
        print(f"CA from {fetch_ca(srv, api)}", flush=True)
        suite = Suite(srv, api, workdir)
        selected = [(n, f) for n, f in checks(suite) if not args.only or any(o in n for o in args.only)]
        for name, fn in selected:
            if srv.proc.poll() is not None:
                suite.results.append((name, "FAIL", f"corral exited with {srv.proc.returncode}", 0.0))
                print(f"FAIL {name}: corral exited with {srv.proc.returncode}", flush=True)
                continue
            suite.run(name, fn)
        counts = {v: sum(1 for r in suite.results if r[1] == v) for v in ("PASS", "FAIL", "SKIP")}
        print(f"\nsummary: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
              f"of {len(suite.results)}")
        for name, verdict, reason, _ in suite.results:
            if verdict != "PASS":
                print(f"  {verdict} {name}: {reason}")
        failed = counts["FAIL"] > 0 or not suite.results
    except Exception as e:  # noqa: BLE001 - harness failure
        print(f"FAIL harness: {type(e).__name__}: {e}", flush=True)
    finally:
        srv.stop()
        keep = args.keep or (failed and os.environ.get("TB_SDK_KEEP_ON_FAIL"))
        try:
            if failed:
                tail = srv.log_tail()
                if tail:
                    print("\n--- last lines of the corral log ---")
                    sys.stdout.writelines(tail)
            if keep:
                print(f"work dir kept: {workdir}", flush=True)
        except OSError:  # stdout gone (e.g. a closed pipe): still clean up
            pass
        finally:
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
