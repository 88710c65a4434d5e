package oci

import "errors"

var (
	// ErrUnsafePath is returned for an archive entry whose path could write
	// outside the root (a ".." component, a NUL byte, a bad whiteout).
	ErrUnsafePath = errors.New("unsafe path")
	// ErrPlatform is returned when an image has no variant for the wanted platform.
	ErrPlatform = errors.New("no image for platform")
	// ErrDigest is returned when content does not match the digest naming it.
	ErrDigest = errors.New("digest mismatch")
	// ErrAmbiguous is returned when an archive holds several images and
	// the caller named none.
	ErrAmbiguous = errors.New("several images")
	// ErrFormat is returned for input that is not an image of a known kind.
	ErrFormat = errors.New("unrecognised format")
)
