// Package sparse copies files without filling their holes: only pages that
// hold data are written, so disk images and guest memory stay sparse.
package sparse
