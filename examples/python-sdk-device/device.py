#!/usr/bin/env python3
"""A Corral device written with the ThingsBoard Python SDK (tb-mqtt-client), unchanged.

Over MQTT/TLS with an access token it sends telemetry, reports client attributes, takes a shared
attribute update pushed by the server and answers a server-side RPC command (a Corral job). It
exits 0 once it has handled one of each, 1 if --wait seconds pass first. The operator side (setting
the attribute, sending the command) is left to whoever runs it: `corral` in another terminal, or
examples/run.sh.

    python3 device.py --host 127.0.0.1 --port 8883 --ca ca.pem --token TOKEN
"""

import argparse
import logging
import queue
import sys
import time

from tb_device_mqtt import TBDeviceMqttClient, TBPublishInfo

# The shared attribute this device follows; an operator sets it with
#   corral attributes set NAME target_temperature=23.5
WATCHED_ATTRIBUTE = "target_temperature"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1",
                   help="Corral's host name or address; must be in its certificate (pki.hosts)")
    p.add_argument("--port", type=int, default=8883, help="MQTT over TLS port")
    p.add_argument("--ca", default="ca.pem",
                   help="Corral's CA (corral ca show, or GET /api/v1/ca.pem)")
    p.add_argument("--token", required=True, help="the device's access token")
    p.add_argument("--wait", type=float, default=60,
                   help="seconds to wait for the connection and the operator's actions")
    return p.parse_args()


def published(info: TBPublishInfo, what: str):
    """Blocks until the QoS 1 publish is acknowledged. Corral sends PUBACK only once the data is
    on disk, so a success here means the server has it for good."""
    if info.get() != TBPublishInfo.TB_ERR_SUCCESS:
        sys.exit(f"{what}: not published")


def main():
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The SDK warns "Cannot retrieve service configuration" once per connection: it reads
    # Corral's MQTT 5 CONNACK properties before the getSessionLimits answer, which it then applies.
    logging.getLogger("tb_connection").setLevel(logging.ERROR)

    # The SDK calls these from paho's network thread, where blocking or raising would stall or end
    # the whole client silently. So they only hand the message over to the main thread.
    events = queue.Queue()

    def on_attribute(update, *_):
        events.put(("attribute", update))

    def on_rpc(request_id, request):
        events.put(("rpc", (request_id, request)))

    client = TBDeviceMqttClient(args.host, port=args.port, username=args.token)
    client.subscribe_to_attribute(WATCHED_ATTRIBUTE, on_attribute)
    # Set before connect(): Corral hands over queued commands as soon as the device subscribes,
    # which the SDK does right after CONNACK.
    client.set_server_side_rpc_request_handler(on_rpc)
    client.connect(tls=True, ca_certs=args.ca)

    deadline = time.monotonic() + args.wait
    # The SDK's last step after CONNACK is asking for the session limits (getSessionLimits); its
    # answer means the subscriptions are in place and the publish limits are known.
    while not (client.is_connected() and client.rate_limits_received):
        if time.monotonic() > deadline:
            sys.exit("not connected (is the token right, and the CA?)")
        time.sleep(0.1)

    published(client.send_telemetry({"temperature": 21.5, "humidity": 48}), "telemetry")
    published(client.send_attributes({"firmware_version": "1.4.2", "model": "TH-20"}), "attributes")
    print("ready: telemetry and attributes sent; waiting for a shared attribute and a command",
          flush=True)

    got_attribute = got_command = False
    while not (got_attribute and got_command):
        try:
            kind, body = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            client.disconnect()
            sys.exit(f"timed out: attribute update {'seen' if got_attribute else 'missing'}, "
                     f"command {'answered' if got_command else 'missing'}")
        if kind == "attribute":
            target = body[WATCHED_ATTRIBUTE]
            print(f"shared attribute: {WATCHED_ATTRIBUTE} = {target}", flush=True)
            # Report back what the device now runs with, so the operator sees it took effect.
            published(client.send_attributes({"target_temperature_applied": target}), "attributes")
            got_attribute = True
        else:
            request_id, request = body
            method, params = request.get("method"), request.get("params") or {}
            print(f"command {request_id}: {method} {params}", flush=True)
            if method == "setInterval":
                reply = {"interval": params.get("seconds"), "ok": True}
            else:
                reply = {"error": f"unknown method {method!r}"}
            # request_id is the str the SDK cut from the topic; the reply topic is built from it.
            # Waiting for the PUBACK is fine here, on the main thread (never in the handler).
            client.send_rpc_reply(request_id, reply, wait_for_publish=True)
            got_command = True

    client.disconnect()
    print("done", flush=True)


if __name__ == "__main__":
    main()
