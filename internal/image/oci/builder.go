package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/authn"
)

// DefaultHeadroomMiB is the free space an image gets beyond its content
// when Builder.HeadroomMiB is zero.
const DefaultHeadroomMiB = 256

// Builder turns images, image tarballs, directories and root file system
// tarballs into ext4 root images. The zero value is not usable: LayerDir
// must be set for Pull. A Builder is safe for concurrent use by several
// goroutines as long as its fields are not changed meanwhile; concurrent
// pulls sharing a layer may both fetch it, and the cache keeps one copy.
type Builder struct {
	// LayerDir caches compressed layers by digest (files named
	// sha256-HEX). Usually <data>/layers.
	LayerDir string
	// Platform is the image variant to pull, "os/arch[/variant]";
	// "" means linux and the host's architecture.
	Platform string
	// Keychain finds registry credentials; nil means authn.DefaultKeychain
	// (the docker config file and its credential helpers).
	Keychain authn.Keychain
	// Transport carries registry requests; nil means http.DefaultTransport.
	Transport http.RoundTripper
	// HeadroomMiB is free space added beyond the content; 0 means
	// DefaultHeadroomMiB.
	HeadroomMiB int
	// Progress receives pull progress: a bar with bytes when it is a
	// terminal, one plain line per layer otherwise; nil means none.
	Progress io.Writer
	// rootless makes a build behave as without root even when it has it
	// (for tests of that path).
	rootless bool

	// Logger receives warnings (attributes dropped, device nodes skipped)
	// and debug detail; nil discards.
	Logger *slog.Logger
}

func (b *Builder) logger() *slog.Logger {
	if b.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Logger
}

func (b *Builder) platform() string {
	if b.Platform == "" {
		return "linux/" + runtime.GOARCH
	}
	return b.Platform
}

func (b *Builder) headroomMiB() int {
	if b.HeadroomMiB <= 0 {
		return DefaultHeadroomMiB
	}
	return b.HeadroomMiB
}

func (b *Builder) keychain() authn.Keychain {
	if b.Keychain == nil {
		return authn.DefaultKeychain
	}
	return b.Keychain
}

// stage runs fill over a fresh staging directory next to dst, then writes
// the ext4 image of the result to dst. The staging directory is always
// removed; dst exists afterwards only if everything succeeded.
func (b *Builder) stage(ctx context.Context, dst string, fill func(ctx context.Context, t *tree) error) (size int64, err error) {
	staging, err := os.MkdirTemp(filepath.Dir(dst), ".smolvm-staging-*")
	if err != nil {
		return 0, fmt.Errorf("creating staging dir: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(staging); rerr != nil {
			err = errors.Join(err, fmt.Errorf("removing staging dir: %w", rerr))
		}
	}()
	if err := os.Chmod(staging, 0o755); err != nil {
		return 0, fmt.Errorf("preparing staging dir: %w", err)
	}
	t, err := openTree(staging, b.logger())
	if err != nil {
		return 0, err
	}
	if b.rootless {
		t.privileged = false
	}
	err = fill(ctx, t)
	if err == nil {
		err = t.finish()
	}
	script := t.deferredScript()
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	size, err = makeExt4(ctx, b.logger(), staging, dst, b.headroomMiB())
	if err != nil || script == "" {
		return size, err
	}
	if err := runDebugfs(ctx, dst, script); err != nil {
		os.Remove(dst)
		return 0, fmt.Errorf("setting owners and device nodes in the image: %w", err)
	}
	return size, nil
}
