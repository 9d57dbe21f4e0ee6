// Package bench is Moat's reproducible load generator: it starts a hub (and,
// for comparison, a Mosquitto broker) on loopback addresses, creates device
// identities in bulk, drives device-to-cloud telemetry, connect storms, idle
// connections, twin and cloud-to-device traffic against them, and writes the
// measured figures as JSON and a markdown table (see Run).
//
// The MQTT client here is deliberately minimal (CONNECT, PUBLISH, PUBACK,
// SUBSCRIBE, DISCONNECT of MQTT 3.1.1) so that the generator, which shares the
// machine's cores with the broker under test, spends as little CPU as possible
// and controls exactly how QoS 1 publishes are pipelined and flushed.
package bench
