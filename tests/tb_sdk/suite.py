#!/usr/bin/env python3
"""External-client suite: the real ThingsBoard Python SDK (tb-mqtt-client 1.13.14) against a real
`corral` binary.

Usage: suite.py BINARY [--only NUMBER_OR_SUBSTR ...] [--keep] [--verbose]

Starts `BINARY serve` on free 127.0.0.1 ports with a fresh data directory, runs every check
(each makes its own workspace, fleet and devices), prints PASS/FAIL/SKIP per check and a summary,
stops the server and exits 1 if any check failed. Every wait is bounded.

The device side uses the SDK's public API (TBDeviceMqttClient, TBPublishInfo, provision(),
TBDeviceMqttClient's attribute/RPC calls, TBHTTPDevice); the admin side uses urllib against the
REST API. A few checks reach past it, each for a reason given where it happens: the paho client
(`_client`) for topics and payloads the SDK cannot send and for PUBACK reason codes, the SDK's
applied limits after getSessionLimits, and TBHTTPDevice's request timeout (its long-poll length).
"""

import argparse
import base64
import ctypes
import datetime
import json
import logging
import os
import re
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
from tb_gateway_mqtt import TBGatewayMqttClient  # noqa: E402
import tb_device_mqtt  # noqa: E402
from tb_device_mqtt import (  # noqa: E402
    ATTRIBUTES_TOPIC, TELEMETRY_TOPIC, TBDeviceMqttClient, TBFirmwareState, TBPublishInfo,
)

HOST = "127.0.0.1"
CONNECT_TIMEOUT = 10.0  # seconds to wait for is_connected()
REFUSED_WINDOW = 3.0  # a refused client must stay disconnected this long
REST_TIMEOUT = 5.0  # seconds to wait for telemetry/status to show up over REST
PROVISION_MAX = 10.0  # provision() must return within this (its own limit is 60 s)
CHECK_TIMEOUT = 60.0  # hard limit per check, in case the SDK blocks somewhere unexpected
PUSH_TIMEOUT = 2.0  # an attribute push must reach the session within this after the REST call
HTTP_POLL = 2  # seconds: the HTTP SDK's request timeout, so its long poll ends (408) and renews
JOB_WAIT_MS = 10_000  # ?wait_ms= on a job create: the server holds the answer until the job ends
HOUR = 3_600_000
RATE_LIMIT_RE = re.compile(r"^$|^\d+:\d+(,\d+:\d+)*,?$")  # ThingsBoard's "capacity:seconds,..."


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


def now_ms():
    return int(time.time() * 1000)


def value_kind(v):
    """The ThingsBoard type a JSON value read back over REST has."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "long"
    if isinstance(v, float):
        return "double"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (dict, list)):
        return "json"
    return type(v).__name__


def same(a, b):
    """Equal JSON values of equal types: True is not 1, and 3 is not 3.0 (long vs double)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def fmt_code(code):
    return "none seen" if code is None else f"0x{code:02x}" if isinstance(code, int) else str(code)


def close(a, b):
    return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def check_buckets(buckets, points, what):
    """Every non-empty bucket of an aggregate answer against the points that fall in it:
    count (any type), numeric, and avg/min/max/sum over the numeric ones; nothing may be lost."""
    expect(isinstance(buckets, list) and buckets, f"{what}: no buckets in the answer")
    seen = 0
    for b in buckets:
        for field in ("ts", "end", "count", "numeric"):
            expect(isinstance(b.get(field), int), f"{what}: bucket field {field} in {short(b)}")
        inside = [v for t, v in points if b["ts"] <= t < b["end"]]
        nums = [v for v in inside if not isinstance(v, (str, bool))]
        seen += len(inside)
        want = {"count": len(inside), "numeric": len(nums)}
        if nums:
            want.update(avg=sum(nums) / len(nums), min=min(nums), max=max(nums), sum=sum(nums))
        else:
            want.update(avg=None, min=None, max=None, sum=None)
        for field, value in want.items():
            got = b.get(field)
            ok = got == value if value is None or field in ("count", "numeric") else close(got, value)
            expect(ok, f"{what}: bucket {b['ts']}..{b['end']} {field} = {got!r}, want {value!r} "
                       f"(values {inside})")
    expect(seen == len(points), f"{what}: the buckets cover {seen} of {len(points)} points")


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
                # Test machines can be short of disk; the reserve has its own suite.
                "CORRAL_STORE__MIN_FREE_MB": "16",
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

    # data helpers (attributes, tags, aggregates)

    def latest_points(self, device_id, tag=None):
        """Every latest point of a tag: {key: {"ts", "value"}}."""
        q = "" if tag is None else "?" + urllib.parse.urlencode({"tag": tag})
        doc = self.ok("GET", f"/api/v1/devices/{device_id}/telemetry/latest{q}")
        return (doc or {}).get("data") or {}

    def history(self, device_id, key, frm, to):
        q = urllib.parse.urlencode({"keys": key, "from": frm, "to": to})
        doc = self.ok("GET", f"/api/v1/devices/{device_id}/telemetry?{q}")
        return ((doc or {}).get("data") or {}).get(key) or []

    def tags(self, device_id):
        return (self.ok("GET", f"/api/v1/devices/{device_id}/tags") or {}).get("tags") or {}

    def attributes(self, device_id, scope=None):
        """GET /devices/{id}/attributes: {scope: {key: {"value", "ts"}}}."""
        q = "" if scope is None else "?" + urllib.parse.urlencode({"scope": scope})
        return self.ok("GET", f"/api/v1/devices/{device_id}/attributes{q}") or {}

    def attribute_values(self, device_id, scope):
        """{key: value} of one scope, from GET /devices/{id}/attributes."""
        entries = self.attributes(device_id).get(scope) or {}
        return {k: (e.get("value") if isinstance(e, dict) else e) for k, e in entries.items()}

    def put_attributes(self, device_id, scope, values):
        return self.ok("PUT", f"/api/v1/devices/{device_id}/attributes/{scope}", values, expect_status=(200,))

    def delete_attributes(self, device_id, scope, keys):
        q = urllib.parse.urlencode({"keys": ",".join(keys)})
        self.ok("DELETE", f"/api/v1/devices/{device_id}/attributes/{scope}?{q}", expect_status=(204,))

    def aggregate(self, device_id, **params):
        q = urllib.parse.urlencode(params)
        return self.ok("GET", f"/api/v1/devices/{device_id}/telemetry/aggregate?{q}") or {}


def short(doc, n=300):
    s = doc if isinstance(doc, str) else json.dumps(doc)
    return s if len(s) <= n else s[:n] + "..."


# --------------------------------------------------------------------------------------------
# the device side


class Inbox:
    """Records SDK callbacks (any signature) with their arrival time; wait() is bounded."""

    def __init__(self):
        self.items = []  # (monotonic time, args)
        self._cond = threading.Condition()

    def __call__(self, *args, **kwargs):
        with self._cond:
            self.items.append((time.monotonic(), args))
            self._cond.notify_all()

    def wait(self, n=1, timeout=5.0, since=None):
        """Waits until at least n calls arrived or `timeout` passed; returns every call so far
        as (seconds since `since`, a time.monotonic() value, or since the wait began; args)."""
        t0 = time.monotonic()
        since = t0 if since is None else since
        with self._cond:
            while len(self.items) < n:
                left = t0 + timeout - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return [(t - since, args) for t, args in self.items]

    def count(self):
        with self._cond:
            return len(self.items)


# Exceptions raised in threads the suite does not own (paho's loop, the HTTP SDK's workers): the
# SDK dies silently there, so each check reports the ones that happened while it ran.
THREAD_ERRORS = []


def record_thread_error(args):
    THREAD_ERRORS.append(f"{args.thread.name if args.thread else '?'}: "
                         f"{args.exc_type.__name__}: {args.exc_value}")
    logging.getLogger("suite").error("exception in thread %s", args.thread and args.thread.name,
                                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


class Suite:
    def __init__(self, server, api, workdir):
        self.server = server
        self.api = api
        self.workdir = workdir
        self.clients = []  # every TBDeviceMqttClient made, stopped after its check
        self.cleanups = []  # more things to stop after the check (HTTP SDK workers)
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
        self.acked(info, "send_telemetry")

    def acked(self, info, what):
        """TBPublishInfo.get() == 0 and every part of the publish has its PUBACK."""
        expect(isinstance(info, TBPublishInfo), f"{what} returned {info!r}")
        rc = bounded(info.get, 10, "TBPublishInfo.get()")
        expect(rc == TBPublishInfo.TB_ERR_SUCCESS, f"{what}: TBPublishInfo.get() = {rc!r}, want 0")
        infos = info.message_info if isinstance(info.message_info, list) else [info.message_info]
        expect(infos, f"{what} published nothing")
        # get() waits about 1 s per message; the PUBACK must be in by then (spec §10.4).
        expect(all(mi.is_published() for mi in infos), f"{what}: no PUBACK within the SDK's 1 s wait")
        return [mi.mid for mi in infos]

    @staticmethod
    def puback_spy(c):
        """Records the PUBACK reason code of every publish, by mid ({mid: int}). The SDK itself
        only logs non-zero reasons at debug level, and TBPublishInfo does not carry them."""
        codes = {}
        inner = c._client.on_publish  # the SDK's own handler

        def on_publish(client, userdata, mid, rc=None, properties=None):
            codes[mid] = getattr(rc, "value", rc)
            inner(client, userdata, mid, rc, properties)

        c._client.on_publish = on_publish
        return codes

    @staticmethod
    def session_ready(c, timeout=5.0):
        """Waits for the getSessionLimits answer. It is the SDK's last step after CONNACK (the four
        SUBSCRIBEs go first, in order), so the session's subscriptions are in place by then."""
        return poll(lambda: c.rate_limits_received, timeout)

    def request_attributes(self, c, client_keys=None, shared_keys=None, timeout=5.0):
        """request_attributes() and its callback; returns (content, seconds)."""
        inbox = Inbox()
        t0 = time.monotonic()
        info = bounded(lambda: c.request_attributes(client_keys=client_keys, shared_keys=shared_keys,
                                                    callback=inbox), 10, "request_attributes()")
        expect(isinstance(info, TBPublishInfo), f"request_attributes returned {info!r}")
        got = inbox.wait(1, timeout, t0)
        if not got:
            fail(f"request_attributes(client_keys={client_keys}, shared_keys={shared_keys}): "
                 f"no attributes/response within {timeout:.0f} s")
        dt, (content, err, *_) = got[0]
        expect(err is None, f"request_attributes: callback error {err!r}")
        expect(isinstance(content, dict), f"attributes response is not an object: {content!r}")
        return content, dt

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
        errors_before = len(THREAD_ERRORS)
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
            for stop in self.cleanups:
                try:
                    stop()
                except Exception:  # noqa: BLE001 - best-effort cleanup
                    pass
            self.cleanups = []
        thread_errors = THREAD_ERRORS[errors_before:]
        if verdict == "FAIL" and thread_errors:
            reason += f" [SDK thread errors: {'; '.join(thread_errors)}]"
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

    # -- telemetry forms and types (spec §3, §4) --

    def telemetry_forms():
        dev, token = api.new_device("tm-forms")
        c = s.client(port=srv.plain_port, username=token)
        s.connect(c)
        t_sent = now_ms()
        # a dict: the SDK wraps it in a one-item array on the wire
        s.telemetry(c, {"t_bool": True, "t_long": 42, "t_big": 2**53 + 1, "t_double": 2.5,
                        "t_whole": 5.0, "t_str": "hello", "t_json": {"a": 1, "b": [1, "x"]},
                        "t_numstr": "17", "t_dblstr": "3.25", "t_null": None})
        # a list of dicts
        s.telemetry(c, [{"l_a": 1}, {"l_b": "x"}])
        # {"ts","values"} as list items, and as a bare dict (which the SDK also sends as [{...}])
        ts1, ts2, ts3 = t_sent - 120_000, t_sent - 60_000, t_sent - 30_000
        s.telemetry(c, [{"ts": ts1, "values": {"ts_a": 7}}, {"ts": ts2, "values": {"ts_a": 8}}])
        s.telemetry(c, {"ts": ts3, "values": {"ts_b": 9}})
        # The SDK always sends an array: send the two bare-object forms through its paho client.
        codes = s.puback_spy(c)
        ts4 = t_sent - 20_000
        raw = [c._client.publish(TELEMETRY_TOPIC, json.dumps(p), qos=1)
               for p in ({"o_plain": "on"}, {"ts": ts4, "values": {"o_ts": 2.75}})]
        for mi in raw:
            bounded(lambda mi=mi: mi.wait_for_publish(5), 6, "wait_for_publish()")
        poll(lambda: all(mi.mid in codes for mi in raw), 2)
        expect(all(codes.get(mi.mid) == 0 for mi in raw),
               f"bare-object telemetry got PUBACK {[fmt_code(codes.get(mi.mid)) for mi in raw]}")
        want = {
            "t_bool": (True, "bool"), "t_long": (42, "long"), "t_big": (2**53 + 1, "long"),
            "t_double": (2.5, "double"), "t_whole": (5.0, "double"), "t_str": ("hello", "string"),
            "t_json": ({"a": 1, "b": [1, "x"]}, "json"), "t_numstr": (17, "long"),
            "t_dblstr": (3.25, "double"), "l_a": (1, "long"), "l_b": ("x", "string"),
            "ts_a": (8, "long"), "ts_b": (9, "long"), "o_plain": ("on", "string"),
            "o_ts": (2.75, "double"),
        }
        data = poll(lambda: (lambda d: d if set(want) <= set(d) else None)(api.latest_points(dev)),
                    REST_TIMEOUT)
        if not data:
            missing = sorted(set(want) - set(api.latest_points(dev)))
            fail(f"latest over REST lacks {missing}")
        notes = []
        for key, (value, kind) in want.items():
            got = data[key].get("value")
            if key == "t_json" and isinstance(got, str):  # ThingsBoard's REST gives JSON as a string
                try:
                    got = json.loads(got)
                    notes.append("nested JSON comes back as a string")
                except ValueError:
                    pass
            expect(got == value and value_kind(got) == kind,
                   f"latest {key} = {got!r} ({value_kind(got)}), want {value!r} ({kind})")
        expect("t_null" not in data, f"a null value was stored: {short(data['t_null']) if 't_null' in data else ''}")
        expect(data["ts_a"].get("ts") == ts2, f"ts_a has ts {data['ts_a'].get('ts')}, want {ts2}")
        expect(data["ts_b"].get("ts") == ts3, f"ts_b has ts {data['ts_b'].get('ts')}, want {ts3}")
        expect(data["o_ts"].get("ts") == ts4, f"o_ts has ts {data['o_ts'].get('ts')}, want {ts4}")
        for key in ("t_long", "l_a"):  # no ts: the server's receive time
            ts = data[key].get("ts")
            expect(isinstance(ts, int) and abs(ts - t_sent) < 60_000,
                   f"{key} has ts {ts!r}, want the receive time (about {t_sent})")
        hist = [(p.get("ts"), p.get("value")) for p in api.history(dev, "ts_a", ts1 - 1, ts2 + 1)]
        expect(hist == [(ts1, 7), (ts2, 8)], f"ts_a history {hist}, want {[(ts1, 7), (ts2, 8)]}")
        return "; ".join(notes)

    # -- tagged telemetry (Corral's extension topic) --

    def tagged_telemetry():
        dev, token = api.new_device("tm-tag")
        c = s.client(port=srv.plain_port, username=token)
        s.connect(c)
        codes = s.puback_spy(c)
        s.telemetry(c, {"temperature": 20.5})  # default tag, for contrast
        ts = now_ms() - 10_000
        # The SDK has no tagged topic: publish through its paho client, the SDK's `_client`.
        infos = [
            c._client.publish(f"{TELEMETRY_TOPIC}/power", json.dumps({"watts": 512.5}), qos=1),
            c._client.publish(f"{TELEMETRY_TOPIC}/power",
                              json.dumps([{"ts": ts, "values": {"volts": 230}}]), qos=1),
        ]
        for mi in infos:
            bounded(lambda mi=mi: mi.wait_for_publish(5), 6, "wait_for_publish()")
            expect(mi.is_published(), f"no PUBACK for mid {mi.mid} within 5 s")
        poll(lambda: all(mi.mid in codes for mi in infos), 2)
        for mi in infos:
            expect(codes.get(mi.mid) == 0,
                   f"tagged publish got PUBACK {fmt_code(codes.get(mi.mid))} (0x90: topic unknown)")
        tags = poll(lambda: (lambda t: t if {"watts", "volts"} <= set(t.get("power") or []) else None)(
            api.tags(dev)), REST_TIMEOUT)
        expect(tags, f"GET /devices/{{id}}/tags = {short(api.tags(dev))}, want power: [watts, volts]")
        expect("temperature" in (tags.get("default") or []) and "watts" not in (tags.get("default") or []),
               f"tags: default should list temperature only: {short(tags)}")
        power = api.latest_points(dev, "power")
        expect((power.get("watts") or {}).get("value") == 512.5,
               f"latest?tag=power watts = {short(power.get('watts'))}, want 512.5")
        volts = power.get("volts") or {}
        expect(volts.get("value") == 230 and volts.get("ts") == ts,
               f"latest?tag=power volts = {short(volts)}, want 230 at ts {ts}")
        default = api.latest_points(dev)
        expect("watts" not in default and "volts" not in default,
               f"tagged keys leaked into the default tag: {sorted(default)}")
        return f"tags {short(tags)}"

    # -- conditions (Corral's extension topic) --

    def conditions():
        dev, token = api.new_device("cond")
        c = s.client(port=srv.plain_port, username=token)
        s.connect(c)
        codes = s.puback_spy(c)
        topic = "v1/devices/me/conditions"
        # The SDK has no conditions topic: publish through its paho client, the SDK's `_client`.
        def send(body):
            mi = c._client.publish(topic, json.dumps(body), qos=1)
            bounded(lambda: mi.wait_for_publish(5), 6, "wait_for_publish()")
            expect(mi.is_published(), f"no PUBACK for mid {mi.mid} within 5 s")
            poll(lambda: mi.mid in codes, 2)
            expect(codes.get(mi.mid) == 0,
                   f"conditions publish got PUBACK {fmt_code(codes.get(mi.mid))}")
        send({"name": "overheat", "action": "open", "severity": "major", "details": {"temp": 91}})
        send([{"name": "overheat", "action": "update", "details": {"temp": 95}},
              {"name": "door_open", "action": "open", "severity": "info"}])
        page = api.ok("GET", f"/api/v1/devices/{dev}/conditions") or {}
        got = {c["name"]: c for c in page.get("items", [])}
        expect(set(got) == {"overheat", "door_open"}, f"open conditions {sorted(got)}")
        o = got["overheat"]
        expect(o["severity"] == "major" and o["details"] == {"temp": 95} and o["reports"] == 2,
               f"overheat is {short(o)}")
        send({"name": "overheat", "action": "close"})
        closed = api.ok("GET", f"/api/v1/conditions/{o['id']}") or {}
        expect(closed.get("open") is False and closed.get("closed_by") == "device",
               f"after close: {short(closed)}")
        return f"{len(got)} opened, overheat closed by the device"

    # -- getSessionLimits (spec §5.2) --

    def session_limits():
        dev, token = api.new_device("limits")
        c = s.client(port=srv.plain_port, username=token)
        replies = []
        inner = c.service_configuration_callback  # the SDK's own handler, called by its service loop

        def spy(request_id, response, *args, **kwargs):
            replies.append(response)
            return inner(request_id, response, *args, **kwargs)

        c.service_configuration_callback = spy
        t0 = time.monotonic()
        s.connect(c)
        ready = s.session_ready(c, 5.0)
        dt = time.monotonic() - t0
        expect(ready, f"rate_limits_received still False 5 s after connecting "
                      f"(replies seen: {short(replies) if replies else 'none'})")
        expect(replies, "rate_limits_received without a getSessionLimits reply")
        r = replies[-1]
        expect(isinstance(r, dict) and "error" not in r, f"getSessionLimits answered {short(r)}")
        mps, mif = r.get("maxPayloadSize"), r.get("maxInflightMessages")
        expect(isinstance(mps, int) and mps > 0, f"maxPayloadSize {mps!r}")
        expect(isinstance(mif, int) and mif > 0, f"maxInflightMessages {mif!r}")
        for field in ("rateLimits", "gatewayRateLimits"):
            limits = r.get(field)
            expect(isinstance(limits, dict), f"{field} is {limits!r}")
            for k in ("messages", "telemetryMessages", "telemetryDataPoints"):
                v = limits.get(k)
                expect(v is None or (isinstance(v, str) and RATE_LIMIT_RE.match(v)),
                       f"{field}.{k} = {v!r}, want \"capacity:seconds,...\" or \"\"")
        pct = tb_device_mqtt.DEFAULT_RATE_LIMIT_PERCENTAGE
        expect(c.max_payload_size == int(mps * pct / 100),
               f"SDK max_payload_size {c.max_payload_size}, want {pct} % of {mps}")
        inflight = c._client._max_inflight_messages
        expect(1 <= inflight <= mif, f"SDK max in-flight {inflight}, want 1..{mif}")
        # The SDK now throttles itself by these limits: it must still get telemetry through.
        s.telemetry(c, {"after_limits": 1})
        s.expect_latest(dev, "after_limits", 1)
        return (f"answered {dt:.1f} s after connect(): maxPayloadSize {mps} (SDK splits at "
                f"{c.max_payload_size}), maxInflightMessages {mif} (SDK in-flight {inflight}), "
                f"rateLimits {short(r.get('rateLimits'), 120)}")

    # -- client-side RPC (spec §5.6) --

    def client_rpc():
        dev, token = api.new_device("crpc")
        c = s.client(port=srv.plain_port, username=token)
        s.connect(c)
        s.session_ready(c)
        unknown, limits = Inbox(), Inbox()
        t0 = time.monotonic()
        # Two calls in flight at once (ids 2 and 3; the SDK used 1): each answer must come back
        # on its own id, since the SDK finds the callback by the response topic.
        bounded(lambda: c.send_rpc_call("noSuchMethod", {}, unknown), 10, "send_rpc_call()")
        bounded(lambda: c.send_rpc_call("getSessionLimits", {"timeout": 5000}, limits), 10,
                "send_rpc_call()")
        got = unknown.wait(1, 5.0, t0)
        expect(got, "noSuchMethod: no callback within 5 s (the SDK has no RPC timeout of its own)")
        dt, (rid, content, err, *_) = got[0]
        expect(err is None, f"noSuchMethod: callback error {err!r}")
        expect(isinstance(content, dict) and isinstance(content.get("error"), str) and content["error"],
               f"noSuchMethod answered {short(content)}, want {{\"error\": \"...\"}}")
        got2 = limits.wait(1, 5.0)
        expect(got2, "getSessionLimits (second call): no callback within 5 s")
        rid2, content2 = got2[0][1][0], got2[0][1][1]
        expect(isinstance(content2, dict) and "rateLimits" in content2,
               f"getSessionLimits on id {rid2} answered {short(content2)}")
        return f"id {rid} answered in {dt:.2f} s: {short(content, 120)}"

    # -- attributes over MQTT (spec §3, §5.4) --

    def attributes_mqtt():
        dev, token = api.new_device("attr")
        api.put_attributes(dev, "shared", {"sh_mode": "eco", "sh_level": 3})
        api.put_attributes(dev, "server", {"srv_secret": "s1"})
        c = s.client(port=srv.plain_port, username=token)
        s.connect(c)
        s.session_ready(c)
        codes = s.puback_spy(c)
        mine = {"fw": "2.3.1", "serial": "SN1", "nested": {"x": 1, "y": [1, 2]}, "count": 3,
                "ratio": 0.5, "flag": True}
        t_sent = now_ms()
        mids = s.acked(bounded(lambda: c.send_attributes(dict(mine)), 10, "send_attributes()"),
                       "send_attributes")
        poll(lambda: all(m in codes for m in mids), 2)
        expect(all(codes.get(m) == 0 for m in mids),
               f"send_attributes got PUBACK {[fmt_code(codes.get(m)) for m in mids]} (0x90: topic unknown)")
        # a partial update merges into the stored set
        s.acked(bounded(lambda: c.send_attributes({"fw": "2.4.0"}), 10, "send_attributes()"),
                "send_attributes")
        mine["fw"] = "2.4.0"
        if not poll(lambda: same(api.attribute_values(dev, "client"), mine), REST_TIMEOUT):
            fail(f"REST client attributes {short(api.attribute_values(dev, 'client'))}, want {short(mine)}")
        doc = api.attributes(dev)
        ts = (doc.get("client") or {}).get("serial", {}).get("ts")
        expect(isinstance(ts, int) and abs(ts - t_sent) < 60_000, f"client attribute ts {ts!r}")
        expect(same(api.attribute_values(dev, "shared"), {"sh_mode": "eco", "sh_level": 3}),
               f"REST shared attributes {short(doc.get('shared'))}")
        expect(same(api.attribute_values(dev, "server"), {"srv_secret": "s1"}),
               f"REST server attributes {short(doc.get('server'))}")
        only = api.attributes(dev, "shared")
        expect(set(only.get("shared") or {}) == {"sh_mode", "sh_level"}
               and not (only.get("client") or only.get("server")),
               f"GET attributes?scope=shared = {short(only)}")

        # attribute requests: scopes only when something was found, missing keys omitted
        cases = [
            ((["serial", "nested", "nope"], ["sh_mode", "nope2"]),
             {"client": {"serial": "SN1", "nested": {"x": 1, "y": [1, 2]}}, "shared": {"sh_mode": "eco"}}),
            ((["fw"], None), {"client": {"fw": "2.4.0"}}),
            ((None, ["sh_level"]), {"shared": {"sh_level": 3}}),
            ((None, ["missing"]), {}),
            ((None, None), {"client": mine, "shared": {"sh_mode": "eco", "sh_level": 3}}),
            # server-scope attributes are never visible to the device
            ((["srv_secret"], ["srv_secret"]), {}),
        ]
        slowest = 0.0
        for (ck, sk), want in cases:
            content, dt = s.request_attributes(c, ck, sk)
            slowest = max(slowest, dt)
            expect(same(content, want), f"request_attributes(client_keys={ck}, shared_keys={sk}) -> "
                                    f"{short(content)}, want {short(want)}")

        # not an object: PUBACK 0x99 on v5, nothing stored, the session stays open
        mi = c._client.publish(ATTRIBUTES_TOPIC, "[1,2]", qos=1)
        bounded(lambda: mi.wait_for_publish(5), 6, "wait_for_publish()")
        poll(lambda: mi.mid in codes, 2)
        expect(codes.get(mi.mid) == 0x99, f"attributes payload [1,2]: PUBACK {fmt_code(codes.get(mi.mid))}, want 0x99")
        content, _ = s.request_attributes(c, ["fw"], None)
        expect(c.is_connected() and same(content, {"client": {"fw": "2.4.0"}}),
               f"after the bad payload: connected {c.is_connected()}, fw {short(content)}")
        return f"{len(cases) + 1} requests, slowest {slowest:.2f} s"

    # -- shared attribute push (spec §3, §5.4) --

    def attributes_push():
        dev, token = api.new_device("push")
        c = s.client(port=srv.plain_port, username=token)
        s.connect(c)
        # getSessionLimits is answered after the SUBSCRIBE to v1/devices/me/attributes
        expect(s.session_ready(c), "no getSessionLimits answer within 5 s")
        keyed, every = Inbox(), Inbox()
        c.subscribe_to_attribute("target", keyed)
        c.subscribe_to_all_attributes(every)

        def push(n, want, what, since):
            got = every.wait(n, PUSH_TIMEOUT, since)
            expect(len(got) >= n, f"{what}: no push within {PUSH_TIMEOUT:.0f} s "
                                  f"(pushes so far: {[short(a[0]) for _, a in got]})")
            dt, (content, err, *_) = got[n - 1]
            expect(err is None and same(content, want), f"{what}: push #{n} is {short(content)}, want {short(want)}")
            return dt

        t0 = time.monotonic()
        api.put_attributes(dev, "shared", {"target": 26})
        dt1 = push(1, {"target": 26}, "PUT shared target", t0)
        got = keyed.wait(1, 1.0)
        expect(got and same(got[0][1][0], {"target": 26}),
               f"subscribe_to_attribute('target') callback: {[short(a[0]) for _, a in got]}")
        t0 = time.monotonic()
        api.put_attributes(dev, "shared", {"other": "x"})
        dt2 = push(2, {"other": "x"}, "PUT shared other (only the changed key)", t0)
        # neither server-scope changes nor the device's own client attributes are pushed
        api.put_attributes(dev, "server", {"srv": 1})
        s.acked(bounded(lambda: c.send_attributes({"mine": 1}), 10, "send_attributes()"), "send_attributes")
        t0 = time.monotonic()
        api.delete_attributes(dev, "shared", ["target"])
        dt3 = push(3, {"deleted": ["target"]}, "DELETE shared target", t0)
        time.sleep(0.5)
        expect(every.count() == 3, f"unexpected extra pushes: {[short(a[0]) for _, a in every.items[3:]]}")
        # the keyed callback fires only when its key is a top-level key of the push
        expect(keyed.count() == 1, f"subscribe_to_attribute('target') fired {keyed.count()} times, want 1")
        return f"push latency {dt1:.2f} / {dt2:.2f} / {dt3:.2f} s"

    # -- fleet default shared attributes --

    def fleet_defaults():
        _, fleet = api.workspace_fleet("fleet-attr")
        api.ok("PUT", f"/api/v1/fleets/{fleet}/attributes/shared", {"interval": 60, "mode": "eco"},
               expect_status=(200,))
        dev, token = api.device(fleet, "fleet-attr-dev")
        api.put_attributes(dev, "shared", {"mode": "boost"})
        c = s.client(port=srv.plain_port, username=token)
        s.connect(c)
        s.session_ready(c)
        content, _ = s.request_attributes(c, None, ["interval", "mode"])
        want = {"shared": {"interval": 60, "mode": "boost"}}
        expect(same(content, want), f"request sharedKeys=interval,mode -> {short(content)}, want {short(want)} "
                                f"(fleet default interval, the device's own mode)")
        content, _ = s.request_attributes(c)
        expect(same(content.get("shared") or {}, want["shared"]),
               f"request everything -> shared {short(content.get('shared'))}, want {short(want['shared'])}")
        api.delete_attributes(dev, "shared", ["mode"])
        content, _ = s.request_attributes(c, None, ["mode"])
        expect(same(content, {"shared": {"mode": "eco"}}),
               f"after deleting the device's mode: {short(content)}, want the fleet default eco")

    # -- OTA (thingsboard-ota.md §1.3, §1.5) --

    def upload_package(fleet, title, version, data):
        q = urllib.parse.urlencode({"title": title, "version": version, "fleet_id": fleet})
        req = urllib.request.Request(f"{api.base}/api/v1/packages?{q}", data=data, method="POST")
        req.add_header("Content-Type", "application/octet-stream")
        req.add_header("Authorization", f"Bearer {api.key}")
        with urllib.request.urlopen(req, timeout=30) as r:
            expect(r.status == 201, f"upload -> {r.status}")
            return json.loads(r.read())

    def ota_one(fleet, name, size, chunk_size):
        data = os.urandom(size)
        pkg = upload_package(fleet, f"{name}-fw", "1.10", data)
        api.ok("PUT", f"/api/v1/fleets/{fleet}/packages", {"package_id": pkg["id"]}, expect_status=(200,))
        dev, token = api.device(fleet, f"{name}-dev")
        got = {}
        c = s.client(port=srv.plain_port, username=token, chunk_size=chunk_size)

        def on_firmware(client, firmware, version):
            got["data"], got["version"] = bytes(firmware), version
            client.update_firmware_info(title=f"{name}-fw", version=version, state=TBFirmwareState.UPDATED)

        c.set_on_firmware_received_callback(on_firmware)
        s.connect(c)
        s.session_ready(c)
        t0 = time.monotonic()
        c.get_firmware_update()
        poll(lambda: "data" in got, 60)
        expect("data" in got, f"{name}: no firmware received in 60 s")
        dt = time.monotonic() - t0
        expect(got["data"] == data, f"{name}: received {len(got['data'])} bytes, not the package's {size}")
        expect(got["version"] == "1.10", f"{name}: version {got['version']!r}, want the string '1.10'")
        # The SDK reported its states as telemetry; the last one is UPDATED with the new version.
        s.expect_latest(dev, "fw_state", "UPDATED")
        # (`current_fw_version` "1.10" is device telemetry: ThingsBoard types it as the number
        # 1.1, and so does Corral; the title shows the report.)
        s.expect_latest(dev, "current_fw_title", f"{name}-fw")
        return f"{name}: {size} bytes in {'chunks of ' + str(chunk_size) if chunk_size else 'one message'}, {dt:.1f} s"

    def ota_firmware():
        _, fleet = api.workspace_fleet("ota")
        notes = [ota_one(fleet, "chunked", 150_000, 32768)]
        _, fleet2 = api.workspace_fleet("ota-whole")
        notes.append(ota_one(fleet2, "whole", 20_000, 0))
        return "; ".join(notes)

    def ota_campaign():
        # A campaign over a device running the SDK unchanged: it downloads in chunks, reports
        # its states, and the campaign follows each one; it counts the device updated only
        # once the device, after a "reboot" (a new session), reports the new version.
        _, fleet = api.workspace_fleet("ota-campaign")
        data = os.urandom(70_000)
        pkg = upload_package(fleet, "camp-fw", "2.0.1", data)
        dev, token = api.device(fleet, "camp-dev")
        got = {}
        c = s.client(port=srv.plain_port, username=token, chunk_size=16384)

        def on_firmware(client, firmware, version):
            got["data"] = bytes(firmware)
            client.update_firmware_info(title="camp-fw", version=version, state=TBFirmwareState.UPDATED)

        c.set_on_firmware_received_callback(on_firmware)
        s.connect(c)
        s.session_ready(c)
        c.get_firmware_update()
        camp = api.ok("POST", "/api/v1/campaigns",
                      {"name": f"sdk-{uid()}", "package_id": pkg["id"], "fleet_id": fleet,
                       "confirm_timeout_secs": 120}, expect_status=(201,))
        cid = camp["id"]
        api.ok("POST", f"/api/v1/campaigns/{cid}/start", {}, expect_status=(200,))
        poll(lambda: "data" in got, 60)
        expect(got.get("data") == data, f"received {len(got.get('data') or b'')} bytes, not the package's 70000")

        def entry():
            devices = api.ok("GET", f"/api/v1/campaigns/{cid}/devices")["items"]
            return devices[0] if devices else {}

        waiting = poll(lambda: (lambda e: e if "reconnect" in str(e.get("timeline")) else None)(entry()), 30)
        expect(waiting and waiting.get("state") == "updating",
               f"after UPDATED the campaign waits for the reboot: {short(waiting)}")
        # The reboot: a new session that reports the version it now runs, as the SDK does at start.
        c.disconnect()
        c2 = s.client(port=srv.plain_port, username=token, chunk_size=16384)
        c2.current_firmware_info["current_fw_title"] = "camp-fw"
        c2.current_firmware_info["current_fw_version"] = "2.0.1"
        s.connect(c2)
        s.session_ready(c2)
        c2.get_firmware_update()
        done = poll(lambda: (lambda v: v if v.get("state") == "completed" else None)(
            api.ok("GET", f"/api/v1/campaigns/{cid}")), 30)
        expect(done, "the campaign did not complete after the device came back on 2.0.1")
        states = [t["state"] for t in entry().get("timeline", [])]
        for want in ["initiated", "downloading", "downloaded", "verified", "updating", "updated"]:
            expect(want in states, f"the campaign never saw {want}: {states}")
        return f"states seen: {' > '.join(dict.fromkeys(states))}"

    # -- HTTP device API (spec §7) --

    def dev_call(token, method, path, body=None, timeout=15):
        t0 = time.monotonic()
        status, doc = api.call(method, f"/api/v1/{urllib.parse.quote(token)}{path}", body, auth=False,
                               timeout=timeout)
        return status, doc, time.monotonic() - t0

    def http_device_api():
        dev, token = api.new_device("http-dev")
        d = TBHTTPDevice(srv.base, token)
        s.cleanups += [lambda: d.unsubscribe("attributes"), d.stop_publish_worker]
        if bounded(d.connect, 15, "TBHTTPDevice.connect()") is not True:
            status, doc, _ = dev_call(token, "POST", "/telemetry", {})
            fail(f"connect() returned False: POST /api/v1/{{token}}/telemetry {{}} -> {status} {short(doc)}, want 200")

        # telemetry: {"ts","values"}, with ts from local time labelled UTC (TZ=UTC here)
        bounded(lambda: d.send_telemetry({"h_temp": 21.5}, queued=False), 10, "send_telemetry()")
        t_sent = now_ms()
        s.expect_latest(dev, "h_temp", 21.5)
        ts = api.latest_points(dev)["h_temp"].get("ts")
        expect(isinstance(ts, int) and abs(ts - t_sent) < 60_000, f"h_temp ts {ts!r}, want about {t_sent}")
        d.send_telemetry({"h_queued": 1})  # queued: the SDK's worker thread posts it
        s.expect_latest(dev, "h_queued", 1)

        # attributes
        bounded(lambda: d.send_attributes({"h_attr": "v1", "h_n": 2}), 10, "send_attributes()")
        if not poll(lambda: same(api.attribute_values(dev, "client"), {"h_attr": "v1", "h_n": 2}), REST_TIMEOUT):
            fail(f"REST client attributes {short(api.attribute_values(dev, 'client'))}")
        api.put_attributes(dev, "shared", {"h_shared": 7, "h_shared2": "b"})
        # The SDK sends client_keys/shared_keys, which ThingsBoard ignores: everything comes back.
        doc = bounded(lambda: d.request_attributes(client_keys=["h_attr"], shared_keys=["h_shared"]), 10,
                      "request_attributes()")
        expect(isinstance(doc, dict) and (doc.get("client") or {}).get("h_attr") == "v1"
               and (doc.get("shared") or {}).get("h_shared") == 7, f"SDK request_attributes -> {short(doc)}")
        status, doc, _ = dev_call(token, "GET", "/attributes?clientKeys=h_attr,nope&sharedKeys=h_shared")
        want = {"client": {"h_attr": "v1"}, "shared": {"h_shared": 7}}
        expect(status == 200 and same(doc, want), f"GET attributes?clientKeys&sharedKeys -> {status} {short(doc)}")
        status, doc, _ = dev_call(token, "GET", "/attributes?sharedKeys=h_shared&sharedKeys=h_shared2")
        want = {"shared": {"h_shared": 7, "h_shared2": "b"}}
        expect(status == 200 and same(doc, want),
               f"GET attributes?sharedKeys=..&sharedKeys=.. (repeated) -> {status} {short(doc)}")

        # long polls end in 408
        for path in ("/attributes/updates?timeout=1000", "/rpc?timeout=1000"):
            status, doc, dt = dev_call(token, "GET", path)
            expect(status == 408 and 0.8 <= dt < 5, f"GET {path} -> {status} after {dt:.1f} s, want 408 after ~1 s")

        # subscribe('attributes'): after one 408 the SDK polls again, then gets the change
        # The SDK long-polls with its request timeout (30 s), read when its worker starts: shorten it
        # so that a poll ends in 408 and is renewed during the check, and the worker stops soon
        # after; then put it back for the plain requests.
        inbox = Inbox()
        d._TBHTTPDevice__config["timeout"] = HTTP_POLL
        d.subscribe("attributes", inbox)
        time.sleep(HTTP_POLL + 0.7)
        d._TBHTTPDevice__config["timeout"] = 30
        t0 = time.monotonic()
        api.put_attributes(dev, "shared", {"h_target": 30})
        got = inbox.wait(1, 3.0, t0)
        expect(got, "subscribe('attributes'): no update within 3 s of the REST change")
        dt_push, (content, *_) = got[0]
        expect(same(content, {"h_target": 30}), f"subscribe('attributes') got {short(content)}, want {{'h_target': 30}}")

        # client RPC
        r = bounded(lambda: d.send_rpc("noSuchMethod", {}), 10, "send_rpc()")
        expect(isinstance(r, dict) and isinstance(r.get("error"), str), f"send_rpc('noSuchMethod') -> {short(r)}")
        r = bounded(lambda: d.send_rpc("getSessionLimits", {"timeout": 5000}), 10, "send_rpc()")
        expect(isinstance(r, dict) and "rateLimits" in r and "maxPayloadSize" in r,
               f"send_rpc('getSessionLimits') -> {short(r)}")
        status, doc, _ = dev_call(token, "POST", "/claim", {"secretKey": "s3cr3t", "durationMs": 60000})
        expect(status == 200, f"POST /claim -> {status} {short(doc)}")
        rpc_reply, _, _ = dev_call(token, "POST", "/rpc/1", {"ok": True})  # no RPC pending: noted only

        # unknown token: the SDK's connect() gives False; every endpoint 401, without waiting
        bad_token = "no-such-" + uid(20)
        bad = TBHTTPDevice(srv.base, bad_token)
        expect(bounded(bad.connect, 15, "TBHTTPDevice.connect()") is False, "connect() with an unknown token succeeded")
        for method, path, body in [("POST", "/telemetry", {"a": 1}), ("POST", "/attributes", {"a": 1}),
                                   ("GET", "/attributes", None), ("GET", "/attributes/updates?timeout=5000", None),
                                   ("GET", "/rpc?timeout=5000", None),
                                   ("POST", "/rpc", {"method": "getSessionLimits", "params": {}}),
                                   ("POST", "/claim", {})]:
            status, doc, dt = dev_call(bad_token, method, path, body)
            expect(status == 401 and dt < 3, f"unknown token: {method} {path} -> {status} after {dt:.1f} s, want 401")
        return f"long-poll update in {dt_push:.2f} s; POST /rpc/1 with nothing pending -> {rpc_reply}"

    # -- aggregates --

    def aggregates():
        dev, token = api.new_device("agg")
        c = s.client(port=srv.plain_port, username=token)
        s.connect(c)
        base = (now_ms() // HOUR - 3) * HOUR  # a UTC hour boundary three hours ago
        minutes = [4, 13, 25, 37, 58, 62, 71, 86, 99, 117]
        values = [21.5, 19, 23.25, 18.75, 30, -2.5, 7, 12.125, 0, 40]
        points = [(base + m * 60_000, v) for m, v in zip(minutes, values)]
        mixed = [(base + 65 * 60_000, 5), (base + 70 * 60_000, "n/a"), (base + 75 * 60_000, 7.5)]
        items = [{"ts": t, "values": {"agg_v": v}} for t, v in points]
        items += [{"ts": t, "values": {"agg_mix": v}} for t, v in mixed]
        s.telemetry(c, items)
        window = {"from": base, "to": base + 2 * HOUR - 1}

        def fetch(**extra):
            doc = api.aggregate(dev, interval="1h", keys="agg_v,agg_mix", **window, **extra)
            data = doc.get("data") or {}
            total = sum(b.get("count", 0) for b in data.get("agg_v") or [])
            return data if total == len(points) else None

        data = poll(fetch, REST_TIMEOUT)
        if not data:
            fail(f"aggregate counts never reached {len(points)}: "
                 f"{short(api.aggregate(dev, interval='1h', keys='agg_v', **window))}")
        check_buckets(data.get("agg_v"), points, "agg_v (UTC)")
        starts = sorted(b["ts"] for b in data["agg_v"] if b.get("count"))
        expect(starts == [base, base + HOUR], f"non-empty UTC buckets start at {starts}, want {[base, base + HOUR]}")
        check_buckets(data.get("agg_mix"), mixed, "agg_mix (a string among numbers)")

        # Asia/Kolkata is UTC+5:30 without DST: hour buckets start at :30 UTC
        data = poll(lambda: fetch(tz="Asia/Kolkata"), REST_TIMEOUT)
        expect(data, "tz=Asia/Kolkata: counts do not add up")
        check_buckets(data.get("agg_v"), points, "agg_v (Asia/Kolkata)")
        first = next((b for b in data["agg_v"] if b["ts"] <= points[0][0] < b["end"]), None)
        expect(first and first["end"] == base + 30 * 60_000,
               f"tz=Asia/Kolkata: the bucket of {points[0][0]} is {short(first)}, want it to end at {base + 30 * 60_000}")
        return "10 points over 2 h: count/numeric/avg/min/max/sum match in UTC and Asia/Kolkata"

    # -- server-side RPC: jobs (spec §5.5, §7) --

    def create_job(dev, method, params, two_way, wait_ms=None):
        """POST /devices/{id}/jobs (201); with wait_ms the server answers when the job has ended.
        Returns (job, seconds)."""
        q = f"?wait_ms={wait_ms}" if wait_ms else ""
        body = {"method": method, "params": params, "two_way": two_way, "ttl_secs": 60}
        t0 = time.monotonic()
        status, doc = api.call("POST", f"/api/v1/devices/{dev}/jobs{q}", body,
                               timeout=(wait_ms or 0) / 1000 + 5)
        expect(status == 201 and isinstance(doc, dict) and doc.get("id"),
               f"POST /devices/{{id}}/jobs{q} ({method}) -> {status} {short(doc)}, want 201 and a job")
        return doc, time.monotonic() - t0

    def job_history(job):
        return ">".join(str(h.get("state")) for h in job.get("history") or [] if isinstance(h, dict))

    def expect_job(job, what, result=None, two_way=True):
        expect(job.get("state") == "succeeded",
               f"{what}: job state {job.get('state')!r}, want 'succeeded' (history {job_history(job)})")
        if two_way:
            expect(same(job.get("result"), result),
                   f"{what}: job result {short(job.get('result'))}, want the reply {short(result)}")
        else:
            expect(job.get("result") is None, f"{what}: one-way job has a result {short(job.get('result'))}")

    def rpc_handler(c, seen):
        """The device's server-side RPC handler. The SDK calls it on paho's thread with the request
        id as a str; it replies with send_rpc_reply from there (without wait_for_publish: that
        would wait for a PUBACK that this very thread has to read). `notify` is one-way: no reply."""
        def handler(request_id, body):
            seen(request_id, body)
            if isinstance(body, dict) and body.get("method") != "notify":
                c.send_rpc_reply(request_id, rpc_reply(body))
        return handler

    def rpc_reply(body):
        return {"ok": True, "method": body.get("method"), "echo": body.get("params")}

    def expect_request(got, n, job, method, params, what):
        """The handler's n-th call (1-based): a str request id equal to the job's rpc_id, and
        exactly {"method", "params"}. Returns the id."""
        expect(len(got) >= n, f"{what}: the handler saw {len(got)} requests within 5 s, want {n}")
        rid, body = got[n - 1][1][:2]
        expect(isinstance(rid, str) and rid.isdigit(), f"{what}: request id {rid!r}, want a str of digits")
        expect(same(body, {"method": method, "params": params}),
               f"{what}: request {rid} body {short(body)}, want {short({'method': method, 'params': params})}")
        if job.get("rpc_id") is not None:
            expect(str(job["rpc_id"]) == rid, f"{what}: the job's rpc_id {job['rpc_id']} but the device got id {rid}")
        return rid

    def jobs():
        _, fleet = api.workspace_fleet("jobs")
        dev, token = api.device(fleet, "jobs-mqtt")
        notes = []

        # (a) two-way: the handler's reply becomes the result of a create that waits
        seen = Inbox()
        c = s.client(port=srv.plain_port, username=token)
        c.set_server_side_rpc_request_handler(rpc_handler(c, seen))
        s.connect(c)
        expect(s.session_ready(c), "no getSessionLimits answer within 5 s")
        params = {"pin": 7, "on": True, "level": 0.5, "label": "x"}
        job, dt = create_job(dev, "setGpio", params, True, JOB_WAIT_MS)
        rid_a = expect_request(seen.wait(1, 0.5), 1, job, "setGpio", params, "(a) two-way")
        expect_job(job, "(a) two-way, created with wait_ms", rpc_reply({"method": "setGpio", "params": params}))
        notes.append(f"(a) two-way id {rid_a} succeeded in {dt:.2f} s ({job_history(job)})")

        # (b) one-way: succeeds on the PUBACK; the device does not reply
        params = {"msg": "hello", "n": 1}
        job, dt = create_job(dev, "notify", params, False, JOB_WAIT_MS)
        rid_b = expect_request(seen.wait(2, 0.5), 2, job, "notify", params, "(b) one-way")
        expect_job(job, "(b) one-way, created with wait_ms", two_way=False)
        expect(int(rid_b) > int(rid_a), f"(b) request id {rid_b} after {rid_a}: ids must increase")
        notes.append(f"(b) one-way id {rid_b} succeeded in {dt:.2f} s")

        # (c) three jobs while the device is away: queued, then delivered in creation order
        bounded(c.disconnect, 5, "disconnect()")
        s.expect_status(dev, "offline")
        queued = []
        for i in (1, 2, 3):
            job, _ = create_job(dev, "seq", {"seq": i}, True)
            expect(job.get("state") == "queued",
                   f"(c) job {i} created while offline is {job.get('state')!r}, want 'queued'")
            queued.append(job)
        seen2 = Inbox()
        c2 = s.client(port=srv.plain_port, username=token)
        c2.set_server_side_rpc_request_handler(rpc_handler(c2, seen2))
        t0 = time.monotonic()
        s.connect(c2)
        got = seen2.wait(3, 5.0, t0)
        order = [short(a[1]) for _, a in got]
        expect(len(got) == 3 and [a[1].get("params") if isinstance(a[1], dict) else a[1] for _, a in got]
               == [{"seq": 1}, {"seq": 2}, {"seq": 3}],
               f"(c) after connecting, the handler saw {order} within 5 s, want seq 1, 2, 3 in that order")
        rids = []
        for i, job in enumerate(queued, 1):
            status, doc = api.call("GET", f"/api/v1/jobs/{job['id']}?wait_ms=5000", timeout=10)
            expect(status == 200 and isinstance(doc, dict), f"(c) GET /jobs/{{id}}?wait_ms -> {status} {short(doc)}")
            rids.append(expect_request(got, i, doc, "seq", {"seq": i}, f"(c) job {i}"))
            expect_job(doc, f"(c) job {i}", rpc_reply({"method": "seq", "params": {"seq": i}}))
        expect(int(rids[0]) > int(rid_b) and rids == sorted(rids, key=int),
               f"(c) request ids {rids} (after {rid_b}): ids must keep increasing across sessions")
        notes.append(f"(c) 3 queued offline, delivered in order as ids {', '.join(rids)} "
                     f"{got[-1][0]:.2f} s after connect(), all succeeded")

        # (d) TBHTTPDevice: subscribe('rpc') long-polls GET /rpc; send_rpc(.., rpc_id) replies
        dev_h, token_h = api.device(fleet, "jobs-http")
        d = TBHTTPDevice(srv.base, token_h)
        # Its request timeout is also its long-poll length and what unsubscribe() waits out.
        d._TBHTTPDevice__config["timeout"] = HTTP_POLL
        s.cleanups.append(lambda: d.unsubscribe("rpc"))
        polled, replied = Inbox(), Inbox()

        def on_rpc(data):  # on the SDK's subscription worker thread
            polled(data)
            try:
                replied(d.send_rpc(data.get("method"), {"seen": data.get("params")}, rpc_id=data.get("id")))
            except Exception as e:  # noqa: BLE001 - an exception here would end the subscription silently
                replied(f"{type(e).__name__}: {e}")

        d.subscribe("rpc", on_rpc)
        params = {"mode": "eco", "n": 2}
        job, dt = create_job(dev_h, "setMode", params, True, JOB_WAIT_MS)
        got = polled.wait(1, 0.5)
        expect(got, f"(d) subscribe('rpc') got nothing (job {job.get('state')!r}, history {job_history(job)})")
        data = got[0][1][0]
        expect(isinstance(data, dict) and isinstance(data.get("id"), int) and data["id"] > 0
               and same({k: v for k, v in data.items() if k != "id"}, {"method": "setMode", "params": params}),
               f"(d) GET /rpc gave {short(data)}, want {{\"id\": n > 0, \"method\": \"setMode\", \"params\": ..}}")
        r = replied.wait(1, 1.0)
        expect(r and isinstance(r[0][1][0], dict), f"(d) send_rpc(.., rpc_id={data['id']}) -> {r and r[0][1][0]!r}")
        # The SDK posts the same {"method","params"} wrapper as the reply: that is the result.
        expect_job(job, "(d) HTTP two-way, created with wait_ms",
                   {"method": "setMode", "params": {"seen": params}})
        expect(job.get("rpc_id") in (None, data["id"]), f"(d) job rpc_id {job.get('rpc_id')}, polled id {data['id']}")
        notes.append(f"(d) HTTP long poll got id {data['id']}; its reply completed the job in {dt:.2f} s")
        return "; ".join(notes)


    # -- the gateway API (TBGatewayMqttClient, thingsboard-gateway.md) --

    def gateway_api():
        ws, fleet = api.workspace_fleet("gw")
        thermo = api.ok("POST", "/api/v1/fleets", {"workspace_id": ws, "name": "gw-thermo"})["id"]
        doc = api.ok("POST", "/api/v1/devices", {"fleet_id": fleet, "name": "gw-edge", "gateway": True,
                                                   "gateway_type_fleets": {"Thermometer": thermo}})
        gw_token = doc["credentials"]["token"]
        gw = TBGatewayMqttClient(HOST, port=srv.plain_port, username=gw_token)
        s.clients.append(gw)
        s.connect(gw)
        expect(s.session_ready(gw), "no getSessionLimits answer within 5 s")
        expect(poll(lambda: not gw.get_subscriptions_in_progress(), 5),
               "the gateway's subscriptions (attributes, attributes/response, rpc) were not granted")
        name, other = f"SN-{uid()}", f"SN-{uid()}"
        s.acked(bounded(lambda: gw.gw_connect_device(name, "Thermometer"), 10, "gw_connect_device()"),
                "gw_connect_device")
        sub = api.find_device(thermo, name)
        expect(sub is not None, f"{name} was not created in the fleet its type maps to")
        expect(sub.get("gateway", {}).get("role") == "sub_device" and sub["gateway"].get("device_type") == "Thermometer",
               f"{name} is not a Thermometer sub-device: {short(sub)}")
        expect(sub.get("status") == "online", f"{name} is {sub.get('status')}, want online")
        sid = sub["id"]
        ts = now_ms() - 5000
        s.acked(bounded(lambda: gw.gw_send_telemetry(name, {"ts": ts, "values": {"temperature": 21.5}}), 10,
                        "gw_send_telemetry()"), "gw_send_telemetry")
        s.acked(bounded(lambda: gw.gw_send_telemetry(other, {"humidity": 40}), 10, "gw_send_telemetry(other)"),
                "gw_send_telemetry(other)")
        s.expect_latest(sid, "temperature", 21.5)
        o = api.find_device(fleet, other)
        expect(o is not None and o["gateway"].get("device_type") == "default",
               f"{other}, first named in telemetry, is not a default sub-device of the gateway's fleet: {short(o)}")
        s.acked(bounded(lambda: gw.gw_send_attributes(name, {"model": "T1000"}), 10, "gw_send_attributes()"),
                "gw_send_attributes")
        expect(poll(lambda: api.attribute_values(sid, "client").get("model") == "T1000", 5),
               f"client attribute model not stored: {short(api.attributes(sid))}")

        # An operator's shared attribute reaches the subscribed callback.
        pushes = Inbox()
        gw.gw_subscribe_to_all_device_attributes(name, pushes)
        t0 = time.monotonic()
        api.put_attributes(sid, "shared", {"firmwareVersion": "2.0"})
        got = pushes.wait(1, PUSH_TIMEOUT, t0)
        expect(got and same(got[0][1][0], {"device": name, "data": {"firmwareVersion": "2.0"}}),
               f"attribute push: {[short(a[0]) for _, a in got]}")
        dt_push = got[0][0]

        # Attribute requests, shared and client.
        answers = Inbox()
        bounded(lambda: gw.gw_request_shared_attributes(name, ["firmwareVersion"], answers), 10,
                "gw_request_shared_attributes()")
        bounded(lambda: gw.gw_request_client_attributes(name, ["model", "missing"], answers), 10,
                "gw_request_client_attributes()")
        got = answers.wait(2, 5.0)
        expect(len(got) == 2, f"attribute responses: {[short(a) for _, a in got]}")
        by_id = sorted((a[0] for _, a in got), key=lambda c: c.get("id", 0))
        expect(by_id[0].get("value") == "2.0" and by_id[0].get("device") == name,
               f"one key asked: want value 2.0, got {short(by_id[0])}")
        expect(same(by_id[1].get("values"), {"model": "T1000"}),
               f"two keys asked: want values {{model}}, got {short(by_id[1])}")

        # A two-way job: the handler replies with gw_send_rpc_reply.
        requests = Inbox()

        def on_rpc(client, content):  # on the SDK's network thread
            requests(content)
            d = content.get("data") or {}
            client.gw_send_rpc_reply(content.get("device"), d.get("id"), {"echo": d.get("params")})

        gw.gw_set_server_side_rpc_request_handler(on_rpc)
        status, job = api.call("POST", f"/api/v1/devices/{sid}/jobs?wait_ms=10000",
                               {"method": "echo", "params": {"x": 1}, "two_way": True}, timeout=15)
        got = requests.wait(1, 1.0)
        expect(got and got[0][1][0].get("device") == name and got[0][1][0]["data"].get("method") == "echo",
               f"RPC request: {[short(a[0]) for _, a in got]}")
        expect(status == 201 and job.get("state") == "succeeded" and same(job.get("result"), {"echo": {"x": 1}}),
               f"job -> {status} {short(job)}")
        time.sleep(0.5)
        expect(requests.count() == 1, f"the reply came back as a request: {[short(a[0]) for _, a in requests.items]}")

        s.acked(bounded(lambda: gw.gw_claim(name, "secret", 60000), 10, "gw_claim()"), "gw_claim")
        s.acked(bounded(lambda: gw.gw_disconnect_device(other), 10, "gw_disconnect_device()"), "gw_disconnect_device")
        expect(poll(lambda: api.status(o["id"]) == "offline", 5), f"{other} still online after gw_disconnect_device")
        expect(api.status(sid) == "online", f"{name} went offline with {other}")
        return f"push {dt_push:.2f} s; sub-devices created in their type's fleet and the gateway's"

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
        ("9 telemetry forms and value types", telemetry_forms),
        ("10 tagged telemetry (v1/devices/me/telemetry/{tag})", tagged_telemetry),
        ("10b conditions (v1/devices/me/conditions)", conditions),
        ("11 getSessionLimits applied by the SDK", session_limits),
        ("12 client RPC: unknown method -> error", client_rpc),
        ("13 attributes: publish, REST, requests", attributes_mqtt),
        ("14 shared attribute push (change, delete)", attributes_push),
        ("15 fleet default shared attributes", fleet_defaults),
        ("16 HTTP device API (TBHTTPDevice)", http_device_api),
        ("17 aggregates (1h buckets, UTC and a tz)", aggregates),
        ("18 server-side RPC (jobs)", jobs),
        ("19 OTA firmware update (chunked and whole, SHA256)", ota_firmware),
        ("20 OTA campaign: the SDK updates, the campaign follows each state", ota_campaign),
        ("21 gateway API (TBGatewayMqttClient): sub-devices, data, pushes, requests, RPC", gateway_api),
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


def selects(only, name):
    """--only: a check number ("7" = 7a-7h, "1" = check 1 only) or any part of a name."""
    if re.fullmatch(r"\d+[a-z]?", only):
        number = name.split()[0]
        return number == only or number.rstrip(string.ascii_lowercase) == only
    return only in name


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--only", action="append", default=[],
                    help='a check number ("7" runs 7a-7h, "1" only check 1) or part of a name')
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--verbose", action="store_true", help="SDK logs to stderr, tracebacks")
    args = ap.parse_args()

    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        print(f"not an executable: {binary}", file=sys.stderr)
        return 2
    if args.verbose:
        os.environ["TB_SDK_VERBOSE"] = "1"

    # The HTTP SDK stamps telemetry with naive local time labelled UTC (spec §7).
    os.environ["TZ"] = "UTC"
    time.tzset()
    threading.excepthook = record_thread_error

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
        selected = [(n, f) for n, f in checks(suite) if not args.only or any(selects(o, n) for o in args.only)]
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
