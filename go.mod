module github.com/hearth-vm/hearth

go 1.26.0

require (
	go.etcd.io/bbolt v1.4.3
	golang.org/x/sys v0.50.0
	gopkg.in/yaml.v3 v3.0.1
)
