package endpoint

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/moat-iot/moat/internal/message"
)

// StorageContainerConfig is IoT Hub's storage container routing endpoint
// (RoutingStorageContainerProperties), with its property names:
//
//	storageContainers:
//	- name: archive
//	  connectionString: "DefaultEndpointsProtocol=https;AccountName=plant;AccountKey=...;EndpointSuffix=core.windows.net"
//	  containerName: telemetry
//	  encoding: JSON
//
// Messages are batched into one blob per batch window, as IoT Hub does:
// a blob is committed when the window ends, or earlier when it would exceed
// maxChunkSizeInBytes. batchFrequencyInSeconds ranges from 1 to 720 seconds
// where IoT Hub's floor is 60: a private deployment may want blobs sooner and
// pay for the extra storage transactions. maxChunkSizeInBytes ranges from
// 1 MiB (IoT Hub: 10 MiB) to 500 MiB. The container is created if missing.
type StorageContainerConfig struct {
	Name string `json:"name"`
	// ConnectionString is the storage account's; it is a secret and never
	// logged. Account key and SAS connection strings both work.
	ConnectionString string `json:"connectionString,omitempty"`
	ContainerName    string `json:"containerName"`
	// FileNameFormat names blobs; default DefaultFileNameFormat. It must hold
	// every token; IoT Hub adds no extension, so add ".avro" or ".json" to
	// the format if consumers need one.
	FileNameFormat          string `json:"fileNameFormat,omitempty"`
	BatchFrequencyInSeconds int    `json:"batchFrequencyInSeconds,omitempty"`
	MaxChunkSizeInBytes     int64  `json:"maxChunkSizeInBytes,omitempty"`
	// Encoding is Avro (default), AvroDeflate or JSON, case-insensitive.
	Encoding string `json:"encoding,omitempty"`
	// AuthenticationType is keyBased (default); identityBased is refused
	// until Moat has managed identities.
	AuthenticationType string `json:"authenticationType,omitempty"`
	// EndpointURI is the account's blob endpoint
	// ("https://<account>.blob.core.windows.net/"), needed by identityBased;
	// with keyBased it may be left out and must match the connection string
	// when given.
	EndpointURI string           `json:"endpointUri,omitempty"`
	Identity    *StorageIdentity `json:"identity,omitempty"`

	// HubName is {iothub} in blob names; the hub sets it.
	HubName string `json:"-"`
	// Timeout bounds one storage request (default 2 minutes).
	Timeout time.Duration `json:"-"`
	// transport replaces the HTTP client (tests).
	transport policy.Transporter
}

// StorageIdentity is IoT Hub's managed identity choice for identityBased
// authentication; empty means the system-assigned identity.
type StorageIdentity struct {
	UserAssignedIdentity string `json:"userAssignedIdentity,omitempty"`
}

// Storage endpoint defaults and limits.
const (
	DefaultBatchFrequencyInSeconds = 300
	DefaultMaxChunkSizeInBytes     = 314572800
	MinBatchFrequencyInSeconds     = 1
	MaxBatchFrequencyInSeconds     = 720
	MinMaxChunkSizeInBytes         = 1 << 20
	MaxMaxChunkSizeInBytes         = 524288000
	// maxBlobBlocks is Azure's limit on committed blocks per block blob.
	maxBlobBlocks = 50000
	// blockTarget is the size of a staged block. Staging is not what makes
	// delivery durable (the log is, until the blob is committed), so records
	// are buffered and sent in blocks of this size: one request per worker
	// batch would bound an endpoint to a few thousand messages a second over
	// a WAN. Azure takes blocks of 4 MiB and more at its high-throughput rate.
	blockTarget = 4 << 20
	// defaultHubName stands in for {iothub} when the hub did not say.
	defaultHubName = "moat"
)

// LogValue keeps the connection string out of logs.
func (c StorageContainerConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", c.Name), slog.String("containerName", c.ContainerName),
		slog.String("endpointUri", c.EndpointURI), slog.String("encoding", c.Encoding))
}

// StorageConfigError is one problem in a storage container endpoint's
// configuration, naming its field ("fileNameFormat"), for the config package
// to prefix with the endpoint's path.
type StorageConfigError struct {
	Field string
	Msg   string
}

func (e *StorageConfigError) Error() string { return e.Field + ": " + e.Msg }

// containerNameRE is Azure's rule for container names: 3-63 lowercase
// letters, digits and single hyphens, starting and ending with a letter or
// digit ($root and $web are special containers IoT Hub cannot write to).
var containerNameRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$`)

// storageContainer is a configuration resolved to what the sink needs.
type storageContainer struct {
	format    fileNameFormat
	encoding  string
	window    time.Duration
	maxChunk  int64
	conn      StorageConnectionString
	container string
}

// resolve checks c and resolves it, collecting every problem.
func (c StorageContainerConfig) resolve() (storageContainer, []*StorageConfigError) {
	var out []*StorageConfigError
	bad := func(field, format string, args ...any) {
		out = append(out, &StorageConfigError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	var r storageContainer
	if !containerNameRE.MatchString(c.ContainerName) {
		bad("containerName", "%q is not a container name: 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit", clip(c.ContainerName))
	}
	r.container = c.ContainerName
	var err error
	if r.format, err = parseFileNameFormat(c.FileNameFormat); err != nil {
		bad("fileNameFormat", "%v", err)
	}
	if r.encoding, err = parseEncoding(c.Encoding); err != nil {
		bad("encoding", "%v", err)
	}
	switch f := c.BatchFrequencyInSeconds; {
	case f == 0:
		r.window = DefaultBatchFrequencyInSeconds * time.Second
	case f < MinBatchFrequencyInSeconds || f > MaxBatchFrequencyInSeconds:
		bad("batchFrequencyInSeconds", "%d is outside %d to %d", f, MinBatchFrequencyInSeconds, MaxBatchFrequencyInSeconds)
	default:
		r.window = time.Duration(f) * time.Second
	}
	switch n := c.MaxChunkSizeInBytes; {
	case n == 0:
		r.maxChunk = DefaultMaxChunkSizeInBytes
	case n < MinMaxChunkSizeInBytes || n > MaxMaxChunkSizeInBytes:
		bad("maxChunkSizeInBytes", "%d is outside %d to %d", n, MinMaxChunkSizeInBytes, MaxMaxChunkSizeInBytes)
	default:
		r.maxChunk = n
	}
	switch {
	case strings.EqualFold(c.AuthenticationType, IdentityBased):
		bad("authenticationType", "identityBased is not available yet (identity-based authentication needs managed identities, which Moat does not have); use keyBased with a connectionString")
		return r, out
	case c.AuthenticationType != "" && !strings.EqualFold(c.AuthenticationType, KeyBased):
		bad("authenticationType", "%q is not keyBased or identityBased", clip(c.AuthenticationType))
		return r, out
	}
	if c.Identity != nil {
		bad("identity", "is used only with authenticationType identityBased")
	}
	if c.ConnectionString == "" {
		bad("connectionString", "is required with keyBased authentication")
		return r, out
	}
	if r.conn, err = ParseStorageConnectionString(c.ConnectionString); err != nil {
		bad("connectionString", "%s", strings.TrimPrefix(err.Error(), "connection string: "))
		return r, out
	}
	if c.EndpointURI != "" {
		u, err := blobEndpoint(c.EndpointURI)
		switch {
		case err != nil:
			bad("endpointUri", "%v", err)
		case !sameEndpoint(u, r.conn.BlobEndpoint):
			bad("endpointUri", "%q does not match the connection string's blob endpoint %q", u.Redacted(), r.conn.BlobEndpoint.Redacted())
		}
	}
	return r, out
}

func sameEndpoint(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Host, b.Host) &&
		strings.TrimSuffix(a.Path, "/") == strings.TrimSuffix(b.Path, "/")
}

// Problems lists everything wrong with c except its name (which the config
// package checks across all endpoints).
func (c StorageContainerConfig) Problems() []*StorageConfigError {
	_, ps := c.resolve()
	return ps
}

// StorageConnectionString is a parsed Azure Storage connection string, as
// https://learn.microsoft.com/azure/storage/common/storage-configure-connection-string
// describes it: AccountName and AccountKey, or SharedAccessSignature; the
// blob endpoint from BlobEndpoint, or from DefaultEndpointsProtocol,
// AccountName and EndpointSuffix; or UseDevelopmentStorage=true for Azurite
// on its default port. Keys are matched case-insensitively; keys for other
// services (QueueEndpoint, …) are ignored.
type StorageConnectionString struct {
	BlobEndpoint *url.URL
	AccountName  string
	// AccountKey (base64) and SharedAccessSignature are secrets.
	AccountKey            string
	SharedAccessSignature string
}

// LogValue keeps the key and signature out of logs.
func (c StorageConnectionString) LogValue() slog.Value {
	ep := ""
	if c.BlobEndpoint != nil {
		ep = c.BlobEndpoint.Redacted()
	}
	return slog.GroupValue(slog.String("blobEndpoint", ep), slog.String("accountName", c.AccountName))
}

// Azurite's well-known development account (public, documented by Microsoft).
const (
	devStoreAccount = "devstoreaccount1"
	devStoreKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// ParseStorageConnectionString parses s. Its errors never quote the key or
// the signature.
func ParseStorageConnectionString(s string) (StorageConnectionString, error) {
	var c StorageConnectionString
	kv := map[string]string{}
	for i, seg := range strings.Split(s, ";") {
		if strings.TrimSpace(seg) == "" {
			continue // a trailing ';' is common
		}
		k, v, ok := strings.Cut(seg, "=") // values (base64 keys, SAS) hold '='
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return c, fmt.Errorf("connection string: part %d is not Key=Value", i+1)
		}
		lk := strings.ToLower(k)
		switch lk {
		case "defaultendpointsprotocol", "accountname", "accountkey", "endpointsuffix", "blobendpoint", "sharedaccesssignature", "usedevelopmentstorage":
		default:
			continue
		}
		if _, dup := kv[lk]; dup {
			return c, fmt.Errorf("connection string: %s is given twice", k)
		}
		if v == "" {
			return c, fmt.Errorf("connection string: %s is empty", k)
		}
		kv[lk] = v
	}
	if dev, ok := kv["usedevelopmentstorage"]; ok {
		if !strings.EqualFold(dev, "true") {
			return c, fmt.Errorf("connection string: UseDevelopmentStorage must be true when given")
		}
		if len(kv) > 1 {
			return c, fmt.Errorf("connection string: UseDevelopmentStorage=true takes no other keys")
		}
		u, _ := url.Parse("http://127.0.0.1:10000/" + devStoreAccount)
		return StorageConnectionString{BlobEndpoint: u, AccountName: devStoreAccount, AccountKey: devStoreKey}, nil
	}
	c.AccountName, c.AccountKey, c.SharedAccessSignature = kv["accountname"], kv["accountkey"], kv["sharedaccesssignature"]
	if ep, ok := kv["blobendpoint"]; ok {
		u, err := blobEndpoint(ep)
		if err != nil {
			return StorageConnectionString{}, fmt.Errorf("connection string: BlobEndpoint: %w", err)
		}
		c.BlobEndpoint = u
	} else {
		if c.AccountName == "" {
			return StorageConnectionString{}, fmt.Errorf("connection string: needs BlobEndpoint or AccountName")
		}
		if !accountNameRE.MatchString(c.AccountName) {
			return StorageConnectionString{}, fmt.Errorf("connection string: AccountName %q is not 3 to 24 lowercase letters and digits", clip(c.AccountName))
		}
		proto := strings.ToLower(kv["defaultendpointsprotocol"])
		switch proto {
		case "":
			proto = "https"
		case "http", "https":
		default:
			return StorageConnectionString{}, fmt.Errorf("connection string: DefaultEndpointsProtocol must be http or https")
		}
		suffix := kv["endpointsuffix"]
		if suffix == "" {
			suffix = "core.windows.net"
		}
		u, err := blobEndpoint(proto + "://" + c.AccountName + ".blob." + suffix)
		if err != nil {
			return StorageConnectionString{}, fmt.Errorf("connection string: EndpointSuffix: %w", err)
		}
		c.BlobEndpoint = u
	}
	switch {
	case c.AccountKey != "":
		if c.AccountName == "" {
			return StorageConnectionString{}, fmt.Errorf("connection string: AccountKey needs AccountName")
		}
		if _, err := base64.StdEncoding.DecodeString(c.AccountKey); err != nil {
			return StorageConnectionString{}, fmt.Errorf("connection string: AccountKey is not base64")
		}
	case c.SharedAccessSignature != "":
		if _, err := url.ParseQuery(strings.TrimPrefix(c.SharedAccessSignature, "?")); err != nil {
			return StorageConnectionString{}, fmt.Errorf("connection string: SharedAccessSignature is not a query string")
		}
	default:
		return StorageConnectionString{}, fmt.Errorf("connection string: needs AccountName and AccountKey, or SharedAccessSignature")
	}
	return c, nil
}

var accountNameRE = regexp.MustCompile(`^[a-z0-9]{3,24}$`)

// blobEndpoint checks a blob service URL: http(s), a host, no query, no
// credentials. A path is allowed: Azurite and other emulators put the
// account there.
func blobEndpoint(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, errors.New("is not a URL") // unquoted: it might hold a secret
	}
	shown := u.Redacted()
	if !strings.EqualFold(u.Scheme, "https") && !strings.EqualFold(u.Scheme, "http") {
		return nil, fmt.Errorf("%q must start with https:// or http://", clip(shown))
	}
	if u.Hostname() == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("%q must be http(s)://<host>[/path] without credentials or query", clip(shown))
	}
	return u, nil
}

// storageContainerClient builds the authenticated container client. It is the
// one place where authentication is chosen: identityBased will build an
// azcore.TokenCredential (azidentity's managed identity) here and pass it to
// container.NewClient with the endpointUri.
func storageContainerClient(r storageContainer, opts *container.ClientOptions) (*container.Client, error) {
	u := *r.conn.BlobEndpoint
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + r.container
	if r.conn.AccountKey != "" {
		cred, err := container.NewSharedKeyCredential(r.conn.AccountName, r.conn.AccountKey)
		if err != nil {
			return nil, errors.New("account key rejected") // the SDK's error could echo the key
		}
		return container.NewClientWithSharedKeyCredential(u.String(), cred, opts)
	}
	u.RawQuery = strings.TrimPrefix(r.conn.SharedAccessSignature, "?")
	return container.NewClientWithNoCredential(u.String(), opts)
}

// StorageContainer is a Batcher that writes routed messages to block blobs:
// Stage encodes messages and uploads them in Azure blocks (StageBlock) of
// about blockTarget bytes, each holding one Avro block (the first also the
// file header) or whole JSON lines, and Flush uploads the rest and commits
// the blob's block list (CommitBlockList), which is when the blob appears,
// complete. A blob is never overwritten: its
// name is probed before the first block and the commit requires that no blob
// of that name exists.
//
// When a window passes without messages, Flush writes an empty blob (an Avro
// file with no records, or an empty JSON blob), as IoT Hub does, so that
// consumers can tell a quiet window from a missing one. It costs one small
// write per window (with a 1 s window, one a second): the price of the
// short windows Moat allows.
type StorageContainer struct {
	name     string
	hub      string
	cfg      storageContainer
	enc      blobEncoding
	client   *container.Client
	timeout  time.Duration
	now      func() time.Time
	maxBlock int // blocks per blob; Azure's limit, lower in tests
	// blockTarget is how many encoded bytes are buffered before they are
	// staged as one block (lower in tests).
	blockTarget int

	mu      sync.Mutex
	created bool
	// The current batch window is [winStart, winEnd); winData says a blob
	// was committed in it (so no empty blob is due at its end).
	winStart, winEnd time.Time
	winData          bool
	unit             *blobUnit
	// lastBase and lastChunk remember the latest name used, so that the next
	// blob of the same window (or minute) starts probing after it.
	lastBase  string
	lastChunk int
}

// blobUnit is the blob being written: staged blocks not yet committed, and
// encoded records not yet staged.
type blobUnit struct {
	name    string
	client  *blockblob.Client
	idBase  [12]byte // random; the block index fills the last four bytes
	sync    [16]byte
	blocks  []string
	size    int64 // bytes staged
	records int   // messages taken, staged or buffered
	buf     [][]byte
	bufSize int64
}

// NewStorageContainer returns a storage container sink. It does not reach the
// storage account until the first Stage or Flush.
func NewStorageContainer(cfg StorageContainerConfig) (*StorageContainer, error) {
	r, ps := cfg.resolve()
	if len(ps) > 0 {
		errs := make([]error, len(ps))
		for i, p := range ps {
			errs[i] = p
		}
		return nil, fmt.Errorf("storage container endpoint %s: %w", cfg.Name, errors.Join(errs...))
	}
	client, err := storageContainerClient(r, &container.ClientOptions{ClientOptions: azcore.ClientOptions{
		// The worker retries with its own backoff and keeps the health;
		// SDK-level retries would only hide failures from it.
		Retry:     policy.RetryOptions{MaxRetries: -1},
		Transport: cfg.transport,
	}})
	if err != nil {
		return nil, fmt.Errorf("storage container endpoint %s: %w", cfg.Name, err)
	}
	s := &StorageContainer{
		name: cfg.Name, hub: cfg.HubName, cfg: r, enc: newBlobEncoding(r.encoding),
		client: client, timeout: cfg.Timeout, now: time.Now, maxBlock: maxBlobBlocks, blockTarget: blockTarget,
	}
	if s.hub == "" {
		s.hub = defaultHubName
	}
	if s.timeout <= 0 {
		s.timeout = 2 * time.Minute
	}
	return s, nil
}

// opError reports a failed storage operation: what, on which blob, and the
// cause in one line — the status and Azure error code for an answer from the
// service, the cause's text with any URL query (a SAS) cut out otherwise.
// It unwraps to the cause, for bloberror.HasCode.
type opError struct {
	msg   string
	cause error
}

func (e *opError) Error() string { return e.msg }
func (e *opError) Unwrap() error { return e.cause }

var urlQuery = regexp.MustCompile(`\?[^\s"']*`)

func (s *StorageContainer) opError(what string, cause error) error {
	var re *azcore.ResponseError
	detail := ""
	if errors.As(cause, &re) {
		detail = fmt.Sprintf("HTTP %d %s", re.StatusCode, re.ErrorCode)
	} else {
		detail = urlQuery.ReplaceAllString(cause.Error(), "?…")
	}
	return &opError{msg: fmt.Sprintf("storage container endpoint %s: %s: %s", s.name, what, detail), cause: cause}
}

func (s *StorageContainer) errorf(format string, args ...any) error {
	return fmt.Errorf("storage container endpoint %s: "+format, append([]any{s.name}, args...)...)
}

// ensureWindowLocked starts the first window, when the worker first asks.
func (s *StorageContainer) ensureWindowLocked(now time.Time) {
	if s.winEnd.IsZero() {
		s.winStart, s.winEnd = now, now.Add(s.cfg.window)
	}
}

// nextWindowLocked moves past the current window when it has ended. Windows
// follow each other without gaps unless the endpoint fell behind by a whole
// window (an outage), when the next one starts now.
func (s *StorageContainer) nextWindowLocked(now time.Time) {
	if now.Before(s.winEnd) {
		return
	}
	s.winStart, s.winEnd, s.winData = s.winEnd, s.winEnd.Add(s.cfg.window), false
	if !now.Before(s.winEnd) {
		s.winStart, s.winEnd = now, now.Add(s.cfg.window)
	}
}

// ensureContainerLocked creates the container once. A SAS scoped to the
// container may not create it: then it must exist already, and the blob
// requests will say if it does not.
func (s *StorageContainer) ensureContainerLocked(ctx context.Context) error {
	if s.created {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, err := s.client.Create(ctx, nil)
	if err != nil && !bloberror.HasCode(err, bloberror.ContainerAlreadyExists, bloberror.AuthorizationFailure, bloberror.AuthorizationPermissionMismatch) {
		return s.opError("create container "+s.cfg.container, err)
	}
	s.created = true
	return nil
}

// containerGoneLocked notes a container deleted behind the sink's back, so
// that the next attempt creates it again.
func (s *StorageContainer) containerGoneLocked(err error) {
	if bloberror.HasCode(err, bloberror.ContainerNotFound) {
		s.created = false
	}
}

// newUnitLocked chooses the next unused blob name of the current window.
func (s *StorageContainer) newUnitLocked(ctx context.Context) (*blobUnit, error) {
	base := s.cfg.format.render(s.hub, s.winStart)
	chunk := 0
	if base == s.lastBase {
		chunk = s.lastChunk + 1
	}
	const maxProbes = 1000
	for i := 0; ; i++ {
		if i == maxProbes {
			return nil, s.errorf("%d blobs named %s already exist", maxProbes, base)
		}
		name := s.cfg.format.withChunk(base, chunk)
		bc := s.client.NewBlockBlobClient(name)
		pctx, cancel := context.WithTimeout(ctx, s.timeout)
		_, err := bc.GetProperties(pctx, nil)
		cancel()
		if err == nil {
			chunk++
			continue
		}
		var re *azcore.ResponseError
		if !bloberror.HasCode(err, bloberror.BlobNotFound) && !(errors.As(err, &re) && re.StatusCode == http.StatusNotFound && re.ErrorCode == "") {
			s.containerGoneLocked(err)
			return nil, s.opError("probe blob "+name, err)
		}
		s.lastBase, s.lastChunk = base, chunk
		u := &blobUnit{name: name, client: bc}
		if _, err := rand.Read(u.idBase[:8]); err != nil {
			return nil, s.errorf("block id: %w", err)
		}
		if _, err := rand.Read(u.sync[:]); err != nil {
			return nil, s.errorf("sync marker: %w", err)
		}
		return u, nil
	}
}

// blockID is the unit's i'th block id: random per unit (so that blocks left
// uncommitted by a crashed writer of the same name are not reused), counted
// within it, and of one length, as Azure requires within a blob.
func (u *blobUnit) blockID(i int) string {
	id := u.idBase
	binary.BigEndian.PutUint32(id[8:], uint32(i))
	return base64.StdEncoding.EncodeToString(id[:])
}

// Stage implements Batcher: it takes the messages that fit into the current
// blob, buffering their encoding and staging a block whenever blockTarget
// bytes are buffered.
func (s *StorageContainer) Stage(ctx context.Context, batch []message.Message) (int, error) {
	if len(batch) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ensureWindowLocked(s.now())
	if err := s.ensureContainerLocked(ctx); err != nil {
		return 0, err
	}
	if s.unit == nil {
		u, err := s.newUnitLocked(ctx)
		if err != nil {
			return 0, err
		}
		s.unit = u
	}
	u := s.unit
	recs := make([][]byte, len(batch))
	size := int64(0)
	for i, m := range batch {
		r, err := s.enc.record(m)
		if err != nil {
			return 0, s.errorf("%w", err)
		}
		recs[i] = r
		size += int64(len(r))
	}
	// Buffer the batch when it surely fits: the estimate counts buffered
	// records uncompressed, plus the header and a block's framing.
	if len(u.blocks) < s.maxBlock && u.size+s.unstagedBound(u, u.bufSize+size) <= s.cfg.maxChunk {
		mark := len(u.buf)
		u.buf = append(u.buf, recs...)
		u.bufSize += size
		if u.bufSize >= int64(s.blockTarget) {
			if err := s.stageBufferLocked(ctx, u); err != nil {
				u.buf, u.bufSize = u.buf[:mark], u.bufSize-size // not taken
				return 0, err
			}
		}
		u.records += len(batch)
		return len(batch), nil
	}
	// The blob is nearly full. Stage the buffer to know its exact size, then
	// take the largest prefix of the batch whose block still fits.
	if len(u.buf) > 0 {
		if err := s.stageBufferLocked(ctx, u); err != nil {
			return 0, err
		}
	}
	if len(u.blocks) >= s.maxBlock {
		return 0, nil
	}
	var header []byte
	if len(u.blocks) == 0 {
		header = s.enc.header(u.sync)
	}
	build := func(k int) ([]byte, error) {
		b, err := s.enc.block(recs[:k], u.sync)
		if err != nil {
			return nil, s.errorf("%w", err)
		}
		return append(header[:len(header):len(header)], b...), nil
	}
	room := s.cfg.maxChunk - u.size
	// Sizes grow with k (deflate's nearly so); this runs once per blob.
	lo, hi := 0, len(recs)
	for lo < hi {
		mid := (lo + hi + 1) / 2
		d, err := build(mid)
		if err != nil {
			return 0, err
		}
		if int64(len(d)) <= room {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	k := lo
	if k == 0 && u.records == 0 {
		k = 1 // one message larger than a chunk gets a blob of its own
	}
	if k == 0 {
		return 0, nil
	}
	data, err := build(k)
	if err != nil {
		return 0, err
	}
	if err := s.stageLocked(ctx, u, data); err != nil {
		return 0, err
	}
	u.records += k
	return k, nil
}

// unstagedBound bounds the staged size of n buffered bytes: the header if
// nothing is staged yet, the block framing (two varints and the sync marker),
// and the records uncompressed.
func (s *StorageContainer) unstagedBound(u *blobUnit, n int64) int64 {
	if n == 0 {
		return 0
	}
	const framing = 2*10 + 16
	if len(u.blocks) == 0 {
		n += int64(len(s.enc.header(u.sync)))
	}
	return n + framing
}

// stageBufferLocked stages the buffered records as one block.
func (s *StorageContainer) stageBufferLocked(ctx context.Context, u *blobUnit) error {
	b, err := s.enc.block(u.buf, u.sync)
	if err != nil {
		return s.errorf("%w", err)
	}
	if len(u.blocks) == 0 {
		b = append(s.enc.header(u.sync), b...)
	}
	if err := s.stageLocked(ctx, u, b); err != nil {
		return err
	}
	u.buf, u.bufSize = nil, 0
	return nil
}

// stageLocked uploads one block of u.
func (s *StorageContainer) stageLocked(ctx context.Context, u *blobUnit, data []byte) error {
	id := u.blockID(len(u.blocks))
	sctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if _, err := u.client.StageBlock(sctx, id, streaming.NopCloser(bytes.NewReader(data)), nil); err != nil {
		s.containerGoneLocked(err)
		return s.opError("stage block of "+u.name, err)
	}
	u.blocks = append(u.blocks, id)
	u.size += int64(len(data))
	return nil
}

// FlushDue implements Batcher: the end of the current window.
func (s *StorageContainer) FlushDue() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ensureWindowLocked(s.now())
	return s.winEnd
}

// Flush implements Batcher: it commits the pending blob, or writes an empty
// one at the end of a window that had none.
func (s *StorageContainer) Flush(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.ensureWindowLocked(now)
	if s.unit != nil || (!s.winData && !now.Before(s.winEnd)) {
		if err := s.commitLocked(ctx); err != nil {
			return err
		}
	}
	s.nextWindowLocked(now)
	return nil
}

// commitLocked commits the pending blob; without one, it writes an empty
// blob of the current window.
func (s *StorageContainer) commitLocked(ctx context.Context) error {
	if err := s.ensureContainerLocked(ctx); err != nil {
		return err
	}
	if s.unit == nil {
		u, err := s.newUnitLocked(ctx)
		if err != nil {
			return err
		}
		s.unit = u
	}
	u := s.unit
	if len(u.buf) > 0 {
		if err := s.stageBufferLocked(ctx, u); err != nil {
			return err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	noOverwrite := &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: new(azcore.ETagAny)}}
	var err error
	if len(u.blocks) == 0 {
		_, err = u.client.Upload(cctx, streaming.NopCloser(bytes.NewReader(s.enc.header(u.sync))), &blockblob.UploadOptions{AccessConditions: noOverwrite})
	} else {
		_, err = u.client.CommitBlockList(cctx, u.blocks, &blockblob.CommitBlockListOptions{AccessConditions: noOverwrite})
		if err != nil && bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet) && s.committedLocked(cctx, u) {
			err = nil // an earlier try committed it and its answer was lost
		}
	}
	if err != nil {
		s.containerGoneLocked(err)
		if bloberror.HasCode(err, bloberror.InvalidBlockList) {
			// The staged blocks are gone (the container was deleted and
			// made again, or storage dropped uncommitted blocks).
			return fmt.Errorf("commit blob %s: %w: %w", u.name, ErrUnitLost, s.opError("commit", err))
		}
		return s.opError("commit blob "+u.name, err)
	}
	s.winData = true
	s.unit = nil
	return nil
}

// committedLocked says whether u's blob exists with exactly u's blocks.
func (s *StorageContainer) committedLocked(ctx context.Context, u *blobUnit) bool {
	bl, err := u.client.GetBlockList(ctx, blockblob.BlockListTypeCommitted, nil)
	if err != nil || len(bl.CommittedBlocks) != len(u.blocks) {
		return false
	}
	for i, b := range bl.CommittedBlocks {
		if b.Name == nil || *b.Name != u.blocks[i] {
			return false
		}
	}
	return true
}

// Discard implements Batcher. The staged blocks stay uncommitted; Azure
// deletes those after a week.
func (s *StorageContainer) Discard() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unit = nil
	s.ensureWindowLocked(s.now())
	s.nextWindowLocked(s.now())
}

// Send implements Sink for callers outside a Worker: it writes batch at once,
// in as many blobs as maxChunkSizeInBytes needs.
func (s *StorageContainer) Send(ctx context.Context, batch []message.Message) error {
	for len(batch) > 0 {
		n, err := s.Stage(ctx, batch)
		if err != nil {
			return err
		}
		batch = batch[n:]
		s.mu.Lock()
		if s.unit != nil {
			err = s.commitLocked(ctx)
		}
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// Close implements Sink. Nothing is flushed: a half window is re-delivered
// from the log by the next worker.
func (s *StorageContainer) Close() error { return nil }
