package mqttdevice

import (
	"strings"
	"testing"
)

func TestParseUsername(t *testing.T) {
	tests := []struct {
		in      string
		want    username
		wantErr bool
	}{
		{in: "localhost/dev1/?api-version=2021-04-12&DeviceClientType=azure-iot-device%2F1.18.4%20(node%20v20.20.2%3B%20Debian%2012%3B%20x64)",
			want: username{Host: "localhost", ClientID: "dev1", APIVersion: "2021-04-12", ClientType: "azure-iot-device/1.18.4 (node v20.20.2; Debian 12; x64)"}},
		{in: "hub.example/dev1/?api-version=2021-04-12&model-id=dtmi:com:example:Thermostat;1",
			want: username{Host: "hub.example", ClientID: "dev1", APIVersion: "2021-04-12", ModelID: "dtmi:com:example:Thermostat;1"}},
		{in: "h/dev1/mod1/?api-version=2021-04-12", want: username{Host: "h", ClientID: "dev1/mod1", APIVersion: "2021-04-12"}},
		{in: "h/dev1/api-version=2016-11-14", want: username{Host: "h", ClientID: "dev1", APIVersion: "2016-11-14"}},
		{in: "127.0.0.2/d/?api-version=2020-09-30", want: username{Host: "127.0.0.2", ClientID: "d", APIVersion: "2020-09-30"}},
		{in: "h/dev1", want: username{Host: "h", ClientID: "dev1"}},
		{in: "", wantErr: true},
		{in: "justhost", wantErr: true},
		{in: "/dev1/?api-version=x", wantErr: true},
		{in: "h//?api-version=x", wantErr: true},
		{in: strings.Repeat("a", 3000), wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseUsername(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseUsername(%.40q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("parseUsername(%.40q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestParseClientID(t *testing.T) {
	for in, want := range map[string]identity{"d": {"d", ""}, "d/m": {"d", "m"}} {
		got, err := parseClientID(in)
		if err != nil || got != want {
			t.Errorf("parseClientID(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "/m", "d/", "d/m/x"} {
		if _, err := parseClientID(in); err == nil {
			t.Errorf("parseClientID(%q) accepted", in)
		}
	}
}

func TestClassifyPublish(t *testing.T) {
	dev := identity{DeviceID: "dev1"}
	mod := identity{DeviceID: "dev1", ModuleID: "m1"}
	tests := []struct {
		id      identity
		topic   string
		want    publishTopic
		wantErr bool
	}{
		{dev, "devices/dev1/messages/events/", publishTopic{Kind: topicTelemetry}, false},
		{dev, "devices/dev1/messages/events", publishTopic{Kind: topicTelemetry}, false},
		{dev, "devices/dev1/messages/events/%24.mid=1&a=b", publishTopic{Kind: topicTelemetry, Bag: "%24.mid=1&a=b"}, false},
		{dev, "devices/dev1/messages/events/a=b/c", publishTopic{}, true},
		{dev, "devices/dev2/messages/events/", publishTopic{Kind: topicForbidden}, false},
		{dev, "devices/dev1x/messages/events/", publishTopic{Kind: topicForbidden}, false},
		{dev, "devices/dev1/messages/eventsX", publishTopic{Kind: topicForbidden}, false},
		{dev, "devices/dev1/messages/devicebound/", publishTopic{Kind: topicForbidden}, false},
		{dev, "devices/dev1/modules/m1/messages/events/", publishTopic{Kind: topicForbidden}, false},
		{mod, "devices/dev1/modules/m1/messages/events/%24.on=out1/", publishTopic{Kind: topicTelemetry, Bag: "%24.on=out1"}, false},
		{mod, "devices/dev1/messages/events/", publishTopic{Kind: topicForbidden}, false},
		{dev, "$iothub/twin/GET/?$rid=42", publishTopic{Kind: topicTwinGet, RID: "42"}, false},
		{dev, "$iothub/twin/PATCH/properties/reported/?$rid=a&x=y", publishTopic{Kind: topicTwinReported, RID: "a"}, false},
		{dev, "$iothub/methods/res/200/?$rid=7", publishTopic{Kind: topicMethodResponse, RID: "7", Status: 200}, false},
		{dev, "$iothub/methods/res/abc/?$rid=7", publishTopic{}, true},
		{dev, "$iothub/methods/res/200/", publishTopic{}, true},
		{dev, "$iothub/methods/POST/x/?$rid=1", publishTopic{Kind: topicForbidden}, false},
		{dev, "$iothub/twin/res/200/?$rid=1", publishTopic{Kind: topicForbidden}, false},
		{dev, "$SYS/broker", publishTopic{Kind: topicForbidden}, false},
		{dev, "factory/line1/temp", publishTopic{Kind: topicOther}, false},
	}
	for _, tt := range tests {
		got, err := classifyPublish(tt.id, tt.topic)
		if (err != nil) != tt.wantErr {
			t.Errorf("classifyPublish(%v, %q) error = %v, wantErr %v", tt.id, tt.topic, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("classifyPublish(%v, %q) = %+v, want %+v", tt.id, tt.topic, got, tt.want)
		}
	}
}

func TestCanRead(t *testing.T) {
	dev := identity{DeviceID: "dev1"}
	mod := identity{DeviceID: "dev1", ModuleID: "m1"}
	tests := []struct {
		id     identity
		filter string
		want   bool
	}{
		{dev, "devices/dev1/messages/devicebound/#", true},
		{dev, "devices/dev1/messages/devicebound/%24.mid=1", true},
		{dev, "devices/dev2/messages/devicebound/#", false},
		{dev, "devices/+/messages/devicebound/#", false},
		{dev, "devices/#", false},
		{dev, "devices/dev1/messages/events/#", false},
		{dev, "#", false},
		{dev, "+/dev1/messages/devicebound/#", false},
		{dev, "$iothub/methods/POST/#", true},
		{dev, "$iothub/twin/res/#", true},
		{dev, "$iothub/twin/PATCH/properties/desired/#", true},
		{dev, "$iothub/#", false},
		{dev, "$SYS/#", false},
		{dev, "$share/g/devices/#", false},
		{dev, "factory/line1/#", true},
		{mod, "devices/dev1/modules/m1/inputs/#", true},
		{mod, "devices/dev1/modules/m2/inputs/#", false},
		{mod, "devices/dev1/messages/devicebound/#", false},
	}
	for _, tt := range tests {
		if got := canRead(tt.id, tt.filter); got != tt.want {
			t.Errorf("canRead(%v, %q) = %v, want %v", tt.id, tt.filter, got, tt.want)
		}
	}
}

func FuzzParseUsername(f *testing.F) {
	for _, s := range []string{"localhost/dev1/?api-version=2021-04-12&DeviceClientType=x%2F1", "h/d/m/?api-version=1", "h/d/api-version=1", "%", "/?", "a/b/?model-id=%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parseUsername(s)
		if err == nil && (u.Host == "" || u.ClientID == "") {
			t.Fatalf("accepted %q with empty host or client id", s)
		}
	})
}

func FuzzClassifyPublish(f *testing.F) {
	for _, s := range []string{"devices/d/messages/events/a=b", "$iothub/methods/res/200/?$rid=1", "$iothub/twin/GET/?$rid=", "x/y", "devices/d/modules/m/messages/events/%24.on=o/"} {
		f.Add("d", "m", s)
	}
	f.Fuzz(func(t *testing.T, d, m, topic string) {
		id := identity{DeviceID: d, ModuleID: m}
		pt, err := classifyPublish(id, topic)
		if err != nil {
			return
		}
		// Nothing in another device's namespace may ever be classified as ours.
		if pt.Kind == topicTelemetry && !strings.HasPrefix(topic, eventsPrefix(id)) {
			t.Fatalf("%q classified as telemetry of %v", topic, id)
		}
		if strings.HasPrefix(topic, "devices/") && pt.Kind == topicOther {
			t.Fatalf("%q in devices/ classified as a plain topic", topic)
		}
	})
}
