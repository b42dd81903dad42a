// Command etcd is a thin wrapper around etcd's server entrypoint.
//
// go.etcd.io/etcd/server/v3 carries replace directives in its go.mod, so it
// cannot be `go install`ed directly; depending on it from this module and
// calling etcdmain.Main gives the same binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
