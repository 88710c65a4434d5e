package agentproto

// OpRestored tells the agent that its VM has just been restored from a
// snapshot (or cloned from one). The Request frame is followed by one
// FrameRequest frame holding Restored; the reply is Response{} once the
// guest has applied it, or FrameError. The host sends it on the first
// session after the restore, before any other request.
const OpRestored = "restored"

// MaxRestoredSeed bounds Restored.Seed.
const MaxRestoredSeed = 4096

// Restored is what a restored guest must change about itself: the
// snapshot froze its clock, its random state and its identity, which every
// clone of the snapshot would otherwise share.
type Restored struct {
	// UnixNano is the host's wall clock when it sent the message; the
	// guest sets CLOCK_REALTIME to it.
	UnixNano int64 `json:"unix_nano"`
	// Seed is fresh randomness (at most MaxRestoredSeed bytes) the guest
	// mixes into its kernel random pool, crediting it as entropy.
	Seed []byte `json:"seed"`
	// Hostname is the clone's name; empty keeps the current one.
	Hostname string `json:"hostname,omitempty"`
	// Net, when set, is the clone's own network identity, which replaces
	// the one the snapshot froze; nil (user-mode or no networking, or an
	// older host) leaves the network as it is.
	Net *RestoredNet `json:"net,omitempty"`
}

// RestoredNet is a restored guest's new network identity: the NIC that
// carries the snapshot's address (or the only Ethernet NIC) takes MAC,
// exactly the address IP and routes through Gateway; DNS becomes the only
// nameserver. Addresses are in text form: IP as "172.16.0.5/32", Gateway
// and DNS as "172.16.0.1", MAC as "06:00:ac:10:00:05".
type RestoredNet struct {
	IP      string `json:"ip"`
	Gateway string `json:"gateway"`
	DNS     string `json:"dns"`
	MAC     string `json:"mac"`
}

// SyncLine is what a host writes right after connecting to the agent's
// channel when the guest may still hold a session from before (after a
// restore the guest never saw its old host go). It is exactly one yamux
// header long and not a valid one, so a stale session ends at once and the
// agent writes a fresh hello; a fresh session drops it. The agent
// package's SyncLine is the same line.
const SyncLine = "SMOLVM-SYNC\n"
