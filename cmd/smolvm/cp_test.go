package main

import "testing"

func TestSplitVMPath(t *testing.T) {
	tests := []struct{ in, id, path string }{
		{"dev:/tmp/x", "dev", "/tmp/x"},
		{"vm-1234abcd:/", "vm-1234abcd", "/"},
		{"./dev:/x", "", "./dev:/x"},
		{"/abs/path", "", "/abs/path"},
		{"-", "", "-"},
		{"file:with:colons", "file", "with:colons"},
		{":/x", "", ":/x"},
		{"a/b:/x", "", "a/b:/x"},
	}
	for _, tt := range tests {
		id, p := splitVMPath(tt.in)
		if id != tt.id || p != tt.path {
			t.Errorf("splitVMPath(%q) = %q, %q; want %q, %q", tt.in, id, p, tt.id, tt.path)
		}
	}
}
