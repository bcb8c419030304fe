#!/usr/bin/env python3
"""A device that provisions itself into a fleet, then connects with the credentials it got.

It holds only its fleet's provisioning key and secret (the same in every unit of a batch) and its
own name. On first start it sends a ThingsBoard provision request over MQTT/TLS, stores the access
token it gets back in --credentials-file (mode 0600), and publishes telemetry with it. Later starts
find the file and skip provisioning: with the allow-create strategy a second request for the same
name is refused, as ThingsBoard refuses it.

    python3 provision.py --host 127.0.0.1 --port 8883 --ca ca.pem \\
        --key KEY --secret SECRET --name sensor-0042

Needs paho-mqtt 2.x (the ThingsBoard SDK's own paho fork, tb-paho-mqtt-client, works the same).
The SDK's provision() is not used: it turns TLS on only when the port is literally 8883.
"""

import argparse
import json
import os
import queue
import ssl
import sys
import time

import paho.mqtt.client as mqtt

PROVISION_REQUEST = "/provision/request"
PROVISION_RESPONSE = "/provision/response"
TELEMETRY = "v1/devices/me/telemetry"
TIMEOUT = 10.0  # seconds for each network step


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1",
                   help="Corral's host name or address; must be in its certificate (pki.hosts)")
    p.add_argument("--port", type=int, default=8883, help="MQTT over TLS port")
    p.add_argument("--ca", default="ca.pem",
                   help="Corral's CA (corral ca show, or GET /api/v1/ca.pem)")
    p.add_argument("--key", required=True, help="the fleet's provisioning key")
    p.add_argument("--secret", required=True, help="the fleet's provisioning secret")
    p.add_argument("--name", required=True, help="this device's name (unique in the workspace)")
    p.add_argument("--credentials-file", default="credentials.json",
                   help="where the credentials are kept between starts")
    return p.parse_args()


def new_client(args, username):
    # MQTT 3.1.1 and an empty client id, as ThingsBoard devices send; the token is the username.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    client.username_pw_set(username)
    client.tls_set(ca_certs=args.ca, cert_reqs=ssl.CERT_REQUIRED)
    inbox = queue.Queue()
    client.on_connect = lambda c, u, flags, reason, props: inbox.put(("connack", reason))
    client.on_subscribe = lambda c, u, mid, reasons, props: inbox.put(("suback", reasons))
    client.on_message = lambda c, u, msg: inbox.put(("message", msg))
    return client, inbox


def expect(inbox, kind):
    """The next event of the given kind, within TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            got, value = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            sys.exit(f"no {kind} within {TIMEOUT:.0f} s")
        if got == kind:
            return value


def connect(args, username):
    client, inbox = new_client(args, username)
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    reason = expect(inbox, "connack")
    if reason.is_failure:
        client.loop_stop()
        sys.exit(f"connection refused: {reason}")
    return client, inbox


def provision(args):
    """One provision request; returns Corral's SUCCESS answer or exits with its errorMsg."""
    client, inbox = connect(args, "provision")
    try:
        # Subscribe first and wait for the SUBACK, so the answer cannot come before it is asked for.
        client.subscribe(PROVISION_RESPONSE, qos=1)
        expect(inbox, "suback")
        # No credentialsType: Corral generates an access token. ThingsBoard's request also takes
        # ACCESS_TOKEN (with a token of your choice), MQTT_BASIC and X509_CERTIFICATE.
        request = {
            "deviceName": args.name,
            "provisionDeviceKey": args.key,
            "provisionDeviceSecret": args.secret,
        }
        client.publish(PROVISION_REQUEST, json.dumps(request), qos=1)
        answer = json.loads(expect(inbox, "message").payload)
    finally:
        client.disconnect()
        client.loop_stop()
    if answer.get("status") != "SUCCESS":
        sys.exit(f"provisioning refused: {answer.get('status')}: {answer.get('errorMsg')}")
    if answer.get("credentialsType") != "ACCESS_TOKEN":
        sys.exit(f"unexpected credentials type {answer.get('credentialsType')!r}")
    return answer


def load_or_provision(args):
    if os.path.exists(args.credentials_file):
        with open(args.credentials_file) as f:
            print(f"credentials from {args.credentials_file}", flush=True)
            return json.load(f)
    answer = provision(args)
    creds = {"name": args.name, "token": answer["credentialsValue"]}
    # The token is a password: readable by this user only, and never half-written.
    tmp = args.credentials_file + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    os.replace(tmp, args.credentials_file)
    print(f"provisioned {args.name}; credentials in {args.credentials_file}", flush=True)
    return creds


def main():
    args = parse_args()
    creds = load_or_provision(args)
    client, _ = connect(args, creds["token"])
    try:
        info = client.publish(TELEMETRY, json.dumps({"temperature": 20.25, "boot": 1}), qos=1)
        # Corral acknowledges QoS 1 once the data is on disk.
        info.wait_for_publish(TIMEOUT)
        if not info.is_published():
            sys.exit("telemetry not acknowledged")
        print("telemetry sent", flush=True)
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    main()
