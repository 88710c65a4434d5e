package smolvm

import (
	"os/exec"
	"testing"
	"time"
)

// TestSupervisedAnywhere: a process whose command line ends
// "__supervise … ID" counts as supervising ID, whichever data dir it uses.
func TestSupervisedAnywhere(t *testing.T) {
	id := "sweep-probe-" + newID()
	if supervisedAnywhere(id) {
		t.Fatalf("%s supervised before anything runs", id)
	}
	// sh takes "__supervise" as $0 and the id as $1, and sleeps.
	cmd := exec.Command("/bin/sh", "-c", "sleep 30", "__supervise", id)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for !supervisedAnywhere(id) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not seen as supervised", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if supervisedAnywhere(id + "x") {
		t.Fatal("another id matched")
	}
}
