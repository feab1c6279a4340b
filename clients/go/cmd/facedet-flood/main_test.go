package main

import (
	"io"
	"testing"
)

func TestParseRefusesWhatCannotRun(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--image", "x.jpg", "--rate", "0"},
		{"--image", "x.jpg", "--duration", "-1s"},
		{"--image", "x.jpg", "--connections", "0"},
		{"--image", "x.jpg", "--in-flight", "0"},
	} {
		if _, err := parse(args, io.Discard); err == nil {
			t.Errorf("parse(%q) accepted", args)
		}
	}
	s, err := parse([]string{"--image", "x.jpg", "--rate", "500", "--connections", "3"}, io.Discard)
	if err != nil || s.rate != 500 || s.connections != 3 || s.inFlight != 4000 {
		t.Errorf("parse: %+v, %v", s, err)
	}
}

func TestPercentile(t *testing.T) {
	sorted := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if got := percentile(sorted, 0.5); got != 6 {
		t.Errorf("p50 = %v", got)
	}
	if got := percentile(sorted, 0.99); got != 10 {
		t.Errorf("p99 = %v", got)
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
}
