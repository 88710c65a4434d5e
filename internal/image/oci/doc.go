// Package oci turns OCI/Docker images, image tarballs, directories and root
// filesystem tarballs into bootable ext4 root images, without Docker.
package oci
