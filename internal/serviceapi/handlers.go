package serviceapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/methods"
	"github.com/moat-iot/moat/internal/registry"
)

// readBody reads at most limit bytes of the request body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return nil, bodyError(err)
	}
	return b, nil
}

// decodeBody decodes a JSON request body into v. Unknown fields are ignored and
// keys match case-insensitively, as IoT Hub's own (.NET) deserializer does.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := readBody(w, r, MaxBodyBytes)
	if err != nil {
		return err
	}
	return decodeJSON(b, v)
}

func decodeJSON(b []byte, v any) error {
	if len(strings.TrimSpace(string(b))) == 0 {
		return errcode.New(errcode.ArgumentNull, "request body is required")
	}
	if err := json.Unmarshal(b, v); err != nil {
		return bodyError(err)
	}
	return nil
}

// The writable parts of a device or module as a caller sends them. Read-only
// fields (times, connection state, counts) are ignored rather than parsed, so
// a client that echoes a document back — or writes times without a zone, as
// .NET does — is not refused over fields the hub owns anyway.
type (
	deviceInput struct {
		DeviceID       string                 `json:"deviceId"`
		ETag           string                 `json:"etag"`
		Status         string                 `json:"status"`
		StatusReason   string                 `json:"statusReason"`
		Authentication *authInput             `json:"authentication"`
		Capabilities   *registry.Capabilities `json:"capabilities"`
		DeviceScope    string                 `json:"deviceScope"`
		ParentScopes   []string               `json:"parentScopes"`
	}
	moduleInput struct {
		ModuleID       string     `json:"moduleId"`
		DeviceID       string     `json:"deviceId"`
		ETag           string     `json:"etag"`
		ManagedBy      string     `json:"managedBy"`
		Authentication *authInput `json:"authentication"`
	}
	authInput struct {
		Type           string                   `json:"type"`
		SymmetricKey   *registry.SymmetricKey   `json:"symmetricKey"`
		X509Thumbprint *registry.X509Thumbprint `json:"x509Thumbprint"`
	}
)

func (a *authInput) toRegistry() registry.Authentication {
	var out registry.Authentication
	if a == nil {
		return out
	}
	out.Type = a.Type
	for _, t := range []string{registry.AuthSAS, registry.AuthSelfSigned, registry.AuthCertificateAuthority, registry.AuthNone} {
		if strings.EqualFold(a.Type, t) {
			out.Type = t
		}
	}
	if a.SymmetricKey != nil {
		out.SymmetricKey = *a.SymmetricKey
	}
	if a.X509Thumbprint != nil {
		out.X509Thumbprint = *a.X509Thumbprint
	}
	// The SDKs send a thumbprint without a type to mean a self-signed
	// certificate.
	if out.Type == "" && (out.X509Thumbprint.PrimaryThumbprint != "" || out.X509Thumbprint.SecondaryThumbprint != "") {
		out.Type = registry.AuthSelfSigned
	}
	return out
}

func mismatch(what, inBody, inPath string) error {
	return errcode.New(errcode.ArgumentInvalid, "%s %q in the body does not match %q in the path", what, truncate(inBody, 140), inPath)
}

func (s *Server) putDevice(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	var in deviceInput
	if err := decodeBody(w, r, &in); err != nil {
		return err
	}
	if in.DeviceID == "" {
		in.DeviceID = id
	} else if in.DeviceID != id {
		return mismatch("deviceId", in.DeviceID, id)
	}
	d := registry.Device{
		DeviceID:       in.DeviceID,
		ETag:           in.ETag,
		Status:         strings.ToLower(in.Status),
		StatusReason:   in.StatusReason,
		Authentication: in.Authentication.toRegistry(),
		DeviceScope:    in.DeviceScope,
		ParentScopes:   in.ParentScopes,
	}
	if in.Capabilities != nil {
		d.Capabilities = *in.Capabilities
	}
	var (
		out registry.Device
		err error
	)
	if ifMatch := r.Header.Get("If-Match"); ifMatch == "" {
		out, err = s.cfg.Registry.CreateDevice(r.Context(), d)
	} else {
		out, err = s.cfg.Registry.UpdateDevice(r.Context(), d, ifMatch)
	}
	if err != nil {
		return err
	}
	writeEntity(w, out.ETag, out)
	return nil
}

// writeEntity answers 200 with v and, as IoT Hub does, its etag in the header.
func writeEntity(w http.ResponseWriter, etag string, v any) {
	if etag != "" {
		w.Header().Set("ETag", quoteETag(etag))
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) error {
	d, err := s.cfg.Registry.GetDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	// The queue, not the registry, knows the depth.
	if n, err := s.cfg.C2D.Count(r.Context(), d.DeviceID); err == nil {
		d.CloudToDeviceMessageCount = n
	}
	writeEntity(w, d.ETag, d)
	return nil
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Registry.DeleteDevice(r.Context(), r.PathValue("id"), r.Header.Get("If-Match")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) error {
	top := 0
	if v := r.URL.Query().Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListTop {
			return errcode.New(errcode.ArgumentInvalid, "top must be an integer from 1 to %d", maxListTop)
		}
		top = n
	}
	list, err := s.cfg.Registry.ListDevices(r.Context(), top)
	if err != nil {
		return err
	}
	if list == nil {
		list = []registry.Device{} // the SDK needs an array, never null
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) bulk(w http.ResponseWriter, r *http.Request) error {
	var ops []registry.BulkOp
	if err := decodeBody(w, r, &ops); err != nil {
		return err
	}
	switch {
	case len(ops) == 0:
		return errcode.New(errcode.ArgumentInvalid, "the bulk request lists no devices")
	case len(ops) > MaxBulkOps:
		return errcode.New(errcode.TooManyDevices, "a bulk request may list at most %d devices, not %d", MaxBulkOps, len(ops))
	}
	res, err := s.cfg.Registry.Bulk(r.Context(), ops)
	if err != nil {
		return err
	}
	if res.Errors == nil {
		res.Errors = []registry.BulkError{}
	}
	if res.Warnings == nil {
		res.Warnings = []registry.BulkError{}
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Server) deviceStatistics(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Registry.Statistics(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// ServiceStatistics is the answer to GET /statistics/service.
type ServiceStatistics struct {
	ConnectedDeviceCount int `json:"connectedDeviceCount"`
}

func (s *Server) serviceStatistics(w http.ResponseWriter, r *http.Request) error {
	var st ServiceStatistics
	if s.cfg.ConnectedDevices != nil {
		st.ConnectedDeviceCount = s.cfg.ConnectedDevices()
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

func (s *Server) putModule(w http.ResponseWriter, r *http.Request) error {
	id, mid := r.PathValue("id"), r.PathValue("mid")
	var in moduleInput
	if err := decodeBody(w, r, &in); err != nil {
		return err
	}
	if in.DeviceID == "" {
		in.DeviceID = id
	} else if in.DeviceID != id {
		return mismatch("deviceId", in.DeviceID, id)
	}
	if in.ModuleID == "" {
		in.ModuleID = mid
	} else if in.ModuleID != mid {
		return mismatch("moduleId", in.ModuleID, mid)
	}
	m := registry.Module{
		ModuleID:       in.ModuleID,
		DeviceID:       in.DeviceID,
		ETag:           in.ETag,
		ManagedBy:      in.ManagedBy,
		Authentication: in.Authentication.toRegistry(),
	}
	var (
		out registry.Module
		err error
	)
	if ifMatch := r.Header.Get("If-Match"); ifMatch == "" {
		out, err = s.cfg.Registry.CreateModule(r.Context(), m)
	} else {
		out, err = s.cfg.Registry.UpdateModule(r.Context(), m, ifMatch)
	}
	if err != nil {
		return err
	}
	writeEntity(w, out.ETag, out)
	return nil
}

func (s *Server) getModule(w http.ResponseWriter, r *http.Request) error {
	m, err := s.cfg.Registry.GetModule(r.Context(), r.PathValue("id"), r.PathValue("mid"))
	if err != nil {
		return err
	}
	writeEntity(w, m.ETag, m)
	return nil
}

func (s *Server) deleteModule(w http.ResponseWriter, r *http.Request) error {
	err := s.cfg.Registry.DeleteModule(r.Context(), r.PathValue("id"), r.PathValue("mid"), r.Header.Get("If-Match"))
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listModules(w http.ResponseWriter, r *http.Request) error {
	list, err := s.cfg.Registry.ListModules(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	if list == nil {
		list = []registry.Module{}
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) getTwin(w http.ResponseWriter, r *http.Request) error {
	t, err := s.cfg.Registry.GetTwin(r.Context(), r.PathValue("id"), r.PathValue("mid"))
	if err != nil {
		return err
	}
	writeEntity(w, t.ETag, t)
	return nil
}

// twinBody reads a twin PATCH/PUT body: a JSON object whose deviceId and
// moduleId, when given, name the twin in the path. The registry gets the
// bytes as sent, since a patch's nulls are meaningful.
func twinBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := readBody(w, r, MaxBodyBytes)
	if err != nil {
		return nil, err
	}
	var ids struct {
		DeviceID *string `json:"deviceId"`
		ModuleID *string `json:"moduleId"`
	}
	if err := decodeJSON(b, &ids); err != nil {
		return nil, err
	}
	id, mid := r.PathValue("id"), r.PathValue("mid")
	if ids.DeviceID != nil && *ids.DeviceID != "" && *ids.DeviceID != id {
		return nil, mismatch("deviceId", *ids.DeviceID, id)
	}
	if ids.ModuleID != nil && *ids.ModuleID != "" && *ids.ModuleID != mid {
		return nil, mismatch("moduleId", *ids.ModuleID, mid)
	}
	return b, nil
}

func (s *Server) patchTwin(w http.ResponseWriter, r *http.Request) error {
	b, err := twinBody(w, r)
	if err != nil {
		return err
	}
	t, err := s.cfg.Registry.PatchTwin(r.Context(), r.PathValue("id"), r.PathValue("mid"), b, r.Header.Get("If-Match"))
	if err != nil {
		return err
	}
	writeEntity(w, t.ETag, t)
	return nil
}

func (s *Server) replaceTwin(w http.ResponseWriter, r *http.Request) error {
	b, err := twinBody(w, r)
	if err != nil {
		return err
	}
	t, err := s.cfg.Registry.ReplaceTwin(r.Context(), r.PathValue("id"), r.PathValue("mid"), b, r.Header.Get("If-Match"))
	if err != nil {
		return err
	}
	writeEntity(w, t.ETag, t)
	return nil
}

// Query paging headers.
const (
	headerMaxItemCount = "x-ms-max-item-count"
	headerContinuation = "x-ms-continuation"
	headerItemType     = "x-ms-item-type"
)

func (s *Server) query(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Query string `json:"query"`
	}
	if err := decodeBody(w, r, &body); err != nil {
		return err
	}
	if strings.TrimSpace(body.Query) == "" {
		return errcode.New(errcode.ArgumentNull, "the query is empty")
	}
	pageSize := 0
	if v := r.Header.Get(headerMaxItemCount); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			return errcode.New(errcode.ArgumentInvalid, "%s must be a non-negative integer", headerMaxItemCount)
		}
		pageSize = n
	}
	items, next, err := s.cfg.Registry.Query(r.Context(), body.Query, pageSize, r.Header.Get(headerContinuation))
	if err != nil {
		return err
	}
	if items == nil {
		items = []any{}
	}
	b, err := json.Marshal(items)
	if err != nil {
		return err
	}
	w.Header().Set(headerItemType, itemType(b))
	// The SDK's hasMoreResults is "the header is present": an empty value
	// on the last page would make clients loop forever.
	if next != "" {
		w.Header().Set(headerContinuation, next)
	}
	w.Header().Set("Content-Type", contentTypeJSON)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return nil
}

// itemType names a query page's items as IoT Hub does: "Twin" when they are
// twins, "Raw" for projections and aggregates.
func itemType(page []byte) string {
	var items []map[string]json.RawMessage
	if json.Unmarshal(page, &items) != nil {
		return "Raw"
	}
	for _, it := range items {
		if _, ok := it["deviceId"]; !ok {
			return "Raw"
		}
		_, p := it["properties"]
		_, e := it["etag"]
		if !p && !e {
			return "Raw"
		}
	}
	return "Twin"
}

// identityExists answers DeviceNotFound/ModuleNotFound for a missing target,
// which IoT Hub reports before it tries to reach the device.
func (s *Server) identityExists(r *http.Request, deviceID, moduleID string) error {
	if moduleID != "" {
		_, err := s.cfg.Registry.GetModule(r.Context(), deviceID, moduleID)
		return err
	}
	_, err := s.cfg.Registry.GetDevice(r.Context(), deviceID)
	return err
}

var errNotConfigured = errors.New("this hub part is not configured")

func (s *Server) invokeMethod(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Methods == nil {
		return errcode.Wrap(errcode.ServiceUnavailable, errNotConfigured, "direct methods are not available")
	}
	id, mid := r.PathValue("id"), r.PathValue("mid")
	var req methods.Request
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	if err := s.identityExists(r, id, mid); err != nil {
		return err
	}
	res, err := s.cfg.Methods.Invoke(r.Context(), id, mid, req)
	if err != nil {
		return err
	}
	if len(res.Payload) == 0 {
		res.Payload = json.RawMessage("null")
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// PurgeResult is the answer to DELETE /devices/{id}/commands.
type PurgeResult struct {
	TotalMessagesPurged int    `json:"totalMessagesPurged"`
	DeviceID            string `json:"deviceId"`
}

func (s *Server) purgeC2D(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.C2D == nil {
		return errcode.Wrap(errcode.ServiceUnavailable, errNotConfigured, "cloud-to-device messaging is not available")
	}
	id := r.PathValue("id")
	if err := s.identityExists(r, id, ""); err != nil {
		return err
	}
	n, err := s.cfg.C2D.Purge(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, PurgeResult{TotalMessagesPurged: n, DeviceID: id})
	return nil
}

func (s *Server) sendC2D(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.C2D == nil {
		return errcode.Wrap(errcode.ServiceUnavailable, errNotConfigured, "cloud-to-device messaging is not available")
	}
	id := r.PathValue("id")
	body, err := readBody(w, r, MaxBodyBytes)
	if err != nil {
		return err
	}
	m, err := C2DMessageFromHeader(r.Header, body)
	if err != nil {
		return err
	}
	if err := s.identityExists(r, id, ""); err != nil {
		return err
	}
	if _, err := s.cfg.C2D.Send(r.Context(), id, m); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
