// Package test holds Kiln's black-box tests: they build the kiln binary,
// start real processes on loopback ports, write through remote-write, query
// through the HTTP API and kill processes to check what survives.
package test
