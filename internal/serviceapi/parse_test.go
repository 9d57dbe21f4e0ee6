package serviceapi

import (
	"maps"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/message"
)

const testKey = "c2VjcmV0LWtleS0wMTIzNDU2Nzg5YWJjZGVm" // base64, not a real secret

func TestParseConnectionString(t *testing.T) {
	good := ConnectionString{HostName: "hub.example.com", SharedAccessKeyName: "iothubowner", SharedAccessKey: testKey}
	for _, tc := range []struct {
		in   string
		want ConnectionString
		err  string // substring; "" = success
	}{
		{"HostName=hub.example.com;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey, good, ""},
		{" hostname = hub.example.com ; sharedaccesskey=" + testKey + ";SHAREDACCESSKEYNAME=iothubowner;", good, ""},
		{"HostName=hub.example.com;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey + ";GatewayHostName=gw", good, ""},
		{"HostName=127.0.0.2;SharedAccessKeyName=s;SharedAccessKey=" + testKey, ConnectionString{"127.0.0.2", "s", testKey}, ""},
		{"", ConnectionString{}, "HostName is missing"},
		{"SharedAccessKeyName=a;SharedAccessKey=" + testKey, ConnectionString{}, "HostName is missing"},
		{"HostName=h;SharedAccessKey=" + testKey, ConnectionString{}, "SharedAccessKeyName is missing"},
		{"HostName=h;SharedAccessKeyName=a", ConnectionString{}, "SharedAccessKey is missing"},
		{"HostName=h;SharedAccessKeyName=a;SharedAccessKey=not base64!", ConnectionString{}, "not base64"},
		{"HostName=h;HostName=g;SharedAccessKeyName=a;SharedAccessKey=" + testKey, ConnectionString{}, "given twice"},
		{"HostName=h;DeviceId=d;SharedAccessKey=" + testKey, ConnectionString{}, "device connection string"},
		{"HostName=h;SharedAccessKeyName=a;SharedAccessKey=" + testKey + ";junk", ConnectionString{}, "no '='"},
		{"HostName=https://h/;SharedAccessKeyName=a;SharedAccessKey=" + testKey, ConnectionString{}, "bare host"},
		{strings.Repeat("x", maxConnStringLen+1), ConnectionString{}, "longer than"},
	} {
		got, err := ParseConnectionString(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
		case got != tc.want:
			t.Errorf("%q: %+v, want %+v", tc.in, got, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), testKey) {
			t.Errorf("error leaks the key: %v", err)
		}
	}
}

func FuzzParseConnectionString(f *testing.F) {
	f.Add("HostName=hub.example.com;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey)
	f.Add("HostName=h;;;SharedAccessKeyName==;SharedAccessKey==" + testKey)
	f.Add("hostname=h;deviceid=d")
	f.Add(";=;")
	f.Fuzz(func(t *testing.T, s string) {
		cs, err := ParseConnectionString(s)
		if err != nil {
			if cs != (ConnectionString{}) {
				t.Fatalf("error with a result: %+v", cs)
			}
			return
		}
		if cs.HostName == "" || cs.SharedAccessKeyName == "" || cs.SharedAccessKey == "" {
			t.Fatalf("accepted incomplete %+v", cs)
		}
		// Whatever parses must sign.
		if _, err := NewClient(s, ClientOptions{}); err != nil {
			t.Fatalf("NewClient after a good parse: %v", err)
		}
	})
}

func TestC2DMessageFromHeader(t *testing.T) {
	h := http.Header{}
	h.Set("iothub-messageid", "m1")
	h.Set("iothub-correlationid", "c1")
	h.Set("iothub-userid", "u1")
	h.Set("iothub-expiry", "2030-01-02T03:04:05+02:00")
	h.Set("iothub-ack", "FULL")
	h.Set("Content-Type", "application/json")
	h.Set("Content-Encoding", "utf-8")
	h.Set("iothub-app-color", "red")
	h.Set("iothub-app-%43amel%20%43ase", "v w")
	h.Set("iothub-app-50%", "bad escape kept")
	h.Set("Authorization", "ignored")
	h.Set("iothub-to", "ignored")
	m, err := C2DMessageFromHeader(h, []byte("body"))
	if err != nil {
		t.Fatal(err)
	}
	wantSys := map[string]string{
		message.SysMessageID: "m1", message.SysCorrelationID: "c1", message.SysUserID: "u1",
		message.SysExpiry: "2030-01-02T01:04:05Z", message.SysAck: "full",
		message.SysContentType: "application/json", message.SysContentEncoding: "utf-8",
	}
	if !maps.Equal(m.System, wantSys) {
		t.Errorf("system %v\nwant %v", m.System, wantSys)
	}
	wantProps := map[string]string{"color": "red", "Camel Case": "v w", "50%": "bad escape kept"}
	if !maps.Equal(m.Properties, wantProps) {
		t.Errorf("properties %v, want %v", m.Properties, wantProps)
	}
	if string(m.Body) != "body" {
		t.Errorf("body %q", m.Body)
	}

	for name, hdr := range map[string]http.Header{
		"bad expiry":        {"Iothub-Expiry": {"tomorrow"}},
		"bad ack":           {"Iothub-Ack": {"sometimes"}},
		"long message id":   {"Iothub-Messageid": {strings.Repeat("m", 129)}},
		"twice":             {"Iothub-Messageid": {"a", "b"}},
		"empty name":        {"Iothub-App-": {"v"}},
		"property twice":    {"Iothub-App-A": {"1", "2"}},
		"same after decode": {"Iothub-App-Ab": {"1"}, "Iothub-App-%61b": {"2"}},
	} {
		if _, err := C2DMessageFromHeader(hdr, nil); !errcode.Is(err, errcode.ArgumentInvalid) {
			t.Errorf("%s: error %v, want ArgumentInvalid", name, err)
		}
	}
}

func TestC2DHeaderRoundTrip(t *testing.T) {
	in := message.Message{
		Body:       []byte{0, 1, 2},
		System:     map[string]string{message.SysMessageID: "id-1", message.SysAck: "positive", message.SysContentType: "text/plain"},
		Properties: map[string]string{"Color": "Red", "with space/and%": "ünïcode", "x": ""},
	}
	h, err := c2dHeader(in)
	if err != nil {
		t.Fatal(err)
	}
	// As a server sees it: canonicalized names.
	wire := http.Header{}
	for k, vs := range h {
		for _, v := range vs {
			wire.Add(strings.ToLower(k), v)
		}
	}
	out, err := C2DMessageFromHeader(wire, in.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(out.System, in.System) || !maps.Equal(out.Properties, in.Properties) {
		t.Errorf("round trip:\n got %v %v\nwant %v %v", out.System, out.Properties, in.System, in.Properties)
	}
	for _, bad := range []message.Message{
		{System: map[string]string{message.SysTo: "/x"}},
		{Properties: map[string]string{"": "v"}},
		{Properties: map[string]string{"k": " padded"}},
		{Properties: map[string]string{"k": "a\r\nInjected: yes"}},
	} {
		if _, err := c2dHeader(bad); err == nil {
			t.Errorf("c2dHeader(%v) succeeded", bad)
		}
	}
}

func FuzzC2DHeaders(f *testing.F) {
	f.Add("iothub-app-%41b", "v", "iothub-expiry", "2030-01-01T00:00:00Z")
	f.Add("iothub-app-", "", "iothub-ack", "full")
	f.Add("Content-Type", "application/json", "iothub-messageid", "x")
	f.Add("iothub-app-%zz", "\xff", "iothub-app-%25", "%")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		h := http.Header{}
		h.Add(k1, v1)
		h.Add(k2, v2)
		m, err := C2DMessageFromHeader(h, []byte("b"))
		if err != nil {
			if !errcode.Is(err, errcode.ArgumentInvalid) {
				t.Fatalf("error without ArgumentInvalid: %v", err)
			}
			return
		}
		for k := range m.Properties {
			if k == "" {
				t.Fatal("empty property name accepted")
			}
		}
		// Whatever the server accepts, the client can send again unchanged
		// (values that HTTP would trim are out of scope).
		for _, v := range m.Properties {
			if v != strings.TrimSpace(v) || strings.ContainsAny(v, "\r\n\x00") || !utf8.ValidString(v) {
				return
			}
		}
		h2, err := c2dHeader(m)
		if err != nil {
			t.Fatalf("re-encode %v: %v", m, err)
		}
		m2, err := C2DMessageFromHeader(h2, m.Body)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !maps.Equal(m.System, m2.System) || !maps.Equal(m.Properties, m2.Properties) {
			t.Fatalf("round trip: %v %v / %v %v", m.System, m.Properties, m2.System, m2.Properties)
		}
	})
}

func TestParseErrorResponse(t *testing.T) {
	for _, tc := range []struct {
		status     int
		header     string
		body       string
		wantName   string
		wantStatus int
		wantText   string
	}{
		{404, "DeviceNotFound", `{"Message":"ErrorCode:DeviceNotFound;Device d1 not found","ExceptionMessage":"Tracking ID:x"}`, "DeviceNotFound", 404, "Device d1 not found"},
		{412, "", `{"Message":"ErrorCode:PreconditionFailed;etag mismatch"}`, "PreconditionFailed", 412, "etag mismatch"},
		{404, "", `{"Message":"{\"errorCode\":404001,\"message\":\"no such device\"}"}`, "DeviceNotFound", 404, "no such device"},
		{400, "", `{"Message":"ErrorCode:SomethingNew;text;with;semicolons"}`, "SomethingNew", 400, "text;with;semicolons"},
		{409, "DeviceAlreadyExists", ``, "DeviceAlreadyExists", 409, "Conflict"},
		{502, "", `Bad Gateway from proxy`, "ServerError", 502, "Bad Gateway from proxy"},
		{429, "", `{}`, "ThrottlingException", 429, "Too Many Requests"},
		{404, "", `{"Message":"plain words"}`, "NotFound", 404, "plain words"},
	} {
		e := ParseErrorResponse(tc.status, tc.header, []byte(tc.body))
		if e.Code.Name != tc.wantName || e.Code.Status != tc.wantStatus || e.Message != tc.wantText {
			t.Errorf("%d %q %s: got %s/%d %q", tc.status, tc.header, tc.body, e.Code.Name, e.Code.Status, e.Message)
		}
	}
}

func FuzzParseErrorResponse(f *testing.F) {
	f.Add(404, "DeviceNotFound", []byte(`{"Message":"ErrorCode:DeviceNotFound;x"}`))
	f.Add(500, "", []byte(`{"Message":"{\"errorCode\":\"x\"}"}`))
	f.Add(0, "", []byte("\xff"))
	f.Fuzz(func(t *testing.T, status int, header string, body []byte) {
		e := ParseErrorResponse(status, header, body)
		if e == nil || e.Code.Name == "" || e.Code.Status != status {
			t.Fatalf("ParseErrorResponse(%d, %q, %q) = %+v", status, header, body, e)
		}
	})
}
