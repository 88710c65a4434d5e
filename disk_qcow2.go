package smolvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// A qcow2 overlay is what `qemu-img create -f qcow2 -F raw -b IMAGE` makes:
// an empty copy-on-write layer over a read-only backing file. Writing its
// few header clusters here costs microseconds, where running qemu-img costs
// a fork and exec (about 10-20 ms).
//
// Layout (qcow2 version 3, 64 KiB clusters, 16-bit refcounts):
//
//	cluster 0  header, header extensions (backing format, end), backing file name
//	cluster 1  refcount table: one entry, pointing at cluster 2
//	cluster 2  refcount block: clusters 0-3 in use
//	cluster 3  L1 table, all zero (no L2 tables yet: every read goes to the backing file)
const (
	qcow2Magic          = 0x514649fb // "QFI\xfb"
	qcow2ClusterBits    = 16
	qcow2ClusterSize    = 1 << qcow2ClusterBits
	qcow2HeaderLen      = 104 // version 3 header without optional fields
	qcow2ExtBackingFmt  = 0xe2792aca
	qcow2RefcountOrder  = 4 // 16-bit refcounts
	qcow2L2Entries      = qcow2ClusterSize / 8
	qcow2MaxL1Entries   = qcow2ClusterSize / 8 // one L1 cluster: 4 TiB of virtual disk
	qcow2MetaClusters   = 4
	qcow2BackingNameMax = 1023 // QEMU's limit
)

// writeQcow2Overlay creates path (which must not exist) as a qcow2 overlay
// of virtual size size over the raw file backing (an absolute path). On
// error it removes what it made.
func writeQcow2Overlay(path, backing string, size int64) (err error) {
	return writeQcow2OverlayOf(path, backing, diskRaw, size)
}

// writeQcow2OverlayOf is writeQcow2Overlay over a backing file of the given
// format (raw, or qcow2 for an overlay over a snapshot's saved overlay).
func writeQcow2OverlayOf(path, backing, format string, size int64) (err error) {
	if len(backing) == 0 || backing[0] != '/' {
		return fmt.Errorf("qcow2 backing file %q must be an absolute path", backing)
	}
	hdr, err := qcow2Header(backing, format, size)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return err
	}
	return f.Truncate(qcow2MetaClusters * qcow2ClusterSize)
}

// qcow2Header returns the first three clusters of the overlay (header,
// refcount table, refcount block); the L1 table after them is all zero.
func qcow2Header(backing, fmtName string, size int64) ([]byte, error) {
	if size <= 0 || size%512 != 0 {
		return nil, fmt.Errorf("qcow2 virtual size %d is not a positive multiple of 512", size)
	}
	l1 := (size + qcow2ClusterSize*qcow2L2Entries - 1) / (qcow2ClusterSize * qcow2L2Entries)
	if l1 > qcow2MaxL1Entries {
		return nil, fmt.Errorf("qcow2 virtual size %d is over 4 TiB", size)
	}
	if len(backing) > qcow2BackingNameMax {
		return nil, errors.New("qcow2 backing file name too long")
	}
	b := make([]byte, 3*qcow2ClusterSize)
	be := binary.BigEndian
	// The header extensions follow the header; the backing file name
	// follows them.
	ext := qcow2HeaderLen
	be.PutUint32(b[ext:], qcow2ExtBackingFmt)
	be.PutUint32(b[ext+4:], uint32(len(fmtName)))
	copy(b[ext+8:], fmtName)
	end := ext + 8 + (len(fmtName)+7)/8*8 // data is padded to 8 bytes
	// The end-of-extensions marker is 8 zero bytes at end.
	nameOff := end + 8
	if nameOff+len(backing) > qcow2ClusterSize {
		return nil, errors.New("qcow2 header does not fit in one cluster")
	}
	copy(b[nameOff:], backing)

	be.PutUint32(b[0:], qcow2Magic)
	be.PutUint32(b[4:], 3) // version
	be.PutUint64(b[8:], uint64(nameOff))
	be.PutUint32(b[16:], uint32(len(backing)))
	be.PutUint32(b[20:], qcow2ClusterBits)
	be.PutUint64(b[24:], uint64(size))
	be.PutUint32(b[32:], 0) // no encryption
	be.PutUint32(b[36:], uint32(l1))
	be.PutUint64(b[40:], 3*qcow2ClusterSize) // L1 table
	be.PutUint64(b[48:], 1*qcow2ClusterSize) // refcount table
	be.PutUint32(b[56:], 1)                  // refcount table clusters
	// nb_snapshots, snapshots_offset, and the three feature bitmaps: zero.
	be.PutUint32(b[96:], qcow2RefcountOrder)
	be.PutUint32(b[100:], qcow2HeaderLen)

	be.PutUint64(b[qcow2ClusterSize:], 2*qcow2ClusterSize) // refcount table[0] = block at cluster 2
	for i := range qcow2MetaClusters {
		be.PutUint16(b[2*qcow2ClusterSize+2*i:], 1)
	}
	return b, nil
}
