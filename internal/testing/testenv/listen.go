package testenv

import "net"

// loopbackListen makes kfake listen on an ephemeral loopback port, whatever
// address it asks for, so tests never open a port on another interface.
func loopbackListen(network, _ string) (net.Listener, error) {
	return net.Listen(network, "127.0.0.1:0")
}
