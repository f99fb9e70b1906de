package jail

import "github.com/hearth-vm/hearth/store"

// The runtime backs the allocator with its store.
var _ Allocator = (*store.Store)(nil)
