package hub

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/moat-iot/moat/internal/sas"
)

// stateFile keeps what the hub generated on first start.
const stateFile = "hub.json"

type state struct {
	AuthorizationPolicies []sas.Policy `json:"authorizationPolicies"`
}

// defaultRights are IoT Hub's built-in policies.
var defaultRights = []struct {
	name   string
	rights []sas.Right
}{
	{"iothubowner", []sas.Right{sas.RegistryRead, sas.RegistryWrite, sas.ServiceConnect, sas.DeviceConnect}},
	{"service", []sas.Right{sas.ServiceConnect}},
	{"device", []sas.Right{sas.DeviceConnect}},
	{"registryRead", []sas.Right{sas.RegistryRead}},
	{"registryReadWrite", []sas.Right{sas.RegistryRead, sas.RegistryWrite}},
}

// LoadPolicies reads the policies a hub generated in dataDir. It is what the CLI
// uses to find a connection string.
func LoadPolicies(dataDir string) ([]sas.Policy, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("read hub state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("decode %s: %w", stateFile, err)
	}
	return st.AuthorizationPolicies, nil
}

// loadOrCreatePolicies returns the stored policies, generating IoT Hub's
// defaults with random keys on first start.
func loadOrCreatePolicies(dataDir string) ([]sas.Policy, bool, error) {
	p, err := LoadPolicies(dataDir)
	if err == nil {
		return p, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	var st state
	for _, d := range defaultRights {
		k1, err := sas.GenerateKey()
		if err != nil {
			return nil, false, err
		}
		k2, err := sas.GenerateKey()
		if err != nil {
			return nil, false, err
		}
		st.AuthorizationPolicies = append(st.AuthorizationPolicies, sas.Policy{KeyName: d.name, PrimaryKey: k1, SecondaryKey: k2, Rights: d.rights})
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, false, err
	}
	tmp := filepath.Join(dataDir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, false, fmt.Errorf("write hub state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dataDir, stateFile)); err != nil {
		return nil, false, fmt.Errorf("write hub state: %w", err)
	}
	return st.AuthorizationPolicies, true, nil
}

// endpointFile records where the hub serves, so that the CLI pointed at a data
// directory finds the running hub.
const endpointFile = "endpoint.json"

// Endpoint is how clients reach a hub.
type Endpoint struct {
	HostName     string `json:"hostName"`
	HTTPSAddress string `json:"httpsAddress,omitempty"`
}

// ReadEndpoint returns what a hub using dataDir last recorded.
func ReadEndpoint(dataDir string) (Endpoint, error) {
	var e Endpoint
	b, err := os.ReadFile(filepath.Join(dataDir, endpointFile))
	if err != nil {
		return e, fmt.Errorf("read hub endpoint (has the hub been started with this data directory?): %w", err)
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("decode %s: %w", endpointFile, err)
	}
	return e, nil
}

func writeEndpoint(dataDir string, e Endpoint) error {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dataDir, endpointFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write hub endpoint: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dataDir, endpointFile))
}
