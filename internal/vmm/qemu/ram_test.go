package qemu

import (
	"strings"
	"testing"
)

func TestRAMConfigArgs(t *testing.T) {
	tests := []struct {
		name string
		cfg  ramConfig
		want string
	}{
		{"default", ramConfig{}, ""},
		{"shared memfd", ramConfig{shared: true},
			"-object memory-backend-memfd,id=ram,size=512M,share=on -machine memory-backend=ram"},
		{"restore lazily", ramConfig{file: "/s/a,b/mem", incoming: true},
			"-object memory-backend-file,id=ram,size=512M,mem-path=/s/a,,b/mem,share=off -machine memory-backend=ram -incoming defer"},
		{"restore a stream", ramConfig{shared: true, incoming: true},
			"-object memory-backend-memfd,id=ram,size=512M,share=on -machine memory-backend=ram -incoming defer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := strings.Join(tt.cfg.args(512), " "); got != tt.want {
				t.Errorf("args = %q\nwant   %q", got, tt.want)
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b":      "'/a/b'",
		"/a b/it's": `'/a b/it'\''s'`,
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
