package agentproto

import (
	"encoding/json"
	"reflect"
	"testing"
)

// decodeCases are request payloads: what hosts send, and the edges of what
// the scanner takes.
var decodeCases = []string{
	`{"op":"exec","exec":{"argv":["true"]}}`,
	`{"op":"exec","exec":{"argv":["sh","-c","echo hi; exit 3"],"env":["A=1","B=two words"],"dir":"/work","timeout_ms":1500,"stdin":true,"user":"1000:1000","tty":true,"rows":40,"cols":120,"base_env":["PATH=/bin"],"login_shell":false,"report_pid":true}}`,
	` { "op" : "exec" , "exec" : { "argv" : [ ] , "env" : [ "X=1" ] } } `,
	"{\n\t\"op\": \"exec\",\r\n\"exec\": {\"argv\": [\"true\"]}\n}\n",
	`{"op":"ping"}`,
	`{}`,
	`{"op":"exec","exec":{}}`,
	`{"op":"exec","exec":{"argv":["true"],"timeout_ms":0,"rows":0,"cols":65535}}`,
	// Taken by json.Unmarshal only (or refused by both):
	`{"op":"exec","exec":{"argv":["caf\u00e9"]}}`,
	`{"op":"exec","exec":{"argv":["café"]}}`,
	`{"op":"exec","exec":{"argv":["a\"b","tab\there"]}}`,
	`{"OP":"exec","Exec":{"ARGV":["true"]}}`,
	`{"op":"exec","op":"ping"}`,
	`{"op":"exec","exec":{"argv":["a"],"argv":["b"]}}`,
	`{"op":"exec","exec":null}`,
	`{"op":"exec","exec":{"argv":null}}`,
	`{"op":"exec","exec":{"timeout_ms":-5}}`,
	`{"op":"exec","exec":{"timeout_ms":1.5}}`,
	`{"op":"exec","exec":{"timeout_ms":1e3}}`,
	`{"op":"exec","exec":{"timeout_ms":007}}`,
	`{"op":"exec","exec":{"timeout_ms":99999999999999999999}}`,
	`{"op":"exec","exec":{"rows":70000}}`,
	`{"op":"exec","exec":{"stdin":"yes"}}`,
	`{"op":"exec","exec":{"stdin":truex}}`,
	`{"op":"file","file":{"path":"/etc/hosts"}}`,
	`{"op":"exec","exec":{"argv":["true"]}} trailing`,
	`{"op":"exec","exec":{"argv":["true"]},}`,
	`{"op":"exec" "exec":{}}`,
	`[1,2]`,
	``,
	`{"op":"exec","exec":{"argv":["true"]}`,
}

// TestDecodeRequestMatchesJSON: DecodeRequest gives what json.Unmarshal
// gives, for what the scanner takes and for what it hands over.
func TestDecodeRequestMatchesJSON(t *testing.T) {
	for _, in := range decodeCases {
		checkDecodeRequest(t, []byte(in))
	}
}

// TestDecodeRequestTakesTheCommonCase: the requests the SDK sends for a
// command are read by the scanner, not handed over.
func TestDecodeRequestTakesTheCommonCase(t *testing.T) {
	for _, r := range []Request{
		{Op: OpExec, Exec: &ExecRequest{Argv: []string{"true"}}},
		{Op: OpExec, Exec: &ExecRequest{Argv: []string{"sh", "-c", "ls -l /"}, BaseEnv: []string{"PATH=/usr/bin:/bin"}, Env: []string{"K=v"}, Dir: "/tmp", User: "root", TimeoutMs: 30000, Stdin: true}},
		{Op: OpExec, Exec: &ExecRequest{LoginShell: true, TTY: true, Rows: 24, Cols: 80, ReportPID: true}},
	} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var got Request
		if d := (decoder{p: b}); !d.request(&got) {
			t.Errorf("%s: handed over to encoding/json", b)
		}
		checkDecodeRequest(t, b)
	}
}

func checkDecodeRequest(t *testing.T, in []byte) {
	t.Helper()
	var want, got Request
	wantErr := json.Unmarshal(in, &want)
	gotErr := DecodeRequest(in, &got)
	if (wantErr == nil) != (gotErr == nil) || (wantErr != nil && wantErr.Error() != gotErr.Error()) {
		t.Errorf("%q: error %v, json.Unmarshal's %v", in, gotErr, wantErr)
		return
	}
	if wantErr == nil && !reflect.DeepEqual(got, want) {
		t.Errorf("%q: got %+v (exec %+v), json.Unmarshal's %+v (exec %+v)", in, got, got.Exec, want, want.Exec)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, in := range decodeCases {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, in []byte) { checkDecodeRequest(t, in) })
}
