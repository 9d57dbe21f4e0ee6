package endpoint

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2/ocf"

	"github.com/moat-iot/moat/internal/message"
)

func TestParseFileNameFormat(t *testing.T) {
	at := time.Date(2018, 10, 30, 10, 56, 59, 0, time.UTC)
	for _, tt := range []struct {
		format, want, err string
	}{
		{"", "ContosoTestHub/0/2018/10/30/10/56", ""}, // IoT Hub's documented example
		{DefaultFileNameFormat, "ContosoTestHub/0/2018/10/30/10/56", ""},
		{"{YYYY}/{MM}/{DD}/{HH}/{mm}/{iothub}/{partition}", "2018/10/30/10/56/ContosoTestHub/0", ""},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.avro", "ContosoTestHub/0/2018/10/30/10/56.avro", ""},
		{"archive/{iothub}-{partition}/{YYYY}{MM}{DD}T{HH}{mm}.json", "archive/ContosoTestHub-0/20181030T1056.json", ""},
		{"{iothub}{partition}{YYYY}{MM}{DD}{HH}{mm}", "ContosoTestHub020181030" + "1056", ""},
		{"{iothub}/{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}", "ContosoTestHub/ContosoTestHub/0/2018/10/30/10/56", ""},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}", "", "missing {mm}"},
		{"{iothub}/{YYYY}/{mm}", "", "missing {partition} {MM} {DD} {HH}"},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{MI}", "", `unknown token "{MI}"`},
		{"{iothub}/{partition}/{yyyy}/{MM}/{DD}/{HH}/{mm}", "", `unknown token "{yyyy}"`},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm", "", "unclosed '{'"},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/mm}", "", "'}' without '{'"},
		{"/{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}", "", "empty path segment"},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}/", "", "empty path segment"},
		{"{iothub}//{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}", "", "empty path segment"},
		{"{iothub}/../{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}", "", `".." path segment`},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.", "", "ends with '.'"},
		{"{iothub}\\{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}", "", "backslash"},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}\n", "", "control character"},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}" + strings.Repeat("x", 600), "", "characters"},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}\xff", "", "UTF-8"},
	} {
		f, err := parseFileNameFormat(tt.format)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: error %v, want %q", tt.format, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.format, err)
			continue
		}
		if got := f.render("ContosoTestHub", at); got != tt.want {
			t.Errorf("%q renders %q, want %q", tt.format, got, tt.want)
		}
	}
}

func TestFileNameChunkSuffix(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600))
	for _, tt := range []struct{ format, first, third string }{
		{DefaultFileNameFormat, "hub/0/2026/01/02/02/04", "hub/0/2026/01/02/02/04_2"}, // UTC
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.avro", "hub/0/2026/01/02/02/04.avro", "hub/0/2026/01/02/02/04_2.avro"},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}.{mm}", "hub/0/2026/01/02/02.04", "hub/0/2026/01/02/02.04_2"},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}/data.v1.json", "hub/0/2026/01/02/02/04/data.v1.json", "hub/0/2026/01/02/02/04/data.v1_2.json"},
		{"{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.d/blob", "hub/0/2026/01/02/02/04.d/blob", "hub/0/2026/01/02/02/04.d/blob_2"},
	} {
		f, err := parseFileNameFormat(tt.format)
		if err != nil {
			t.Fatal(err)
		}
		first := f.render("hub", at)
		if first != tt.first || f.withChunk(first, 0) != first || f.withChunk(first, 2) != tt.third {
			t.Errorf("%q: %q, %q; want %q, %q", tt.format, first, f.withChunk(first, 2), tt.first, tt.third)
		}
	}
}

func FuzzParseFileNameFormat(f *testing.F) {
	for _, s := range []string{"", DefaultFileNameFormat, "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.avro",
		"{mm}{HH}{DD}{MM}{YYYY}{partition}{iothub}", "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm", "a/./{x}", "}{"} {
		f.Add(s)
	}
	at := time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		ff, err := parseFileNameFormat(s)
		if err != nil {
			return
		}
		name := ff.render("hub", at)
		if strings.ContainsAny(name, "{}\\") || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.HasSuffix(name, ".") {
			t.Fatalf("%q renders %q", s, name)
		}
		if len(name) > maxBlobName {
			t.Fatalf("%q renders %d characters", s, len(name))
		}
		for _, tok := range []string{"2026", "12", "31", "23", "59", "hub", "0"} {
			if !strings.Contains(name, tok) {
				t.Fatalf("%q renders %q without %s", s, name, tok)
			}
		}
		c := ff.withChunk(name, 7)
		if c == name || !strings.Contains(c, "_7") || !strings.HasSuffix(c, ff.ext) || strings.Count(c, "/") != strings.Count(name, "/") {
			t.Fatalf("%q: chunk 7 of %q is %q", s, name, c)
		}
	})
}

func TestParseStorageConnectionString(t *testing.T) {
	const key = "a2V5a2V5a2V5a2V5"
	for _, tt := range []struct {
		in, endpoint, account, err string
		sas                        bool
	}{
		{"DefaultEndpointsProtocol=https;AccountName=plant;AccountKey=" + key + ";EndpointSuffix=core.windows.net", "https://plant.blob.core.windows.net", "plant", "", false},
		{"AccountName=plant;AccountKey=" + key, "https://plant.blob.core.windows.net", "plant", "", false},
		{"accountname=plant;ACCOUNTKEY=" + key + ";endpointsuffix=core.chinacloudapi.cn;", "https://plant.blob.core.chinacloudapi.cn", "plant", "", false},
		{"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + key + ";BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;", "http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1", "", false},
		{"UseDevelopmentStorage=true", "http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1", "", false},
		{"BlobEndpoint=https://plant.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&ss=b&sig=c2ln", "https://plant.blob.core.windows.net/", "", "", true},
		{"BlobEndpoint=https://plant.blob.core.windows.net;QueueEndpoint=https://q;SharedAccessSignature=?sv=1&sig=x", "https://plant.blob.core.windows.net", "", "", true},
		{"AccountName=plant", "", "", "needs AccountName and AccountKey, or SharedAccessSignature", false},
		{"AccountKey=" + key, "", "", "needs BlobEndpoint or AccountName", false},
		{"BlobEndpoint=https://x;AccountKey=" + key, "", "", "AccountKey needs AccountName", false},
		{"AccountName=Plant;AccountKey=" + key, "", "", "AccountName", false},
		{"AccountName=plant;AccountKey=not*base64", "", "", "AccountKey is not base64", false},
		{"AccountName=plant;AccountName=other;AccountKey=" + key, "", "", "given twice", false},
		{"AccountName=;AccountKey=" + key, "", "", "AccountName is empty", false},
		{"AccountName=plant;AccountKey=" + key + ";garbage", "", "", "part 3 is not Key=Value", false},
		{"DefaultEndpointsProtocol=ftp;AccountName=plant;AccountKey=" + key, "", "", "http or https", false},
		{"BlobEndpoint=ftp://x;SharedAccessSignature=sig=1", "", "", "https://", false},
		{"BlobEndpoint=https://user:pw@x;SharedAccessSignature=sig=1", "", "", "without credentials", false},
		{"BlobEndpoint=https://x/?sig=1;SharedAccessSignature=sig=1", "", "", "without credentials or query", false},
		{"UseDevelopmentStorage=false", "", "", "must be true", false},
		{"UseDevelopmentStorage=true;AccountName=x", "", "", "no other keys", false},
		{"", "", "", "needs BlobEndpoint or AccountName", false},
	} {
		c, err := ParseStorageConnectionString(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.err)
			}
			if err != nil && strings.Contains(err.Error(), key) {
				t.Errorf("%q: error quotes the key: %v", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if c.BlobEndpoint.String() != tt.endpoint || c.AccountName != tt.account || (c.SharedAccessSignature != "") != tt.sas {
			t.Errorf("%q: %+v", tt.in, c)
		}
	}
}

func FuzzParseStorageConnectionString(f *testing.F) {
	for _, s := range []string{"UseDevelopmentStorage=true", "AccountName=plant;AccountKey=c2VjcmV0",
		"BlobEndpoint=https://x/;SharedAccessSignature=sig=c2VjcmV0", "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=c2VjcmV0;EndpointSuffix=x%zz",
		";;=;", "AccountName=plant;AccountKey=c2VjcmV0;AccountKey=c2VjcmV0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseStorageConnectionString(s)
		if err != nil {
			// Errors never quote a secret value.
			for seg := range strings.SplitSeq(s, ";") {
				k, v, _ := strings.Cut(seg, "=")
				k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
				if (k == "accountkey" || k == "sharedaccesssignature") && len(v) >= 8 && strings.Contains(err.Error(), v) {
					t.Fatalf("error quotes %s: %v", k, err)
				}
			}
			return
		}
		if c.BlobEndpoint == nil || c.BlobEndpoint.Host == "" || (c.AccountKey == "" && c.SharedAccessSignature == "") {
			t.Fatalf("%q parsed to %+v", s, c)
		}
		if c.AccountKey != "" && c.AccountName == "" {
			t.Fatalf("%q: key without account", s)
		}
	})
}

func TestStorageContainerConfigProblems(t *testing.T) {
	const cs = "AccountName=plant;AccountKey=a2V5a2V5"
	ok := StorageContainerConfig{Name: "s", ConnectionString: cs, ContainerName: "telemetry"}
	for _, tt := range []struct {
		name   string
		change func(*StorageContainerConfig)
		field  string
		msg    string
	}{
		{"defaults", func(*StorageContainerConfig) {}, "", ""},
		{"every field", func(c *StorageContainerConfig) {
			c.FileNameFormat, c.BatchFrequencyInSeconds, c.MaxChunkSizeInBytes = "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}.json", 60, 10485760
			c.Encoding, c.AuthenticationType, c.EndpointURI = "json", "KEYBASED", "https://plant.blob.core.windows.net/"
		}, "", ""},
		{"floors", func(c *StorageContainerConfig) { c.BatchFrequencyInSeconds, c.MaxChunkSizeInBytes = 1, 1048576 }, "", ""},
		{"ceilings", func(c *StorageContainerConfig) { c.BatchFrequencyInSeconds, c.MaxChunkSizeInBytes = 720, 524288000 }, "", ""},
		{"avrodeflate", func(c *StorageContainerConfig) { c.Encoding = "avrodeflate" }, "", ""},
		{"identity", func(c *StorageContainerConfig) {
			c.AuthenticationType, c.ConnectionString, c.EndpointURI = "identityBased", "", "https://plant.blob.core.windows.net"
			c.Identity = &StorageIdentity{UserAssignedIdentity: "/subscriptions/x"}
		}, "authenticationType", "identity-based"},
		{"unknown auth", func(c *StorageContainerConfig) { c.AuthenticationType = "sas" }, "authenticationType", "is not keyBased or identityBased"},
		{"identity with key", func(c *StorageContainerConfig) { c.Identity = &StorageIdentity{} }, "identity", "only with authenticationType identityBased"},
		{"no connection string", func(c *StorageContainerConfig) { c.ConnectionString = "" }, "connectionString", "is required"},
		{"bad connection string", func(c *StorageContainerConfig) { c.ConnectionString = "AccountName=plant" }, "connectionString", "AccountKey"},
		{"endpoint mismatch", func(c *StorageContainerConfig) { c.EndpointURI = "https://other.blob.core.windows.net" }, "endpointUri", "does not match"},
		{"endpoint not url", func(c *StorageContainerConfig) { c.EndpointURI = "plant.blob.core.windows.net" }, "endpointUri", "https://"},
		{"container upper", func(c *StorageContainerConfig) { c.ContainerName = "Telemetry" }, "containerName", "lowercase"},
		{"container short", func(c *StorageContainerConfig) { c.ContainerName = "ab" }, "containerName", "3 to 63"},
		{"container double hyphen", func(c *StorageContainerConfig) { c.ContainerName = "a--b" }, "containerName", "single hyphens"},
		{"container missing", func(c *StorageContainerConfig) { c.ContainerName = "" }, "containerName", ""},
		{"format", func(c *StorageContainerConfig) { c.FileNameFormat = "{iothub}/{YYYY}" }, "fileNameFormat", "must contain every one of"},
		{"encoding", func(c *StorageContainerConfig) { c.Encoding = "csv" }, "encoding", "not Avro, AvroDeflate or JSON"},
		{"frequency low", func(c *StorageContainerConfig) { c.BatchFrequencyInSeconds = -5 }, "batchFrequencyInSeconds", "outside 1 to 720"},
		{"frequency high", func(c *StorageContainerConfig) { c.BatchFrequencyInSeconds = 721 }, "batchFrequencyInSeconds", "outside 1 to 720"},
		{"chunk low", func(c *StorageContainerConfig) { c.MaxChunkSizeInBytes = 1048575 }, "maxChunkSizeInBytes", "outside"},
		{"chunk high", func(c *StorageContainerConfig) { c.MaxChunkSizeInBytes = 524288001 }, "maxChunkSizeInBytes", "outside"},
	} {
		c := ok
		tt.change(&c)
		ps := c.Problems()
		if tt.field == "" {
			if len(ps) > 0 {
				t.Errorf("%s: %v", tt.name, ps)
			}
			if _, err := NewStorageContainer(c); err != nil {
				t.Errorf("%s: NewStorageContainer: %v", tt.name, err)
			}
			continue
		}
		found := false
		for _, p := range ps {
			found = found || (p.Field == tt.field && strings.Contains(p.Msg, tt.msg))
		}
		if !found {
			t.Errorf("%s: problems %v, want %s: …%s…", tt.name, ps, tt.field, tt.msg)
		}
		if _, err := NewStorageContainer(c); err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s: NewStorageContainer error %v", tt.name, err)
		}
	}
	// The identity error says plainly what is missing.
	c := ok
	c.AuthenticationType = "identityBased"
	if _, err := NewStorageContainer(c); err == nil || !strings.Contains(err.Error(), "identityBased is not available yet") {
		t.Errorf("identityBased: %v", err)
	}
}

func FuzzStorageContainerConfig(f *testing.F) {
	f.Add(`{"name":"s","connectionString":"AccountName=plant;AccountKey=a2V5","containerName":"telemetry"}`)
	f.Add(`{"name":"s","connectionString":"UseDevelopmentStorage=true","containerName":"abc","fileNameFormat":"{mm}{HH}{DD}{MM}{YYYY}{partition}{iothub}.json","encoding":"JSON","batchFrequencyInSeconds":1,"maxChunkSizeInBytes":1048576}`)
	f.Add(`{"authenticationType":"identityBased","endpointUri":"https://x","identity":{}}`)
	f.Fuzz(func(t *testing.T, js string) {
		var c StorageContainerConfig
		if json.Unmarshal([]byte(js), &c) != nil {
			return
		}
		ps := c.Problems()
		s, err := NewStorageContainer(c)
		if (len(ps) == 0) != (err == nil) {
			t.Fatalf("problems %v but NewStorageContainer error %v", ps, err)
		}
		if err != nil {
			if c.ConnectionString != "" && len(c.ConnectionString) >= 8 && strings.Contains(err.Error(), c.ConnectionString) {
				t.Fatalf("error quotes the connection string: %v", err)
			}
			return
		}
		if s.cfg.window < time.Second || s.cfg.window > 720*time.Second || s.cfg.maxChunk < MinMaxChunkSizeInBytes || s.cfg.maxChunk > MaxMaxChunkSizeInBytes {
			t.Fatalf("resolved out of range: %+v", s.cfg)
		}
	})
}

// blobOf builds a whole blob from the encoding's pieces: header, then one
// block per group of messages.
func blobOf(t testing.TB, enc blobEncoding, groups ...[]message.Message) []byte {
	t.Helper()
	var sync [16]byte
	copy(sync[:], "0123456789abcdef")
	out := append([]byte(nil), enc.header(sync)...)
	for _, g := range groups {
		var recs [][]byte
		for _, m := range g {
			r, err := enc.record(m)
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, r)
		}
		b, err := enc.block(recs, sync)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

func TestAvroBlobIsOneContainerFile(t *testing.T) {
	for _, deflate := range []bool{false, true} {
		msgs := []message.Message{blobTestMessage("x", 0), blobTestMessage("x", 1), blobTestMessage("x", 6), blobTestMessage("x", 2)}
		data := blobOf(t, avroEncoding{deflate: deflate}, msgs[:1], msgs[1:3], msgs[3:])
		dec, err := ocf.NewDecoder(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if string(dec.Metadata()["avro.schema"]) != IoTHubAvroSchema {
			t.Fatalf("schema %s", dec.Metadata()["avro.schema"])
		}
		n := 0
		for dec.HasNext() {
			var r readRecord
			if err := dec.Decode(&r); err != nil {
				t.Fatal(err)
			}
			m := msgs[n]
			if r.Properties["i"] != m.Properties["i"] || (r.AvroBody == nil) != (len(m.Body) == 0) || (r.AvroBody != nil && !bytes.Equal(*r.AvroBody, m.Body)) {
				t.Errorf("deflate=%v record %d: %+v", deflate, n, r)
			}
			n++
		}
		if dec.Error() != nil || n != len(msgs) {
			t.Fatalf("deflate=%v: %d records, %v", deflate, n, dec.Error())
		}
		// An empty blob (a quiet window) is a valid file with no records.
		dec, err = ocf.NewDecoder(bytes.NewReader(avroEncoding{deflate: deflate}.header([16]byte{1})))
		if err != nil || dec.HasNext() {
			t.Fatalf("empty blob: %v", err)
		}
	}
}

func TestJSONBlobBody(t *testing.T) {
	for _, tt := range []struct {
		name          string
		ct, ce        string
		body          string
		embedded      bool
		wantCanonical string
	}{
		{"json utf-8", "application/json", "utf-8", `{"a": 1, "b": [true, null]}`, true, `{"a":1,"b":[true,null]}`},
		{"charset parameter", "application/json;charset=utf-8", "", `{"a":"<&>"}`, true, `{"a":"<&>"}`},
		{"upper case", "Application/JSON", "UTF-8", `[1,2]`, true, `[1,2]`},
		{"pretty printed", "application/json", "utf-8", "{\n  \"a\": 1\n}\n", true, `{"a":1}`},
		{"no encoding", "application/json", "", `{"a":1}`, false, ""},
		{"utf-16", "application/json", "utf-16", `{"a":1}`, false, ""},
		{"not json", "application/json", "utf-8", `{"a":`, false, ""},
		{"text", "text/plain", "utf-8", `hello`, false, ""},
		{"none", "", "", "\x00\x01\xff", false, ""},
		{"empty", "application/json", "utf-8", "", false, ""},
	} {
		m := message.Message{Body: []byte(tt.body), System: map[string]string{}}
		if tt.ct != "" {
			m.System[message.SysContentType] = tt.ct
		}
		if tt.ce != "" {
			m.System[message.SysContentEncoding] = tt.ce
		}
		data := blobOf(t, jsonEncoding{}, []message.Message{m, m})
		lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
		if len(lines) != 2 {
			t.Fatalf("%s: %d lines: %s", tt.name, len(lines), data)
		}
		var r readRecord
		if err := json.Unmarshal(lines[0], &r); err != nil {
			t.Fatalf("%s: %v: %s", tt.name, err, lines[0])
		}
		if tt.embedded {
			if string(r.JSONBody) != tt.wantCanonical {
				t.Errorf("%s: body %s, want %s", tt.name, r.JSONBody, tt.wantCanonical)
			}
			continue
		}
		var s string
		if err := json.Unmarshal(r.JSONBody, &s); err != nil {
			t.Fatalf("%s: body %s is not a string", tt.name, r.JSONBody)
		}
		if b, err := base64.StdEncoding.DecodeString(s); err != nil || string(b) != tt.body {
			t.Errorf("%s: base64 body %q decodes to %q, %v", tt.name, s, b, err)
		}
		if !bytes.HasPrefix(lines[0], []byte(`{"EnqueuedTimeUtc":"0001-01-01T00:00:00.0000000Z","Properties":{},"SystemProperties":{`)) {
			t.Errorf("%s: field order or empty maps: %s", tt.name, lines[0])
		}
	}
}

// FuzzBlobRecord checks that any message survives both encodings.
func FuzzBlobRecord(f *testing.F) {
	f.Add([]byte(`{"a":1}`), "application/json", "utf-8", "k", "v", "message-id", "m1", int64(0))
	f.Add([]byte{0, 1, 2, 0xff}, "", "", "", "", "", "", int64(1700000000123456789))
	f.Add([]byte("line\nline"), "text/plain", "", "ü", "\x00", "iothub-connection-device-id", "d", int64(-1))
	f.Fuzz(func(t *testing.T, body []byte, ct, ce, pk, pv, sk, sv string, ns int64) {
		m := message.Message{Body: body, Properties: map[string]string{pk: pv}, System: map[string]string{sk: sv}, Enqueued: time.Unix(0, ns)}
		if ct != "" {
			m.System[message.SysContentType] = ct
		}
		if ce != "" {
			m.System[message.SysContentEncoding] = ce
		}
		// Avro strings must be valid UTF-8 to mean the same when read back.
		valid := func(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }
		if !valid(pk) || !valid(pv) || !valid(sk) || !valid(sv) || !valid(ct) || !valid(ce) {
			return
		}
		dec, err := ocf.NewDecoder(bytes.NewReader(blobOf(t, avroEncoding{deflate: ns%2 == 0}, []message.Message{m})))
		if err != nil {
			t.Fatal(err)
		}
		var r readRecord
		if !dec.HasNext() || dec.Decode(&r) != nil {
			t.Fatalf("avro: %v", dec.Error())
		}
		if r.Properties[pk] != pv || (r.AvroBody == nil) != (len(body) == 0) || (r.AvroBody != nil && !bytes.Equal(*r.AvroBody, body)) {
			t.Fatalf("avro record %+v", r)
		}
		line := blobOf(t, jsonEncoding{}, []message.Message{m})
		if bytes.Count(line, []byte("\n")) != 1 || line[len(line)-1] != '\n' {
			t.Fatalf("json record is not one line: %q", line)
		}
		var j readRecord
		if err := json.Unmarshal(line, &j); err != nil {
			t.Fatalf("json: %v: %s", err, line)
		}
		if j.Properties[pk] != pv || j.EnqueuedTimeUtc != r.EnqueuedTimeUtc {
			t.Fatalf("json record %+v", j)
		}
		var s string
		if json.Unmarshal(j.JSONBody, &s) == nil {
			if b, err := base64.StdEncoding.DecodeString(s); err != nil || !bytes.Equal(b, body) {
				t.Fatalf("json base64 body %q", s)
			}
		} else if !json.Valid(j.JSONBody) || !json.Valid(body) {
			t.Fatalf("json body %s", j.JSONBody)
		}
	})
}

func TestStorageErrorsHideSAS(t *testing.T) {
	// A closed loopback port: every request fails in the transport, whose
	// error would carry the request URL with its SAS.
	cfg := StorageContainerConfig{Name: "s", ContainerName: "telemetry", Timeout: 2 * time.Second,
		ConnectionString: "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;SharedAccessSignature=sv=2022-11-02&sr=c&sp=rw&sig=U0VDUkVU"}
	s, err := NewStorageContainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Stage(context.Background(), []message.Message{{Body: []byte("x")}})
	if err == nil || strings.Contains(err.Error(), "U0VDUkVU") || strings.Contains(err.Error(), "sig=") {
		t.Fatalf("error %v", err)
	}
	if err := s.Flush(context.Background()); err != nil && strings.Contains(err.Error(), "U0VDUkVU") {
		t.Fatalf("flush error %v", err)
	}
}
