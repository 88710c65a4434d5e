package qemu

import (
	"strconv"
)

// ramObjectID is the id of the memory backend object that holds guest RAM.
const ramObjectID = "ram"

// ramConfig says how guest RAM is backed. The zero value leaves QEMU's
// default (anonymous private memory) and adds no options.
//
//   - shared: a memfd mapped shared. QEMU and the guest see the same pages
//     as the memfd, so while the guest is paused the RAM can be copied out
//     of it as a raw file (via /proc/PID/fd), and a migration with the
//     x-ignore-shared capability leaves RAM out of the stream: a snapshot
//     is the small device state plus a sparse raw RAM file.
//   - file: a restore maps that raw RAM file privately (share=off), so the
//     guest's pages are read from the file as it touches them and copied
//     only when it writes them; clones of one snapshot share the unwritten
//     pages in the page cache.
//   - incoming: start with -incoming defer, waiting for migrate-incoming.
type ramConfig struct {
	shared   bool
	file     string
	incoming bool
}

// args returns the options for memMiB of RAM backed as r says.
func (r ramConfig) args(memMiB int) []string {
	size := ",size=" + strconv.Itoa(memMiB) + "M"
	var a []string
	switch {
	case r.file != "":
		a = []string{
			"-object", "memory-backend-file,id=" + ramObjectID + size + ",mem-path=" + escape(r.file) + ",share=off",
			"-machine", "memory-backend=" + ramObjectID,
		}
	case r.shared:
		a = []string{
			"-object", "memory-backend-memfd,id=" + ramObjectID + size + ",share=on",
			"-machine", "memory-backend=" + ramObjectID,
		}
	}
	if r.incoming {
		a = append(a, "-incoming", "defer")
	}
	return a
}
