package oci

import (
	"fmt"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/smolvm/smolvm/internal/image"
)

// refNameAnnotation names an image inside an OCI layout.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// imageConfig reads and checks an image's config: it must describe a
// container image for the wanted platform with one diff ID per layer.
func imageConfig(img v1.Image, m *v1.Manifest, platform string) (*v1.ConfigFile, error) {
	switch m.Config.MediaType {
	case types.DockerConfigJSON, types.OCIConfigJSON, "":
	default:
		return nil, fmt.Errorf("%w: not a container image (config type %s)", ErrFormat, m.Config.MediaType)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading image config: %w", err)
	}
	want, err := v1.ParsePlatform(platform)
	if err != nil {
		return nil, err
	}
	if !platformMatches(cfg.Platform(), *want) {
		return nil, fmt.Errorf("%w %s: the image is for %s", ErrPlatform, want, cfg.Platform())
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%w: %d layers but %d diff ids in the config", ErrFormat, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	return cfg, nil
}

// platformMatches says whether an image for have runs on want; an image
// that does not say (an empty field) is given the benefit of the doubt.
func platformMatches(have *v1.Platform, want v1.Platform) bool {
	if have == nil {
		return true
	}
	same := func(h, w string) bool { return h == "" || w == "" || h == w }
	return same(have.OS, want.OS) && same(have.Architecture, want.Architecture) && same(have.Variant, want.Variant)
}

// configFrom keeps the parts of an image config a VM uses as defaults.
func configFrom(cfg *v1.ConfigFile) *image.Config {
	c := cfg.Config
	return &image.Config{
		Env:        slices.Clone(c.Env),
		WorkingDir: c.WorkingDir,
		User:       c.User,
		Entrypoint: slices.Clone(c.Entrypoint),
		Cmd:        slices.Clone(c.Cmd),
	}
}

// pickImage chooses from an index (searching nested indexes) the image for
// plat. With tag set only entries annotated with that ref name count.
func pickImage(idx v1.ImageIndex, plat v1.Platform, tag string) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading index: %w", err)
	}
	var have []string
	for _, d := range im.Manifests {
		if tag != "" && d.Annotations[refNameAnnotation] != tag {
			continue
		}
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("reading index %s: %w", d.Digest, remoteError(err))
			}
			if img, err := pickImage(child, plat, ""); err == nil {
				return img, nil
			}
		case d.MediaType.IsImage():
			if d.Platform != nil && d.Platform.OS == "unknown" {
				continue // attestations and other artefacts
			}
			if d.Platform == nil || platformMatches(d.Platform, plat) {
				return idx.Image(d.Digest)
			}
			have = append(have, d.Platform.String())
		}
	}
	if tag != "" && len(have) == 0 {
		return nil, fmt.Errorf("%w: no image tagged %q", image.ErrNotFound, tag)
	}
	if len(have) == 0 {
		return nil, fmt.Errorf("%w %s: the index holds no images", ErrPlatform, &plat)
	}
	return nil, fmt.Errorf("%w %s: the index has %s", ErrPlatform, &plat, strings.Join(have, ", "))
}
