package node

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	sockaddr "github.com/hashicorp/go-sockaddr"

	"github.com/kilnhq/kiln/cluster/transfer"
)

// nodeNameFile keeps the generated node name in the data directory: the
// ring assigns partitions by name, so a node restarted on the same data must
// come back under the same name.
const nodeNameFile = "node-name"

// resolveNodeName returns the --cluster.node-name flag when set (and records
// it), else the name kept in dir, else a new <hostname>-<random> name that
// it records.
func resolveNodeName(flagName, dir string) (string, error) {
	path := filepath.Join(dir, nodeNameFile)
	if flagName != "" {
		kept, err := os.ReadFile(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return flagName, os.WriteFile(path, []byte(flagName+"\n"), 0o644)
		case err != nil:
			return "", fmt.Errorf("read node name: %w", err)
		case strings.TrimSpace(string(kept)) != flagName:
			return "", fmt.Errorf("--cluster.node-name=%s, but %s holds the data of node %q: a node keeps its name for the life of its data",
				flagName, dir, strings.TrimSpace(string(kept)))
		}
		return flagName, nil
	}
	if b, err := os.ReadFile(path); err == nil {
		if name := strings.TrimSpace(string(b)); name != "" {
			return name, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read node name: %w", err)
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "kiln"
	}
	var r [3]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	name := host + "-" + hex.EncodeToString(r[:])
	if err := os.WriteFile(path, []byte(name+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("record node name: %w", err)
	}
	return name, nil
}

// apiAdvertiseAddr is the HTTP address peers use: the flag when set, else
// the bound API address, with the host peers reach this node's gossip on
// when the API listens on every interface.
func apiAdvertiseAddr(flagAddr, bound string, cl ClusterConfig) string {
	if flagAddr != "" {
		return flagAddr
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if unspecified(host) {
		host = advertiseHost(cl)
	}
	return net.JoinHostPort(host, port)
}

// advertiseHost is the host peers reach this node on: the gossip advertise
// host, else a specific gossip listen host, else the private IP memberlist
// would pick too.
func advertiseHost(cl ClusterConfig) string {
	for _, a := range []string{cl.AdvertiseAddress, cl.ListenAddress} {
		if h, _, err := net.SplitHostPort(a); err == nil && !unspecified(h) {
			return h
		}
	}
	if ip, err := sockaddr.GetPrivateIP(); err == nil && ip != "" {
		return ip
	}
	return "127.0.0.1"
}

func unspecified(host string) bool {
	ip := net.ParseIP(host)
	return host == "" || (ip != nil && ip.IsUnspecified())
}

// lateTopology lets the mover be built before the cluster it asks about:
// the cluster needs its mover at construction.
type lateTopology struct{ transfer.Topology }
