package smolvm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// maxImageName is the longest image name the image store accepts.
const maxImageName = 63

// ImageNameFromRef returns the local image name a pulled image gets when
// none is given: the repository path without its registry host (and
// without Docker Hub's "library/"), slashes turned into dashes, then "-TAG"
// unless the tag is "latest", or "-" and the first 12 hex digits of a
// digest; lower case, other characters the name rule refuses turned into
// dashes. So python:3.12-slim is python-3.12-slim, ghcr.io/org/tool is
// org-tool and repo@sha256:abcdef… is repo-abcdef…. Names longer than 63
// characters keep 54 and gain a hash of the reference. Images of the same
// path in different registries share a name; give one explicitly then.
func ImageNameFromRef(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("%w image reference %q: %v", ErrInvalid, ref, err)
	}
	s := strings.TrimPrefix(r.Context().RepositoryStr(), "library/")
	switch r := r.(type) {
	case name.Tag:
		if t := r.TagStr(); t != "latest" {
			s += "-" + t
		}
	case name.Digest:
		_, hex, _ := strings.Cut(r.DigestStr(), ":")
		s += "-" + hex[:min(12, len(hex))]
	}
	out := sanitizeImageName(s)
	if out == "" {
		return "", fmt.Errorf("%w image reference %q: no usable name in it; give one", ErrInvalid, ref)
	}
	if len(out) > maxImageName {
		sum := sha256.Sum256([]byte(ref))
		out = strings.TrimRight(out[:54], "-_.") + "-" + hex.EncodeToString(sum[:4])
	}
	return out, nil
}

// importName is the local name of an imported tarball: from the tag when
// one is given, else from the file name without its .tar suffix.
func importName(file, tag string) (string, error) {
	if tag != "" {
		return ImageNameFromRef(tag)
	}
	base := filepath.Base(file)
	for _, ext := range []string{".tar", ".oci", ".docker"} {
		base = strings.TrimSuffix(base, ext)
	}
	n := sanitizeImageName(base)
	if len(n) > maxImageName {
		n = strings.TrimRight(n[:maxImageName], "-_.")
	}
	if n == "" {
		return "", fmt.Errorf("%w: no image name in the file name %q; give one", ErrInvalid, file)
	}
	return n, nil
}

// sanitizeImageName lower-cases s, turns characters an image name cannot
// hold into dashes and drops leading ones that may not start it.
func sanitizeImageName(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			b[i] = '-'
		}
	}
	return strings.TrimLeft(string(b), "-_.")
}
