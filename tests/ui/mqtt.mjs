// A minimal MQTT 3.1.1 client over TLS for the browser tests: one connection that logs in with
// a device's access token, publishes QoS 1 telemetry, subscribes to RPC requests and answers
// them on the same session (a second connection with the same token would take the session
// over). Only what the tests need: CONNECT, SUBSCRIBE, PUBLISH QoS 0/1, PUBACK, PINGREQ.

import tls from 'node:tls';
import { EventEmitter } from 'node:events';

function varint(n) {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

function str(s) {
  const b = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length);
  return Buffer.concat([len, b]);
}

function packet(first, body) {
  return Buffer.concat([Buffer.from([first]), varint(body.length), body]);
}

export class Mqtt extends EventEmitter {
  constructor(socket) {
    super();
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.nextId = 1;
    this.waiting = new Map(); // packet id -> resolve
    socket.on('data', (d) => this.onData(d));
    socket.on('close', () => this.emit('close'));
    socket.on('error', (e) => this.emit('error', e));
    this.ping = setInterval(() => socket.write(Buffer.from([0xc0, 0x00])), 20000);
  }

  /** Connects and logs in; resolves once the server accepted (CONNACK 0). */
  static connect({ host, port, ca, username, timeoutMs = 10000 }) {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host, port, ca, servername: 'localhost' });
      const timer = setTimeout(() => { socket.destroy(); reject(new Error('MQTT connect timed out')); }, timeoutMs);
      socket.once('error', (e) => { clearTimeout(timer); reject(e); });
      socket.once('secureConnect', () => {
        const client = new Mqtt(socket);
        client.once('connack', (rc) => {
          clearTimeout(timer);
          if (rc === 0) resolve(client);
          else { client.close(); reject(new Error(`CONNACK refused: ${rc}`)); }
        });
        const variable = Buffer.concat([str('MQTT'), Buffer.from([4, 0x82, 0, 60])]);
        socket.write(packet(0x10, Buffer.concat([variable, str(''), str(username)])));
      });
    });
  }

  onData(d) {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      if (this.buf.length < 2) return;
      let len = 0;
      let mul = 1;
      let i = 1;
      for (;;) {
        if (i >= this.buf.length) return;
        const b = this.buf[i++];
        len += (b & 0x7f) * mul;
        mul *= 128;
        if (!(b & 0x80)) break;
      }
      if (this.buf.length < i + len) return;
      const type = this.buf[0] >> 4;
      const flags = this.buf[0] & 0x0f;
      const body = this.buf.subarray(i, i + len);
      this.buf = this.buf.subarray(i + len);
      this.handle(type, flags, body);
    }
  }

  handle(type, flags, body) {
    if (type === 2) this.emit('connack', body[1]);
    else if (type === 4 || type === 9) {
      const id = body.readUInt16BE(0);
      const done = this.waiting.get(id);
      this.waiting.delete(id);
      if (done) done(type === 9 ? body[2] : 0);
    } else if (type === 3) {
      const tlen = body.readUInt16BE(0);
      const topic = body.subarray(2, 2 + tlen).toString('utf8');
      let off = 2 + tlen;
      const qos = (flags >> 1) & 3;
      if (qos > 0) {
        const id = body.readUInt16BE(off);
        off += 2;
        const ack = Buffer.alloc(2);
        ack.writeUInt16BE(id);
        this.socket.write(packet(0x40, ack));
      }
      this.emit('message', topic, body.subarray(off).toString('utf8'));
    }
  }

  id() {
    const id = this.nextId;
    this.nextId = (this.nextId % 65535) + 1;
    return id;
  }

  acked(id, what, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.waiting.delete(id); reject(new Error(`${what}: no acknowledgement`)); }, timeoutMs);
      this.waiting.set(id, (rc) => { clearTimeout(timer); resolve(rc); });
    });
  }

  async subscribe(topic) {
    const id = this.id();
    const idb = Buffer.alloc(2);
    idb.writeUInt16BE(id);
    const p = this.acked(id, `SUBSCRIBE ${topic}`);
    this.socket.write(packet(0x82, Buffer.concat([idb, str(topic), Buffer.from([1])])));
    const rc = await p;
    if (rc === 0x80) throw new Error(`SUBSCRIBE ${topic} refused`);
  }

  /** QoS 1 publish; resolves on PUBACK. */
  async publish(topic, payload) {
    const id = this.id();
    const idb = Buffer.alloc(2);
    idb.writeUInt16BE(id);
    const p = this.acked(id, `PUBLISH ${topic}`);
    this.socket.write(packet(0x32, Buffer.concat([str(topic), idb, Buffer.from(payload, 'utf8')])));
    await p;
  }

  close() {
    clearInterval(this.ping);
    try { this.socket.write(Buffer.from([0xe0, 0x00])); } catch { /* closed already */ }
    this.socket.end();
    this.socket.destroy();
  }
}
