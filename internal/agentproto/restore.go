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
	// Network identity (address, MAC-derived settings) joins here once
	// restored VMs get networking: see the supervisor's restoredMessage.
}
