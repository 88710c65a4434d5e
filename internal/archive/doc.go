// Package archive writes files and trees as tar streams and extracts tar
// streams beneath a directory without ever writing outside it.
package archive
