package supervisor

import "testing"

func TestFirecrackerOptions(t *testing.T) {
	tests := []struct {
		name   string
		jailer *JailerPlan
		use    bool
		uid    int
		chroot string
	}{
		{"no jailer", nil, false, 0, ""},
		{"jailer", &JailerPlan{UID: 123, GID: 456, ChrootBase: "/srv/j"}, true, 123, "/srv/j"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Plan{Backend: "firecracker", Jailer: tt.jailer}.FirecrackerOptions(nil)
			if o.UseJailer != tt.use || o.UID != tt.uid || o.ChrootBase != tt.chroot {
				t.Fatalf("options %+v", o)
			}
			if tt.jailer != nil && o.GID != tt.jailer.GID {
				t.Fatalf("gid %d, want %d", o.GID, tt.jailer.GID)
			}
		})
	}
}
