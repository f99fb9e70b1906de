package main

import (
	"reflect"
	"testing"

	"github.com/hearth-vm/hearth"
)

func TestParseLimit(t *testing.T) {
	cases := []struct {
		in   string
		want *hearth.RateLimit
		ok   bool
	}{
		{"none", &hearth.RateLimit{}, true},
		{"bw:10M/1s", &hearth.RateLimit{Bandwidth: &hearth.TokenBucket{Size: 10 << 20, RefillTimeMs: 1000}}, true},
		{"bw:1K/s", &hearth.RateLimit{Bandwidth: &hearth.TokenBucket{Size: 1024, RefillTimeMs: 1000}}, true},
		{"ops:500/100ms:50,bw:4096/ms", &hearth.RateLimit{Ops: &hearth.TokenBucket{Size: 500, OneTimeBurst: 50, RefillTimeMs: 100},
			Bandwidth: &hearth.TokenBucket{Size: 4096, RefillTimeMs: 1}}, true},
		{"bw:1M/1s:2M", &hearth.RateLimit{Bandwidth: &hearth.TokenBucket{Size: 1 << 20, OneTimeBurst: 2 << 20, RefillTimeMs: 1000}}, true},
		{"", nil, false},
		{"bw:10M", nil, false},
		{"iops:1/s", nil, false},
		{"ops:0/s", nil, false},
		{"ops:-5/s", nil, false},
		{"ops:5/1500us", nil, false},
		{"ops:5/0s", nil, false},
		{"ops:5/s:-1", nil, false},
		{"bw:lots/s", nil, false},
	}
	for _, c := range cases {
		got, err := parseLimit(c.in)
		if (err == nil) != c.ok || (c.ok && !reflect.DeepEqual(got, c.want)) {
			t.Errorf("parseLimit(%q) = %+v, %v; want %+v ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}
