// Package image finds or fetches guest kernels and builds the initramfs and root
// filesystem images smolvm boots, cached by the hash of their inputs.
package image
