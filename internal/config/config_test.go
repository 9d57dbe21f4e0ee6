package config

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr string // substring; "" means valid
	}{
		{"empty", "", ""},
		{"yaml", "name: plant\nproperties:\n  hostName: hub.plant.local\n  minTlsVersion: \"1.3\"\nmoat:\n  dataDir: /var/lib/moat\n  listeners:\n    mqtt: \"10.0.0.5:8883\"\n    mqttPlain: \"\"\n", ""},
		{"json", `{"properties":{"hostName":"127.0.0.2"},"moat":{"listeners":{"https":"127.0.0.2:443"}}}`, ""},
		{"policies", "properties:\n  authorizationPolicies:\n  - keyName: ops\n    primaryKey: a2V5\n    rights: [RegistryRead, ServiceConnect]\n", ""},
		{"unknown field", "properties:\n  host: x\n", "unknown field"},
		{"bad host", "properties:\n  hostName: \"hub:443\"\n", "properties.hostName"},
		{"bad tls", "properties:\n  minTlsVersion: \"1.0\"\n", "properties.minTlsVersion"},
		{"bad listener", "moat:\n  listeners:\n    mqtt: \"8883\"\n", "moat.listeners.mqtt"},
		{"bad right", "properties:\n  authorizationPolicies:\n  - keyName: x\n    primaryKey: a\n    rights: [Everything]\n", "properties.authorizationPolicies[0].rights[0]"},
		{"dup policy", "properties:\n  authorizationPolicies:\n  - {keyName: x, primaryKey: a, rights: [DeviceConnect]}\n  - {keyName: x, primaryKey: a, rights: [DeviceConnect]}\n", "duplicate policy"},
		{"no key", "properties:\n  authorizationPolicies:\n  - {keyName: x, rights: [DeviceConnect]}\n", "primaryKey: is required"},
		{"bad level", "moat:\n  logLevel: loud\n", "moat.logLevel"},
		{"not yaml", "properties: [", "decode"},
		{"network", "properties:\n  publicNetworkAccess: Disabled\n  networkRuleSets:\n    defaultAction: Deny\n    applyToBuiltInEventHubEndpoint: true\n    ipRules:\n    - {filterName: lab, action: Allow, ipMask: 10.250.1.0/24}\n    - {filterName: v6, action: Allow, ipMask: \"fd00::/8\"}\n  privateEndpointConnections:\n  - name: vnet\n    properties:\n      privateEndpoint: {ipAddresses: [10.250.2.1]}\n      privateLinkServiceConnectionState: {status: Approved, description: ok}\nmoat:\n  allowLoopbackAdministration: false\n", ""},
		{"bad rule mask", "properties:\n  networkRuleSets:\n    defaultAction: Deny\n    ipRules:\n    - {filterName: lab, action: Allow, ipMask: 10.250.1.0/99}\n", "properties.networkRuleSets.ipRules[0].ipMask"},
		{"both filter models", "properties:\n  networkRuleSets: {defaultAction: Deny}\n  ipFilterRules:\n  - {filterName: a, action: Accept, ipMask: 10.0.0.0/8}\n", "properties.ipFilterRules: cannot be combined"},
		{"bad endpoint state", "properties:\n  privateEndpointConnections:\n  - name: vnet\n    properties:\n      privateEndpoint: {ipAddresses: [10.250.2.1]}\n      privateLinkServiceConnectionState: {status: Ok}\n", "properties.privateEndpointConnections[0].properties.privateLinkServiceConnectionState.status"},
		{"kafka endpoints", "properties:\n  routing:\n    endpoints:\n      eventHubs:\n        - name: telemetry-hub\n          connectionString: \"Endpoint=sb://plant1.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=a2V5;EntityPath=telemetry\"\n        - {name: ns-hub, connectionString: \"Endpoint=sb://plant1.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=a2V5\", entityPath: other, endpointUri: \"sb://plant1.servicebus.windows.net\", authenticationType: keyBased}\n      kafka:\n        - name: plant-kafka\n          brokers: [\"kafka1.plant1.internal:9093\", \"10.0.0.7:9093\"]\n          topic: iot-telemetry\n          tls: {enabled: true, caFile: /etc/moat/kafka-ca.pem, serverName: kafka}\n          sasl: {mechanism: SCRAM-SHA-512, username: moat, password: pw}\n          compression: zstd\n        - {name: bare, brokers: [\"k:9092\"], topic: t}\n    routes:\n      - {name: a, source: DeviceMessages, endpointNames: [plant-kafka], isEnabled: true}\n      - {name: b, source: TwinChangeEvents, endpointNames: [telemetry-hub], isEnabled: true}\n", ""},
		{"event hub identity", "properties:\n  routing:\n    endpoints:\n      eventHubs:\n        - {name: eh, authenticationType: identityBased, endpointUri: \"sb://ns.servicebus.windows.net\", entityPath: h, identity: {userAssignedIdentity: /subscriptions/x}}\n", "properties.routing.endpoints.eventHubs[0].authenticationType: identityBased is not available yet"},
		{"event hub no entity", "properties:\n  routing:\n    endpoints:\n      eventHubs:\n        - {name: eh, connectionString: \"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v\"}\n", "properties.routing.endpoints.eventHubs[0].entityPath"},
		{"event hub bad string", "properties:\n  routing:\n    endpoints:\n      eventHubs:\n        - {name: eh, connectionString: \"Endpoint=https://ns/;SharedAccessKeyName=k;SharedAccessKey=v\"}\n", "properties.routing.endpoints.eventHubs[0].connectionString"},
		{"event hub unknown field", "properties:\n  routing:\n    endpoints:\n      eventHubs:\n        - {name: eh, connectionString: x, partitions: 4}\n", "unknown field"},
		{"kafka no topic", "properties:\n  routing:\n    endpoints:\n      kafka:\n        - {name: k, brokers: [\"k:9092\"]}\n", "properties.routing.endpoints.kafka[0].topic: is required"},
		{"kafka bad broker", "properties:\n  routing:\n    endpoints:\n      kafka:\n        - {name: k, brokers: [\"k:9092\", kafka], topic: t}\n", "properties.routing.endpoints.kafka[0].brokers[1]"},
		{"kafka bad sasl", "properties:\n  routing:\n    endpoints:\n      kafka:\n        - {name: k, brokers: [\"k:9092\"], topic: t, sasl: {mechanism: GSSAPI, username: u, password: p}}\n", "properties.routing.endpoints.kafka[0].sasl.mechanism"},
		{"kafka tls field", "properties:\n  routing:\n    endpoints:\n      kafka:\n        - {name: k, brokers: [\"k:9092\"], topic: t, tls: {enable: true}}\n", "unknown field"},
		{"kafka duplicate name", "properties:\n  routing:\n    endpoints:\n      webHooks:\n        - {name: out, url: \"https://x\"}\n      kafka:\n        - {name: OUT, brokers: [\"k:9092\"], topic: t}\n", "properties.routing.endpoints.kafka[0].name: duplicate endpoint"},
		{"route to unknown kafka", "properties:\n  routing:\n    endpoints:\n      kafka:\n        - {name: k, brokers: [\"k:9092\"], topic: t}\n    routes:\n      - {name: a, source: DeviceMessages, endpointNames: [kk], isEnabled: true}\n", `no endpoint "kk"`},
		{"storage containers", "properties:\n  routing:\n    endpoints:\n      storageContainers:\n        - name: archive\n          connectionString: \"DefaultEndpointsProtocol=https;AccountName=plant;AccountKey=a2V5;EndpointSuffix=core.windows.net\"\n          containerName: telemetry\n          fileNameFormat: \"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.json\"\n          batchFrequencyInSeconds: 60\n          maxChunkSizeInBytes: 104857600\n          encoding: json\n          authenticationType: keyBased\n    routes:\n      - {name: a, source: DeviceMessages, endpointNames: [archive], isEnabled: true}\n", ""},
		{"storage identity", "properties:\n  routing:\n    endpoints:\n      storageContainers:\n        - {name: s, containerName: c1c, authenticationType: identityBased, endpointUri: \"https://plant.blob.core.windows.net\", identity: {userAssignedIdentity: /subscriptions/x}}\n", "properties.routing.endpoints.storageContainers[0].authenticationType: identityBased is not available yet"},
		{"storage format", "properties:\n  routing:\n    endpoints:\n      storageContainers:\n        - {name: s, containerName: c1c, connectionString: UseDevelopmentStorage=true, fileNameFormat: \"{iothub}/{YYYY}\"}\n", "properties.routing.endpoints.storageContainers[0].fileNameFormat: must contain every one of"},
		{"storage duplicate name", "properties:\n  routing:\n    endpoints:\n      webHooks:\n        - {name: out, url: \"https://x\"}\n      storageContainers:\n        - {name: Out, containerName: c1c, connectionString: UseDevelopmentStorage=true}\n", "properties.routing.endpoints.storageContainers[0].name: duplicate endpoint"},
		{"unknown network field", "properties:\n  networkRuleSets: {defaultAction: Deny, rules: []}\n", "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("accepted, want error containing %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestValidHostName(t *testing.T) {
	for h, want := range map[string]bool{"localhost": true, "hub.example.com": true, "127.0.0.2": true, "::1": true, "a-b": true,
		"-a": false, "a..b": false, "a b": false, "http://x": false, "x:1": false, "": false} {
		if got := validHostName(h); got != want {
			t.Errorf("validHostName(%q) = %v, want %v", h, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("properties:\n  hostName: x\n"))
	f.Add([]byte(`{"moat":{"listeners":{"mqtt":":1"}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err == nil && c.Validate() != nil {
			t.Fatal("Parse returned a config that does not validate")
		}
	})
}
