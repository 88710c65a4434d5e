package firecracker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The contract tests check requests against Firecracker's published API
// description, which CI keeps beside the checkout (never in the repo).
const specName = "firecracker-api-v1.16.1.yaml"

// findSpec locates the API description: $SMOLVM_FC_SPEC, else
// shared/reference/ in the package directory or any parent of it.
func findSpec() (string, error) {
	if p := os.Getenv("SMOLVM_FC_SPEC"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "shared", "reference", specName)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%s not found in shared/reference/ above the package (set SMOLVM_FC_SPEC)", specName)
		}
		dir = parent
	}
}

// apiSpec is the Swagger 2.0 subset the validator understands: paths with
// their operations' body schemas, and definitions.
type apiSpec struct {
	paths map[string]map[string]any // path template -> method -> operation
	defs  map[string]any
}

func loadSpec(path string) (*apiSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	s := &apiSpec{paths: map[string]map[string]any{}}
	s.defs, _ = doc["definitions"].(map[string]any)
	paths, _ := doc["paths"].(map[string]any)
	if len(paths) == 0 || len(s.defs) == 0 {
		return nil, fmt.Errorf("%s: no paths or definitions", path)
	}
	for p, ops := range paths {
		m, _ := ops.(map[string]any)
		s.paths[p] = m
	}
	return s, nil
}

// specForTest loads the spec or skips the test, saying why.
func specForTest(t testing.TB) *apiSpec {
	t.Helper()
	p, err := findSpec()
	if err != nil {
		t.Skip(err)
	}
	s, err := loadSpec(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// validate checks one request: the path must match a path template that
// has the method, and the body must satisfy the operation's body schema.
func (s *apiSpec) validate(method, path string, body []byte) error {
	op, err := s.operation(method, path)
	if err != nil {
		return err
	}
	schema, required := bodySchema(op)
	if len(bytes.TrimSpace(body)) == 0 {
		if required {
			return fmt.Errorf("%s %s: body required", method, path)
		}
		return nil
	}
	if schema == nil {
		return fmt.Errorf("%s %s: takes no body", method, path)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("%s %s: body is not JSON: %w", method, path, err)
	}
	if err := s.check(schema, v, "body"); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}

func (s *apiSpec) operation(method, path string) (map[string]any, error) {
	for tmpl, ops := range s.paths {
		if !matchPath(tmpl, path) {
			continue
		}
		op, ok := ops[strings.ToLower(method)].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s %s: method not allowed (path %s)", method, path, tmpl)
		}
		return op, nil
	}
	return nil, fmt.Errorf("%s %s: no such path in the api", method, path)
}

// matchPath matches /drives/{drive_id} against /drives/disk0.
func matchPath(tmpl, path string) bool {
	ts, ps := strings.Split(tmpl, "/"), strings.Split(path, "/")
	if len(ts) != len(ps) {
		return false
	}
	for i := range ts {
		if strings.HasPrefix(ts[i], "{") && strings.HasSuffix(ts[i], "}") {
			if ps[i] == "" {
				return false
			}
			continue
		}
		if ts[i] != ps[i] {
			return false
		}
	}
	return true
}

func bodySchema(op map[string]any) (schema map[string]any, required bool) {
	params, _ := op["parameters"].([]any)
	for _, p := range params {
		pm, _ := p.(map[string]any)
		if pm["in"] == "body" {
			schema, _ = pm["schema"].(map[string]any)
			required, _ = pm["required"].(bool)
			return schema, required
		}
	}
	return nil, false
}

// check validates v against schema: $ref, type, required, properties
// (unknown fields are errors unless additionalProperties allows them),
// enum, items, minimum and maximum.
func (s *apiSpec) check(schema map[string]any, v any, at string) error {
	if ref, ok := schema["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/definitions/")
		def, ok := s.defs[name].(map[string]any)
		if !ok {
			return fmt.Errorf("%s: unresolvable $ref %s", at, ref)
		}
		return s.check(def, v, at)
	}
	if enum, ok := schema["enum"].([]any); ok {
		if !inEnum(enum, v) {
			return fmt.Errorf("%s: %v is not one of %v", at, v, enum)
		}
	}
	switch typ, _ := schema["type"].(string); typ {
	case "object", "":
		if typ == "" && schema["properties"] == nil {
			return nil // no constraint
		}
		return s.checkObject(schema, v, at)
	case "array":
		arr, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %T", at, v)
		}
		items, _ := schema["items"].(map[string]any)
		for i, e := range arr {
			if err := s.check(items, e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case "string":
		if _, ok := v.(string); !ok {
			return fmt.Errorf("%s: want a string, got %T", at, v)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %T", at, v)
		}
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want an integer, got %T", at, v)
		}
		i, err := n.Int64()
		if err != nil {
			return fmt.Errorf("%s: want an integer, got %s", at, n)
		}
		if m, ok := schema["minimum"].(int); ok && i < int64(m) {
			return fmt.Errorf("%s: %d is below the minimum %d", at, i, m)
		}
		if m, ok := schema["maximum"].(int); ok && i > int64(m) {
			return fmt.Errorf("%s: %d is above the maximum %d", at, i, m)
		}
	default:
		return fmt.Errorf("%s: validator does not know type %q", at, typ)
	}
	return nil
}

func (s *apiSpec) checkObject(schema map[string]any, v any, at string) error {
	obj, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("%s: want an object, got %T", at, v)
	}
	props, _ := schema["properties"].(map[string]any)
	req, _ := schema["required"].([]any)
	for _, r := range req {
		if _, ok := obj[r.(string)]; !ok {
			return fmt.Errorf("%s: required field %q missing", at, r)
		}
	}
	extra, _ := schema["additionalProperties"].(bool)
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ps, ok := props[k].(map[string]any)
		if !ok {
			if extra {
				continue
			}
			return fmt.Errorf("%s: unknown field %q", at, k)
		}
		if err := s.check(ps, obj[k], at+"."+k); err != nil {
			return err
		}
	}
	return nil
}

func inEnum(enum []any, v any) bool {
	for _, e := range enum {
		if fmt.Sprint(e) == fmt.Sprint(v) {
			return true
		}
	}
	return false
}

// TestValidator shows the validator catches what it must: each bad request
// differs from a good one by one mistake.
func TestValidator(t *testing.T) {
	s := specForTest(t)
	cases := []struct {
		method, path, body string
		wantErr            string // "" = valid
	}{
		{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false}`, ""},
		{"PUT", "/machine-config", `{"vcpu_cont":2,"mem_size_mib":256}`, "required field \"vcpu_count\""},
		{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"vcpu_cont":2}`, "unknown field \"vcpu_cont\""},
		{"PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":256}`, "above the maximum 32"},
		{"PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":256}`, "below the minimum 1"},
		{"PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":256}`, "want an integer"},
		{"PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":256}`, "want an integer"},
		{"PUT", "/drives/disk0", `{"drive_id":"disk0","path_on_host":"d","is_root_device":false,"is_read_only":true}`, ""},
		{"PUT", "/drives/disk0", `{"drive_id":"disk0","path_on_host":"d","is_root_device":"no"}`, "want a boolean"},
		{"PUT", "/drives/", `{"drive_id":"disk0","path_on_host":"d","is_root_device":false}`, "no such path"},
		{"PATCH", "/vm", `{"state":"Paused"}`, ""},
		{"PATCH", "/vm", `{"state":"Pause"}`, "not one of"},
		{"PUT", "/vm", `{"state":"Paused"}`, "method not allowed"},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`, ""},
		{"PUT", "/actions", ``, "body required"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","rx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":1000}}}`, ""},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","rx_rate_limiter":{"bandwidth":{"size":1000}}}`, "required field \"refill_time\""},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","rx_rate_limiter":{"bandwith":{"size":1,"refill_time":1}}}`, "unknown field \"bandwith\""},
		{"PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}],"vsock_override":{"uds_path":"v"}}`, ""},
		{"PUT", "/snapshot/load", `{"snapshot_path":"s","network_overrides":[{"iface_id":"eth0"}]}`, "body.network_overrides[0]: required field \"host_dev_name\""},
		{"PUT", "/vsock", `{"guest_cid":2,"uds_path":"v.sock"}`, "below the minimum 3"},
		{"GET", "/", ``, ""},
	}
	for _, c := range cases {
		t.Run(c.method+c.path+"/"+c.wantErr, func(t *testing.T) {
			err := s.validate(c.method, c.path, []byte(c.body))
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("valid request rejected: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatalf("invalid request accepted; want error containing %q", c.wantErr)
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("error %q, want it to contain %q", err, c.wantErr)
			}
		})
	}
}

// TestRequestsMatchSpec validates, without any process, every body the
// backend builds for a spec that uses every feature, and shows that a
// misspelled field in one of them would be caught.
func TestRequestsMatchSpec(t *testing.T) {
	s := specForTest(t)
	dir := shortDir(t)
	inst := &Instance{spec: fullSpec(t, dir), layout: newLayout(dir), opts: Options{Metrics: true}}
	boot, err := inst.bootRequests()
	if err != nil {
		t.Fatal(err)
	}
	restore, err := inst.restoreRequests(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	all := append(boot, restore...)
	all = append(all,
		request{"PATCH", "/vm", vmState{State: statePaused}},
		request{"PUT", "/snapshot/create", snapshotCreate{SnapshotType: "Full", SnapshotPath: "s", MemFilePath: "m"}},
		request{"PUT", "/actions", action{ActionType: actionSendCtrlAltDel}},
	)
	for _, r := range all {
		b, err := json.Marshal(r.body)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.validate(r.method, r.path, b); err != nil {
			t.Errorf("%v", err)
		}
		// Misspell the first field: the validator must notice.
		bad := bytes.Replace(b, []byte(`{"`), []byte(`{"x`), 1)
		if err := s.validate(r.method, r.path, bad); err == nil {
			t.Errorf("%s %s: misspelled body %s accepted", r.method, r.path, bad)
		}
	}
	if len(all) < 12 {
		t.Fatalf("only %d requests built", len(all))
	}
}
