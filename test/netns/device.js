'use strict';
// A device on the official Azure IoT Node SDK (MQTT), run by netns_test.go
// inside a client network namespace. It resolves the hub's host name to
// HUB_IP (each namespace sees the hub at its own address, like a private DNS
// zone would answer) and reports on stdout, one word per line:
//   CONNECTED | ERROR <ErrorName> <message>     after open()
//   SENT | SENDERR <ErrorName>                  for each "send" line on stdin
//   DISCONNECTED                                when the hub drops the connection
// Mode "connect" exits after open(); mode "hold" stays until stdin closes.
const dns = require('node:dns');
const readline = require('node:readline');
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const [mode, connectionString] = process.argv.slice(2);
const hubIP = process.env.HUB_IP;
const hostName = /HostName=([^;]+)/.exec(connectionString)[1];

const realLookup = dns.lookup;
dns.lookup = (name, opts, cb) => {
  if (typeof opts === 'function') { cb = opts; opts = {}; }
  if (name !== hostName) return realLookup(name, opts, cb);
  const family = hubIP.includes(':') ? 6 : 4;
  if (opts && opts.all) return process.nextTick(cb, null, [{ address: hubIP, family }]);
  return process.nextTick(cb, null, hubIP, family);
};

const say = (line) => process.stdout.write(line + '\n');
let gone = false;
const disconnected = () => {
  if (gone) return;
  gone = true;
  say('DISCONNECTED');
};

const client = Client.fromConnectionString(connectionString, Mqtt);
client.on('error', () => {});
client.on('disconnect', disconnected);

client.open().then(() => {
  say('CONNECTED');
  // The transport reports a dropped socket even while the client's retry
  // policy would stay quiet about it.
  client._transport.on('disconnect', disconnected);
  if (mode === 'connect') {
    return client.close().then(() => process.exit(0));
  }
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (l) => {
    if (l.trim() !== 'send') return;
    client.sendEvent(new Message('ping')).then(() => say('SENT'), (err) => say('SENDERR ' + err.constructor.name));
  });
  rl.on('close', () => process.exit(0));
}, (err) => {
  say(`ERROR ${err.constructor.name} ${String(err.message).split('\n')[0]}`);
  process.exit(0);
});
