package endpoint

import (
	"bytes"
	"compress/flate"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hamba/avro/v2"
	"github.com/hamba/avro/v2/ocf"

	"github.com/moat-iot/moat/internal/message"
)

// This file holds what a storage endpoint writes: blob names from IoT Hub's
// fileNameFormat, and blob contents in IoT Hub's Avro, AvroDeflate and JSON
// encodings.

// DefaultFileNameFormat is IoT Hub's default blob name format. IoT Hub adds
// no extension to blob names, and neither does Moat: Microsoft's routing
// tutorial gives "ContosoTestHub/0/2018/10/30/10/56" as the name of an Avro
// blob, and its ARM template how-to (MicrosoftDocs/azure-docs,
// articles/iot-hub/how-to-routing-arm.md) writes ".avro" into
// fileNameFormat itself ("{iothub}/…/{mm}.avro") for blobs to have one.
const DefaultFileNameFormat = "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}"

// fileNameTokens are the tokens a fileNameFormat must contain, each at least
// once, in any order (IoT Hub: "All parameters are mandatory but can be
// reordered"). They are case-sensitive: {MM} is the month, {mm} the minute.
var fileNameTokens = []string{"{iothub}", "{partition}", "{YYYY}", "{MM}", "{DD}", "{HH}", "{mm}"}

// maxBlobName is Azure's limit on a blob name, in characters.
const maxBlobName = 1024

// fileNameFormat is a parsed fileNameFormat: literal text and tokens.
type fileNameFormat struct {
	parts []fileNamePart
	// ext is where a chunk suffix goes in the text after the last token: at
	// its last '.' after its last '/', or at its end (see withChunk).
	ext string
}

type fileNamePart struct {
	token string // one of fileNameTokens, or "" for literal text
	text  string
}

// parseFileNameFormat checks a fileNameFormat and parses it. An empty format
// is IoT Hub's default.
func parseFileNameFormat(s string) (fileNameFormat, error) {
	if s == "" {
		s = DefaultFileNameFormat
	}
	if len(s) > maxBlobName/2 {
		return fileNameFormat{}, fmt.Errorf("is %d characters; keep it under %d so that names stay within Azure's %d", len(s), maxBlobName/2, maxBlobName)
	}
	if !utf8.ValidString(s) {
		return fileNameFormat{}, fmt.Errorf("is not valid UTF-8")
	}
	var f fileNameFormat
	seen := map[string]bool{}
	rest := s
	for rest != "" {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			f.parts = append(f.parts, fileNamePart{text: rest})
			break
		}
		if open > 0 {
			f.parts = append(f.parts, fileNamePart{text: rest[:open]})
		}
		if rest[open] == '}' {
			return fileNameFormat{}, fmt.Errorf("has a '}' without '{' at %q", clip(rest[open:]))
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return fileNameFormat{}, fmt.Errorf("has an unclosed '{' at %q", clip(rest[open:]))
		}
		tok := rest[open : open+end+1]
		known := false
		for _, t := range fileNameTokens {
			known = known || t == tok
		}
		if !known {
			return fileNameFormat{}, fmt.Errorf("has unknown token %q; the tokens are %s", clip(tok), strings.Join(fileNameTokens, " "))
		}
		seen[tok] = true
		f.parts = append(f.parts, fileNamePart{token: tok})
		rest = rest[open+end+1:]
	}
	var missing []string
	for _, t := range fileNameTokens {
		if !seen[t] {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fileNameFormat{}, fmt.Errorf("must contain every one of %s (in any order); missing %s", strings.Join(fileNameTokens, " "), strings.Join(missing, " "))
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return fileNameFormat{}, fmt.Errorf("has a control character or backslash")
		}
	}
	for _, seg := range strings.Split(s, "/") {
		switch seg {
		case "":
			return fileNameFormat{}, fmt.Errorf("has an empty path segment (a leading, trailing or doubled '/')")
		case ".", "..":
			return fileNameFormat{}, fmt.Errorf("has a %q path segment", seg)
		}
	}
	if strings.HasSuffix(s, ".") {
		return fileNameFormat{}, fmt.Errorf("ends with '.', which Azure advises against")
	}
	if last := f.parts[len(f.parts)-1]; last.token == "" {
		f.ext = last.text
		if i := strings.LastIndexByte(f.ext, '/'); i >= 0 {
			f.ext = f.ext[i+1:]
		}
		if i := strings.LastIndexByte(f.ext, '.'); i >= 0 {
			f.ext = f.ext[i:]
		} else {
			f.ext = ""
		}
	}
	return f, nil
}

func clip(s string) string {
	if len(s) > 20 {
		return s[:20] + "…"
	}
	return s
}

// render returns the blob name for a window starting at t (in UTC).
// {partition} is always 0: Moat keeps one durable log, where IoT Hub has one
// per partition of its built-in Event Hub.
func (f fileNameFormat) render(hub string, t time.Time) string {
	t = t.UTC()
	var b strings.Builder
	for _, p := range f.parts {
		switch p.token {
		case "":
			b.WriteString(p.text)
		case "{iothub}":
			b.WriteString(hub)
		case "{partition}":
			b.WriteString("0")
		case "{YYYY}":
			fmt.Fprintf(&b, "%04d", t.Year())
		case "{MM}":
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case "{DD}":
			fmt.Fprintf(&b, "%02d", t.Day())
		case "{HH}":
			fmt.Fprintf(&b, "%02d", t.Hour())
		case "{mm}":
			fmt.Fprintf(&b, "%02d", t.Minute())
		}
	}
	return b.String()
}

// withChunk names the chunk'th blob of a window whose first blob is name. A
// window gets more than one blob when a blob reaches maxChunkSizeInBytes (or
// Azure's block limit) before the window ends, and when windows shorter than
// a minute share a {mm}. The first keeps IoT Hub's name; later ones get
// "_1", "_2", … before the extension (".avro" in "{mm}.avro"), or at the end
// when the format has none.
func (f fileNameFormat) withChunk(name string, chunk int) string {
	if chunk == 0 {
		return name
	}
	base := strings.TrimSuffix(name, f.ext)
	return base + "_" + strconv.Itoa(chunk) + f.ext
}

// Encodings, as IoT Hub spells them; the configuration matches them
// case-insensitively, as IoT Hub does ("avro", "avrodeflate", "JSON").
const (
	EncodingAvro        = "Avro"
	EncodingAvroDeflate = "AvroDeflate"
	EncodingJSON        = "JSON"
)

// parseEncoding returns the canonical spelling of an encoding; empty is Avro.
func parseEncoding(s string) (string, error) {
	for _, e := range []string{EncodingAvro, EncodingAvroDeflate, EncodingJSON} {
		if strings.EqualFold(s, e) {
			return e, nil
		}
	}
	if s == "" {
		return EncodingAvro, nil
	}
	return "", fmt.Errorf("%q is not Avro, AvroDeflate or JSON", clip(s))
}

// blobEncoding turns messages into blob bytes. A blob is header, then blocks;
// each block is a pure function of its records and the blob's sync marker, so
// that a block whose upload failed can be built and staged again.
type blobEncoding interface {
	// header starts a blob (nil when the encoding has none).
	header(sync [16]byte) []byte
	// record encodes one message.
	record(m message.Message) ([]byte, error)
	// block frames encoded records.
	block(recs [][]byte, sync [16]byte) ([]byte, error)
}

func newBlobEncoding(encoding string) blobEncoding {
	switch encoding {
	case EncodingJSON:
		return jsonEncoding{}
	case EncodingAvroDeflate:
		return avroEncoding{deflate: true}
	default:
		return avroEncoding{}
	}
}

// IoTHubAvroSchema is the schema of IoT Hub's routed-message Avro files, as
// Microsoft documents it for reading them back
// (MicrosoftDocs/azure-docs, articles/iot-hub/iot-hub-query-avro-data.md):
// record Microsoft.Azure.Devices.Message; Body may be null.
const IoTHubAvroSchema = `{"type":"record","name":"Message","namespace":"Microsoft.Azure.Devices","fields":[` +
	`{"name":"EnqueuedTimeUtc","type":"string"},` +
	`{"name":"Properties","type":{"type":"map","values":"string"}},` +
	`{"name":"SystemProperties","type":{"type":"map","values":"string"}},` +
	`{"name":"Body","type":["null","bytes"]}]}`

var iotHubAvroSchema = avro.MustParse(IoTHubAvroSchema)

// avroRecord is one routed message in IoT Hub's Avro schema.
type avroRecord struct {
	EnqueuedTimeUtc  string            `avro:"EnqueuedTimeUtc"`
	Properties       map[string]string `avro:"Properties"`
	SystemProperties map[string]string `avro:"SystemProperties"`
	Body             *[]byte           `avro:"Body"`
}

// avroEncoding writes an Avro Object Container File
// (https://avro.apache.org/docs/current/specification/#object-container-files):
// a header with the schema, codec and a 16-byte sync marker, then data
// blocks of (record count, byte size, records, sync marker). Each staged
// Azure block holds whole Avro blocks, the first one the header too, so the
// committed blob is a valid file whatever the number of stages.
type avroEncoding struct{ deflate bool }

func (e avroEncoding) header(sync [16]byte) []byte {
	codec := "null"
	if e.deflate {
		codec = "deflate"
	}
	h := ocf.Header{
		Magic: [4]byte{'O', 'b', 'j', 1},
		Meta:  map[string][]byte{"avro.schema": []byte(IoTHubAvroSchema), "avro.codec": []byte(codec)},
		Sync:  sync,
	}
	b, err := avro.Marshal(ocf.HeaderSchema, h)
	if err != nil {
		panic(fmt.Sprintf("avro header: %v", err)) // a constant header always encodes
	}
	return b
}

func (avroEncoding) record(m message.Message) ([]byte, error) {
	r := avroRecord{
		EnqueuedTimeUtc:  enqueuedTimeUTC(m),
		Properties:       m.Properties,
		SystemProperties: blobSystemProperties(m),
	}
	if r.Properties == nil {
		r.Properties = map[string]string{}
	}
	if len(m.Body) > 0 {
		r.Body = &m.Body
	}
	b, err := avro.Marshal(iotHubAvroSchema, r)
	if err != nil {
		return nil, fmt.Errorf("avro record: %w", err)
	}
	return b, nil
}

func (e avroEncoding) block(recs [][]byte, sync [16]byte) ([]byte, error) {
	var data []byte
	if e.deflate {
		// Avro's deflate codec is raw RFC 1951 deflate, without zlib framing.
		var z bytes.Buffer
		zw, err := flate.NewWriter(&z, flate.DefaultCompression)
		if err != nil {
			return nil, fmt.Errorf("deflate: %w", err)
		}
		for _, r := range recs {
			if _, err := zw.Write(r); err != nil {
				return nil, fmt.Errorf("deflate: %w", err)
			}
		}
		if err := zw.Close(); err != nil {
			return nil, fmt.Errorf("deflate: %w", err)
		}
		data = z.Bytes()
	} else {
		for _, r := range recs {
			data = append(data, r...)
		}
	}
	var out bytes.Buffer
	w := avro.NewWriter(&out, 32)
	w.WriteLong(int64(len(recs)))
	w.WriteLong(int64(len(data)))
	if err := w.Flush(); err != nil {
		return nil, fmt.Errorf("avro block: %w", err)
	}
	out.Write(data)
	out.Write(sync[:])
	return out.Bytes(), nil
}

// jsonEncoding writes one JSON object per message, each on its own line, as
// IoT Hub does: {"EnqueuedTimeUtc","Properties","SystemProperties","Body"}.
// Body is the message's own JSON when it is declared application/json in
// UTF-8 (and is valid JSON), otherwise its bytes in base64. Observed IoT Hub
// output: the enriched-message sample in MicrosoftDocs/azure-docs
// articles/iot-hub/tutorial-message-enrichments.md (no content type, Body
// base64) and IoT Hub output quoted in user projects on GitHub (contentType
// "application/json;charset=utf-8", Body embedded as an object). IoT Hub's
// docs ask for contentType application/json and contentEncoding UTF-8 for
// JSON encoding for this reason.
type jsonEncoding struct{}

func (jsonEncoding) header([16]byte) []byte { return nil }

// jsonRecord keeps IoT Hub's field order.
type jsonRecord struct {
	EnqueuedTimeUtc  string            `json:"EnqueuedTimeUtc"`
	Properties       map[string]string `json:"Properties"`
	SystemProperties map[string]string `json:"SystemProperties"`
	Body             json.RawMessage   `json:"Body"`
}

func (jsonEncoding) record(m message.Message) ([]byte, error) {
	r := jsonRecord{
		EnqueuedTimeUtc:  enqueuedTimeUTC(m),
		Properties:       m.Properties,
		SystemProperties: blobSystemProperties(m),
	}
	if r.Properties == nil {
		r.Properties = map[string]string{}
	}
	if jsonBody(m) {
		r.Body = m.Body
	} else {
		r.Body = json.RawMessage(strconv.Quote(base64.StdEncoding.EncodeToString(m.Body)))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // keep bodies and properties as sent
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("json record: %w", err)
	}
	return buf.Bytes(), nil // Encode ends the line
}

func (jsonEncoding) block(recs [][]byte, _ [16]byte) ([]byte, error) {
	return bytes.Join(recs, nil), nil
}

// jsonBody says whether a message's body goes into a JSON blob as JSON.
func jsonBody(m message.Message) bool {
	mt, params, err := mime.ParseMediaType(m.System[message.SysContentType])
	if err != nil || mt != "application/json" {
		return false
	}
	enc := m.System[message.SysContentEncoding]
	if enc == "" {
		enc = params["charset"]
	}
	if !strings.EqualFold(enc, "utf-8") && !strings.EqualFold(enc, "utf8") {
		return false
	}
	// encoding/json compacts the embedded body, so a record stays one line.
	return json.Valid(m.Body)
}

// dotNetUTC is how IoT Hub writes times in routed blobs: .NET's round-trip
// format with seven fractional digits, "2019-05-10T06:06:32.7220000Z".
const dotNetUTC = "2006-01-02T15:04:05.0000000Z"

func enqueuedTimeUTC(m message.Message) string {
	t := m.Enqueued
	if t.IsZero() {
		if p, err := time.Parse(time.RFC3339Nano, m.System[message.SysEnqueuedTime]); err == nil {
			t = p
		}
	}
	return t.UTC().Format(dotNetUTC)
}

// blobSystemPropertyNames maps Moat's (AMQP-style) system property names to
// the names IoT Hub writes in routed blobs' SystemProperties — the names of
// its routing query ($connectionDeviceId, …), as in the samples cited above
// and in Azure IoT Edge's routing core (Microsoft.Azure.Devices.Routing.Core
// SystemProperties). Names without an IoT Hub counterpart are kept as they
// are.
var blobSystemPropertyNames = map[string]string{
	message.SysMessageID:         "messageId",
	message.SysCorrelationID:     "correlationId",
	message.SysUserID:            "userId",
	message.SysTo:                "to",
	message.SysContentType:       "contentType",
	message.SysContentEncoding:   "contentEncoding",
	message.SysConnectionDevice:  "connectionDeviceId",
	message.SysConnectionModule:  "connectionModuleId",
	message.SysConnectionAuthGen: "connectionDeviceGenerationId",
	message.SysConnectionAuth:    "connectionAuthMethod",
	message.SysEnqueuedTime:      "enqueuedTime",
}

func blobSystemProperties(m message.Message) map[string]string {
	out := make(map[string]string, len(m.System))
	for k, v := range m.System {
		if n, ok := blobSystemPropertyNames[k]; ok {
			k = n
		}
		out[k] = v
	}
	if _, ok := m.System[message.SysEnqueuedTime]; ok {
		out["enqueuedTime"] = enqueuedTimeUTC(m)
	}
	return out
}
