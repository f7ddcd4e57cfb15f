// etcd server at the version k8s.io/kubernetes pins. Imported as a package
// because `go install go.etcd.io/etcd/server/v3@...` refuses etcd's replaces.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
