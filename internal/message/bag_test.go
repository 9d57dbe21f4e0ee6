package message

import (
	"maps"
	"strconv"
	"strings"
	"testing"
)

func TestDecodeBag(t *testing.T) {
	type m = map[string]string
	tests := []struct {
		name      string
		bag       string
		sys, app  m
		wantError string
	}{
		{name: "empty", bag: "", sys: m{}, app: m{}},
		{
			// Captured from azure-iot-device-mqtt 1.16.4 (iothub-wire.md §1.4).
			name: "node sdk capture",
			bag:  "%24.mid=mid-1&%24.cid=cid-1&%24.uid=u1&%24.to=%2Fx&%24.ct=application%2Fjson&%24.ce=utf-8&temperatureAlert=true&sp%20ace%2F%26%3D=v%26%3D%2F%20x",
			sys: m{SysMessageID: "mid-1", SysCorrelationID: "cid-1", SysUserID: "u1", SysTo: "/x",
				SysContentType: "application/json", SysContentEncoding: "utf-8"},
			app: m{"temperatureAlert": "true", "sp ace/&=": "v&=/ x"},
		},
		{
			name: "every system key, literal $",
			bag:  "$.mid=1&$.cid=2&$.uid=3&$.to=4&$.ct=5&$.ce=6&$.exp=7&$.ifid=8&$.on=9&$.ctime=10&$.sub=11&$.schema=12",
			sys: m{SysMessageID: "1", SysCorrelationID: "2", SysUserID: "3", SysTo: "4", SysContentType: "5",
				SysContentEncoding: "6", SysExpiry: "7", SysInterfaceID: "8", SysOutputName: "9",
				SysCreationTime: "10", SysSubject: "11", SysDataSchema: "12"},
			app: m{},
		},
		{name: "module output", bag: "%24.on=out1", sys: m{SysOutputName: "out1"}, app: m{}},
		{name: "plus is space (C SDK)", bag: "a+b=c+d&e=%2B", sys: m{}, app: m{"a b": "c d", "e": "+"}},
		{name: "key only", bag: "flag&x=", sys: m{}, app: m{"flag": "", "x": ""}},
		{name: "empty pairs skipped", bag: "&a=1&&b=2&", sys: m{}, app: m{"a": "1", "b": "2"}},
		{name: "unknown $. dropped", bag: "%24.foo=bar&%24.mid=m&k=v", sys: m{SysMessageID: "m"}, app: m{"k": "v"}},
		{name: "$ without dot is app", bag: "%24foo=bar", sys: m{}, app: m{"$foo": "bar"}},
		{name: "= in value", bag: "a=b=c", sys: m{}, app: m{"a": "b=c"}},
		{name: "utf-8", bag: "t%C3%A9=%F0%9F%98%80", sys: m{}, app: m{"té": "😀"}},
		{name: "full name is app", bag: "message-id=x&iothub-ack=full", sys: m{}, app: m{"message-id": "x", "iothub-ack": "full"}},
		{name: "case-sensitive system keys", bag: "%24.MID=x", sys: m{}, app: m{}},
		{name: "bad escape in key", bag: "a=1&b%zz=2", wantError: "property 2: name"},
		{name: "bad escape in value", bag: "a=1&&b=%4", wantError: "property 3 (\"b\"): value"},
		{name: "invalid utf-8", bag: "a=%FF", wantError: "UTF-8"},
		{name: "empty key", bag: "=v", wantError: "property 1: empty name"},
		{name: "duplicate app", bag: "a=1&a=2", wantError: "given twice"},
		{name: "duplicate system", bag: "$.mid=1&%24.mid=2", wantError: "given twice"},
		{name: "too long", bag: strings.Repeat("a", MaxBagLen+1), wantError: "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sys, app, err := DecodeBag(tt.bag)
			if tt.wantError != "" {
				if err == nil {
					t.Fatalf("DecodeBag succeeded: %v %v", sys, app)
				}
				if !strings.Contains(err.Error(), tt.wantError) {
					t.Errorf("error %q does not contain %q", err, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeBag: %v", err)
			}
			if !maps.Equal(sys, tt.sys) {
				t.Errorf("system = %v, want %v", sys, tt.sys)
			}
			if !maps.Equal(app, tt.app) {
				t.Errorf("app = %v, want %v", app, tt.app)
			}
		})
	}
}

func TestDecodeBagPropertyLimit(t *testing.T) {
	pairs := make([]string, MaxProperties)
	for i := range pairs {
		pairs[i] = "k" + strconv.Itoa(i) + "=v"
	}
	if _, app, err := DecodeBag(strings.Join(pairs, "&")); err != nil || len(app) != MaxProperties {
		t.Fatalf("%d properties: %d decoded, err %v", MaxProperties, len(app), err)
	}
	pairs = append(pairs, "one=more")
	if _, _, err := DecodeBag(strings.Join(pairs, "&")); err == nil {
		t.Fatalf("%d properties accepted", len(pairs))
	}
}

func TestEncodeBag(t *testing.T) {
	type m = map[string]string
	tests := []struct {
		name     string
		sys, app m
		want     string
	}{
		{name: "empty", want: ""},
		{
			// The C2D bag verified against the Node SDK (iothub-wire.md §1.5).
			name: "c2d",
			sys:  m{SysMessageID: "m1", SysTo: "/devices/dev1/messages/deviceBound", SysContentType: "application/json", SysContentEncoding: "utf-8", SysAck: "full"},
			app:  m{"color": "red"},
			want: "%24.mid=m1&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&%24.ct=application%2Fjson&%24.ce=utf-8&iothub-ack=full&color=red",
		},
		{
			name: "fixed system order, sorted app",
			sys:  m{SysSubject: "s", SysCorrelationID: "c", SysExpiry: "2030-01-01T00:00:00.000Z", SysMessageID: "m", SysUserID: "u"},
			app:  m{"z": "1", "a": "2", "M": "3"},
			want: "%24.mid=m&%24.exp=2030-01-01T00%3A00%3A00.000Z&%24.cid=c&%24.uid=u&%24.sub=s&M=3&a=2&z=1",
		},
		{
			name: "encodeURIComponent set",
			app:  m{"sp ace/&=$": "v&=/ x+%!~*'()é"},
			want: "sp%20ace%2F%26%3D%24=v%26%3D%2F%20x%2B%25!~*'()%C3%A9",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := EncodeBag(tt.sys, tt.app)
			if got != tt.want {
				t.Errorf("EncodeBag\n got %s\nwant %s", got, tt.want)
			}
			if strings.Contains(got, "/") {
				t.Errorf("bag %q contains '/'", got)
			}
		})
	}
}

func TestBagRoundTrip(t *testing.T) {
	sys := map[string]string{SysMessageID: "a/b c", SysCreationTime: "2024-01-01T00:00:00Z", SysDataSchema: "dtmi:x;1", SysOutputName: "o&="}
	app := map[string]string{"k+1": "v+1", "": "x", "empty": "", "ünï": "cödé", "%": "%25"}
	delete(app, "") // empty keys are not representable
	s2, a2, err := DecodeBag(EncodeBag(sys, app))
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(sys, s2) || !maps.Equal(app, a2) {
		t.Errorf("round trip:\n sys %v -> %v\n app %v -> %v", sys, s2, app, a2)
	}
}

func TestMessageSize(t *testing.T) {
	msg := &Message{
		Body:       make([]byte, 100),
		System:     map[string]string{SysMessageID: "abc"},
		Properties: map[string]string{"k": "vv"},
	}
	if got, want := msg.Size(), 100+len(SysMessageID)+3+1+2; got != want {
		t.Errorf("Size = %d, want %d", got, want)
	}
	if (&Message{}).Size() != 0 {
		t.Error("empty message has non-zero size")
	}
}

func FuzzDecodeBag(f *testing.F) {
	f.Add("")
	f.Add("%24.mid=mid-1&%24.cid=cid-1&%24.uid=u1&%24.to=%2Fx&%24.ct=application%2Fjson&%24.ce=utf-8&temperatureAlert=true&sp%20ace%2F%26%3D=v%26%3D%2F%20x")
	f.Add("$.on=out&a+b=c+d&flag&&x=")
	f.Add("%24.foo=1&%zz=2&=3&a=%FF")
	f.Add("iothub-ack=full&$.exp=2030-01-01T00:00:00Z")
	f.Fuzz(func(t *testing.T, bag string) {
		sys, app, err := DecodeBag(bag)
		if err != nil {
			return
		}
		enc := EncodeBag(sys, app)
		if strings.Contains(enc, "/") {
			t.Fatalf("EncodeBag wrote '/': %q", enc)
		}
		if len(enc) > MaxBagLen {
			return // raw UTF-8 triples when encoded; beyond the decoder's limit
		}
		s2, a2, err := DecodeBag(enc)
		if err != nil {
			t.Fatalf("DecodeBag(EncodeBag(..)) = %v for %q", err, enc)
		}
		if !maps.Equal(sys, s2) || !maps.Equal(app, a2) {
			t.Fatalf("round trip of %q via %q:\n sys %v -> %v\n app %v -> %v", bag, enc, sys, s2, app, a2)
		}
	})
}
