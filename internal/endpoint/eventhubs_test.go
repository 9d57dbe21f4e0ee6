package endpoint

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/moat-iot/moat/internal/message"
)

const (
	testEHKey     = "c2VjcmV0LWtleS1ub3QtcmVhbA=="
	testEHNS      = "Endpoint=sb://moat-test.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=" + testEHKey
	testEHConnStr = testEHNS + ";EntityPath=" + testTopic
)

func TestParseEventHubConnectionString(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    EventHubConnectionString
		wantErr string
	}{
		{name: "hub", in: testEHConnStr,
			want: EventHubConnectionString{Host: "moat-test.servicebus.windows.net", SharedAccessKeyName: "send", SharedAccessKey: testEHKey, EntityPath: testTopic}},
		{name: "namespace, trailing semicolon", in: testEHNS + ";",
			want: EventHubConnectionString{Host: "moat-test.servicebus.windows.net", SharedAccessKeyName: "send", SharedAccessKey: testEHKey}},
		{name: "any case, spaces, no slash", in: " endpoint = sb://NS.ServiceBus.Windows.Net ;sharedaccesskeyname=k;; SHAREDACCESSKEY=v= ",
			want: EventHubConnectionString{Host: "ns.servicebus.windows.net", SharedAccessKeyName: "k", SharedAccessKey: "v="}},
		{name: "port dropped", in: "Endpoint=sb://localhost:5672/;SharedAccessKeyName=k;SharedAccessKey=v",
			want: EventHubConnectionString{Host: "localhost", SharedAccessKeyName: "k", SharedAccessKey: "v"}},
		{name: "sovereign cloud", in: "Endpoint=sb://ns.servicebus.chinacloudapi.cn/;SharedAccessKeyName=k;SharedAccessKey=v;EntityPath=h",
			want: EventHubConnectionString{Host: "ns.servicebus.chinacloudapi.cn", SharedAccessKeyName: "k", SharedAccessKey: "v", EntityPath: "h"}},
		{name: "signature", in: "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=sb%3a%2f%2fns&sig=abc%3d&se=1&skn=k;EntityPath=h",
			want: EventHubConnectionString{Host: "ns.servicebus.windows.net", SharedAccessSignature: "SharedAccessSignature sr=sb%3a%2f%2fns&sig=abc%3d&se=1&skn=k", EntityPath: "h"}},
		{name: "unknown keys ignored", in: testEHConnStr + ";TransportType=AmqpWebSockets;UseDevelopmentEmulator=false",
			want: EventHubConnectionString{Host: "moat-test.servicebus.windows.net", SharedAccessKeyName: "send", SharedAccessKey: testEHKey, EntityPath: testTopic}},

		{name: "empty", in: "", wantErr: "Endpoint is missing"},
		{name: "no endpoint", in: "SharedAccessKeyName=k;SharedAccessKey=" + testEHKey, wantErr: "Endpoint is missing"},
		{name: "no credentials", in: "Endpoint=sb://ns.servicebus.windows.net/", wantErr: "SharedAccessKeyName and SharedAccessKey"},
		{name: "no key", in: "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k", wantErr: "SharedAccessKey is missing"},
		{name: "no key name", in: "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=" + testEHKey, wantErr: "SharedAccessKeyName is missing"},
		{name: "both credentials", in: testEHNS + ";SharedAccessSignature=SharedAccessSignature sr=x", wantErr: "both"},
		{name: "https", in: "Endpoint=https://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=" + testEHKey, wantErr: "sb://"},
		{name: "path", in: "Endpoint=sb://ns.servicebus.windows.net/hub;SharedAccessKeyName=k;SharedAccessKey=" + testEHKey, wantErr: "Endpoint"},
		{name: "no host", in: "Endpoint=sb:///;SharedAccessKeyName=k;SharedAccessKey=" + testEHKey, wantErr: "Endpoint"},
		{name: "user info", in: "Endpoint=sb://u:" + testEHKey + "@ns/;SharedAccessKeyName=k;SharedAccessKey=v", wantErr: "Endpoint"},
		{name: "twice", in: testEHNS + ";sharedAccessKey=" + testEHKey, wantErr: "given twice"},
		{name: "not key=value", in: testEHNS + ";justtext", wantErr: "part 4 is not Key=Value"},
		{name: "empty value", in: testEHNS + ";EntityPath=", wantErr: "EntityPath is empty"},
		{name: "emulator", in: "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true", wantErr: "emulator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEventHubConnectionString(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), testEHKey) {
					t.Fatalf("error reveals the key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseEventHubConnectionString(f *testing.F) {
	for _, s := range []string{testEHConnStr, testEHNS, "Endpoint=sb://[::1]:9/;SharedAccessSignature=x", "endpoint=sb://a;sharedaccesskeyname=b;sharedaccesskey=c;;",
		"Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=v;EntityPath=h;UseDevelopmentEmulator=true", "=;=", "Endpoint=sb://%zz/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseEventHubConnectionString(s)
		if err != nil {
			// The error quotes no secret that appears only as a secret.
			for _, seg := range strings.Split(s, ";") {
				k, v, _ := strings.Cut(seg, "=")
				k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
				if (k == "sharedaccesskey" || k == "sharedaccesssignature") && len(v) >= 6 && strings.Count(s, v) == 1 && strings.Contains(err.Error(), v) {
					t.Fatalf("error %q reveals the %s", err, k)
				}
			}
			return
		}
		if c.Host == "" || c.Host != strings.ToLower(c.Host) || strings.ContainsAny(c.Host, "/ %") {
			t.Fatalf("host %q", c.Host)
		}
		if (c.SharedAccessSignature != "") == (c.SharedAccessKeyName != "" && c.SharedAccessKey != "") {
			t.Fatalf("credentials %+v", c)
		}
		if c.SharedAccessSignature == "" && (c.SharedAccessKeyName == "" || c.SharedAccessKey == "") {
			t.Fatalf("half a key pair %+v", c)
		}
		if strings.Contains(slogText(c), c.SharedAccessKey+c.SharedAccessSignature) && len(c.SharedAccessKey+c.SharedAccessSignature) >= 6 && !strings.Contains(c.Host+c.SharedAccessKeyName+c.EntityPath, c.SharedAccessKey+c.SharedAccessSignature) {
			t.Fatalf("log shows the secret: %s", slogText(c))
		}
	})
}

func slogText(v any) string {
	var b bytes.Buffer
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "v", v)
	return b.String()
}

func TestEventHubConfig(t *testing.T) {
	type want struct {
		seed, topic string
		fields      []string
	}
	tests := []struct {
		name string
		cfg  EventHubConfig
		want want
	}{
		{"hub connection string", EventHubConfig{ConnectionString: testEHConnStr},
			want{seed: "moat-test.servicebus.windows.net:9093", topic: testTopic}},
		{"namespace string, entityPath", EventHubConfig{ConnectionString: testEHNS, EntityPath: "other-hub"},
			want{seed: "moat-test.servicebus.windows.net:9093", topic: "other-hub"}},
		{"both agree", EventHubConfig{ConnectionString: testEHConnStr, EntityPath: "TELEMETRY", AuthenticationType: "KeyBased",
			EndpointURI: "sb://moat-test.servicebus.windows.net"}, want{seed: "moat-test.servicebus.windows.net:9093", topic: testTopic}},
		{"entity disagrees", EventHubConfig{ConnectionString: testEHConnStr, EntityPath: "other"}, want{fields: []string{"entityPath"}}},
		{"no entity", EventHubConfig{ConnectionString: testEHNS}, want{fields: []string{"entityPath"}}},
		{"bad entity", EventHubConfig{ConnectionString: testEHNS, EntityPath: "a b"}, want{fields: []string{"entityPath"}}},
		{"endpoint disagrees", EventHubConfig{ConnectionString: testEHConnStr, EndpointURI: "sb://other.servicebus.windows.net/"}, want{fields: []string{"endpointUri"}}},
		{"endpoint not sb", EventHubConfig{ConnectionString: testEHConnStr, EndpointURI: "https://moat-test.servicebus.windows.net/"}, want{fields: []string{"endpointUri"}}},
		{"identityBased", EventHubConfig{AuthenticationType: "identityBased", EndpointURI: "sb://moat-test.servicebus.windows.net", EntityPath: "h",
			Identity: &EventHubIdentity{UserAssignedIdentity: "/subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z"}},
			want{fields: []string{"authenticationType"}}},
		{"unknown auth", EventHubConfig{ConnectionString: testEHConnStr, AuthenticationType: "sas"}, want{fields: []string{"authenticationType"}}},
		{"identity with keys", EventHubConfig{ConnectionString: testEHConnStr, Identity: &EventHubIdentity{}}, want{fields: []string{"identity"}}},
		{"no connection string", EventHubConfig{EntityPath: "h"}, want{fields: []string{"connectionString"}}},
		{"bad connection string", EventHubConfig{ConnectionString: "Endpoint=sb://ns/;SharedAccessKey=" + testEHKey}, want{fields: []string{"connectionString"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Name = "eh"
			var fields []string
			for _, p := range tt.cfg.Problems() {
				fields = append(fields, p.Field)
				if strings.Contains(p.Error(), testEHKey) {
					t.Fatalf("problem reveals the key: %v", p)
				}
			}
			if !reflect.DeepEqual(fields, tt.want.fields) {
				t.Fatalf("problems at %v, want %v", fields, tt.want.fields)
			}
			k, err := NewEventHubs(tt.cfg)
			if tt.want.fields != nil {
				if err == nil || !strings.Contains(err.Error(), "eventHubs endpoint eh: "+tt.want.fields[0]) {
					t.Fatalf("NewEventHubs: %v", err)
				}
				if tt.name == "identityBased" && !strings.Contains(err.Error(), "not available yet") {
					t.Fatalf("NewEventHubs: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := k.s
			if !reflect.DeepEqual(s.seeds, []string{tt.want.seed}) || s.topic != tt.want.topic {
				t.Fatalf("seeds %v topic %s", s.seeds, s.topic)
			}
			if s.tls == nil || s.tls.MinVersion != tls.VersionTLS12 || s.tls.InsecureSkipVerify || s.tls.RootCAs != nil {
				t.Fatalf("tls %+v", s.tls)
			}
			if s.auth != (kafkaAuth{mechanism: "PLAIN", user: "$ConnectionString", pass: tt.cfg.ConnectionString}) {
				t.Fatal("SASL login is not PLAIN $ConnectionString with the connection string")
			}
			if strings.Contains(slogText(tt.cfg), testEHKey) {
				t.Fatal("the config's log form shows the key")
			}
		})
	}
}

// TestEventHubsSink points a real Event Hubs configuration at a local Kafka
// that checks what Event Hubs checks: TLS, then SASL PLAIN with user
// $ConnectionString and the whole connection string as the password.
func TestEventHubsSink(t *testing.T) {
	a := testPKI(t)
	c := runKafka(t, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{a.ServerCertificate()}, MinVersion: tls.VersionTLS12}),
		kfake.EnableSASL(), kfake.Superuser("PLAIN", "$ConnectionString", testEHConnStr))
	dial := eventHubsDial{seeds: c.ListenAddrs(), rootCAs: a.CAPool(), deliveryTimeout: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	k, err := newEventHubs(EventHubConfig{Name: "eh", ConnectionString: testEHConnStr}, dial)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	batch := []message.Message{testMessage("d1", "", 1), testMessage("d2", "edge", 2)}
	if err := k.Send(ctx, batch); err != nil {
		t.Fatal(err)
	}
	recs := consume(t, c.ListenAddrs(), 2, kgo.SASL(plain.Auth{User: "$ConnectionString", Pass: testEHConnStr}.AsMechanism()),
		kgo.DialTLSConfig(&tls.Config{RootCAs: a.CAPool(), MinVersion: tls.VersionTLS12}))
	got := map[string]string{}
	for _, r := range recs {
		dev, _ := header(r, message.SysConnectionDevice)
		got[string(r.Key)] = string(r.Value) + " " + dev
	}
	if !reflect.DeepEqual(got, map[string]string{"d1": `{"n":1} d1`, "d2/edge": `{"n":2} d2`}) {
		t.Fatalf("got %v", got)
	}
	if err := k.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	// Another key for the same namespace is refused, and the error says SASL
	// without showing the key.
	otherKey := "b3RoZXIta2V5LW5vdC1yZWFs"
	wrong, err := newEventHubs(EventHubConfig{Name: "wrong", ConnectionString: strings.Replace(testEHConnStr, testEHKey, otherKey, 1)}, dial)
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	err = wrong.Send(ctx, batch[:1])
	if err == nil || !strings.Contains(err.Error(), "SASL") || strings.Contains(err.Error(), otherKey) {
		t.Fatalf("wrong key: %v", err)
	}
	t.Logf("wrong key: %v", err)
}
