package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// guestUser is who a process runs as.
type guestUser struct {
	Name   string // "" when the uid has no passwd entry
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups from /etc/group
	Home   string
}

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

// lookupUser resolves spec, as an exec request's User field gives it, against
// root's /etc/passwd and /etc/group: "" means the agent's own user, otherwise
// "user" or "user:group", each a name or a number. A numeric uid without a
// passwd entry is allowed (home "/", group = uid unless given).
func lookupUser(root, spec string) (guestUser, error) {
	users, err := readPasswd(filepath.Join(root, "etc/passwd"))
	if err != nil {
		return guestUser{}, err
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if spec == "" {
		userPart = strconv.Itoa(os.Getuid())
	}
	u, err := resolveUserPart(users, userPart)
	if err != nil {
		return guestUser{}, err
	}
	groups, err := readGroups(filepath.Join(root, "etc/group"))
	if err != nil {
		return guestUser{}, err
	}
	if hasGroup {
		gid, ok := groups.gid(groupPart)
		if !ok {
			return guestUser{}, fmt.Errorf("group %q not found in /etc/group", groupPart)
		}
		u.GID = gid
	}
	u.Groups = groups.memberOf(u.Name, u.GID)
	return u, nil
}

func resolveUserPart(users []passwdEntry, s string) (guestUser, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		for _, e := range users {
			if e.uid == uint32(n) {
				return guestUser{Name: e.name, UID: e.uid, GID: e.gid, Home: e.home}, nil
			}
		}
		home := "/"
		if n == 0 {
			home = "/root"
		}
		return guestUser{UID: uint32(n), GID: uint32(n), Home: home}, nil
	}
	for _, e := range users {
		if e.name == s {
			return guestUser{Name: e.name, UID: e.uid, GID: e.gid, Home: e.home}, nil
		}
	}
	return guestUser{}, fmt.Errorf("user %q not found in /etc/passwd", s)
}

// readPasswd parses a passwd file; a missing file is an empty one.
func readPasswd(path string) ([]passwdEntry, error) {
	var out []passwdEntry
	err := scanColonFile(path, func(f []string) {
		if len(f) < 6 {
			return
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 == nil && err2 == nil {
			out = append(out, passwdEntry{name: f[0], uid: uint32(uid), gid: uint32(gid), home: f[5]})
		}
	})
	return out, err
}

// groupFile is a parsed /etc/group.
type groupFile []struct {
	name    string
	gid     uint32
	members []string
}

func readGroups(path string) (groupFile, error) {
	var out groupFile
	err := scanColonFile(path, func(f []string) {
		if len(f) < 4 {
			return
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			return
		}
		var members []string
		if f[3] != "" {
			members = strings.Split(f[3], ",")
		}
		out = append(out, struct {
			name    string
			gid     uint32
			members []string
		}{f[0], uint32(gid), members})
	})
	return out, err
}

// gid resolves a group name or number.
func (g groupFile) gid(s string) (uint32, bool) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), true
	}
	for _, e := range g {
		if e.name == s {
			return e.gid, true
		}
	}
	return 0, false
}

// memberOf lists the primary group and the groups naming user as a member.
func (g groupFile) memberOf(user string, primary uint32) []uint32 {
	out := []uint32{primary}
	if user == "" {
		return out
	}
	for _, e := range g {
		for _, m := range e.members {
			if m == user && e.gid != primary {
				out = append(out, e.gid)
			}
		}
	}
	return out
}

// scanColonFile calls fn with the fields of each non-comment line.
func scanColonFile(path string, fn func([]string)) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		fn(strings.Split(line, ":"))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	return nil
}
