// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 for the real-control-plane tests
// (hack/install-cluster-tools.sh). etcd's own main module is a thin wrapper around etcdmain.Main, like this one.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
