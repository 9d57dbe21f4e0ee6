// Package pki is the hub's private certificate authority: on first start it creates
// a CA and a server certificate for the hub's names and addresses, keeps them in
// the data directory, and issues no certificate it was not asked for.
package pki
