package dnszone

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/moat-iot/moat/internal/errcode"
)

// APIPrefix is where the zone API lives on the hub's HTTPS listener.
const APIPrefix = "/moat/dns/"

// Request body limits: a zone of MaxRecords small record sets fits in the
// first.
const (
	maxZoneBody   = 8 << 20
	maxRecordBody = 64 << 10
	maxLinksBody  = 256 << 10
)

const errorCodeHeader = "iothub-errorcode"

// Handler serves the zone management API under /moat/dns/zones. Every request
// must pass auth first; its error (an *errcode.Error, or anything else for a
// plain 401) is the answer. Errors use IoT Hub's legacy body
// ({"Message":"ErrorCode:Name;text"}), as the rest of the hub's API does.
//
//	GET    /moat/dns/zones                              list zones
//	GET    /moat/dns/zones/{zone}                       one zone (records included)
//	PUT    /moat/dns/zones/{zone}                       create or replace (If-None-Match: * only creates)
//	DELETE /moat/dns/zones/{zone}
//	PUT    /moat/dns/zones/{zone}/links                 ["10.0.0.0/8", …]
//	GET    /moat/dns/zones/{zone}/records               list record sets
//	GET    /moat/dns/zones/{zone}/records/{type}/{name} one record set ("@" is the apex)
//	PUT    /moat/dns/zones/{zone}/records/{type}/{name} create or replace
//	DELETE /moat/dns/zones/{zone}/records/{type}/{name}
func (s *Store) Handler(auth func(*http.Request) error) http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, f func(w http.ResponseWriter, r *http.Request) error) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if auth == nil {
				writeError(w, errcode.New(errcode.IotHubUnauthorizedAccess, "Unauthorized"))
				return
			}
			if err := auth(r); err != nil {
				var e *errcode.Error
				if !errors.As(err, &e) {
					e = errcode.New(errcode.IotHubUnauthorizedAccess, "Unauthorized")
				}
				writeError(w, e)
				return
			}
			if err := f(w, r); err != nil {
				e := errcode.From(err)
				if e.Code.Status >= 500 {
					// The caller learns only "internal server error"; the
					// operator needs the cause (a full disk, say).
					slog.Default().Error("dns zone API request failed", "component", "dnszone", "method", r.Method, "path", r.URL.Path, "error", err)
				}
				writeError(w, e)
			}
		})
	}
	h("GET /moat/dns/zones", func(w http.ResponseWriter, r *http.Request) error {
		writeJSON(w, http.StatusOK, s.Zones())
		return nil
	})
	h("GET /moat/dns/zones/{zone}", func(w http.ResponseWriter, r *http.Request) error {
		z, err := s.Zone(r.PathValue("zone"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, z)
		return nil
	})
	h("PUT /moat/dns/zones/{zone}", func(w http.ResponseWriter, r *http.Request) error {
		b, err := readBody(w, r, maxZoneBody)
		if err != nil {
			return err
		}
		var z Zone
		if err := decodeStrict(b, &z); err != nil {
			return badInput(err)
		}
		name, err := lookupName(r.PathValue("zone"))
		if err != nil {
			return err
		}
		if z.Name == "" {
			z.Name = name
		}
		if c, err := CanonicalName(z.Name); err != nil || c != name {
			return errcode.New(errcode.ArgumentInvalid, "the body's zone name %q is not the path's %q", z.Name, name)
		}
		created, err := s.putZone(z, r.Header.Get("If-None-Match") == "*")
		if err != nil {
			return err
		}
		out, err := s.Zone(name)
		if err != nil {
			return err
		}
		status := http.StatusOK
		if created {
			status = http.StatusCreated
		}
		writeJSON(w, status, out)
		return nil
	})
	h("DELETE /moat/dns/zones/{zone}", func(w http.ResponseWriter, r *http.Request) error {
		if err := s.DeleteZone(r.PathValue("zone")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	h("PUT /moat/dns/zones/{zone}/links", func(w http.ResponseWriter, r *http.Request) error {
		b, err := readBody(w, r, maxLinksBody)
		if err != nil {
			return err
		}
		links, err := ParseLinksJSON(b)
		if err != nil {
			return badInput(err)
		}
		if err := s.SetLinks(r.PathValue("zone"), links); err != nil {
			return err
		}
		z, err := s.Zone(r.PathValue("zone"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, z)
		return nil
	})
	h("GET /moat/dns/zones/{zone}/records", func(w http.ResponseWriter, r *http.Request) error {
		z, err := s.Zone(r.PathValue("zone"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, z.Records)
		return nil
	})
	h("GET /moat/dns/zones/{zone}/records/{type}/{name}", func(w http.ResponseWriter, r *http.Request) error {
		rec, err := s.Record(r.PathValue("zone"), r.PathValue("type"), r.PathValue("name"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, rec)
		return nil
	})
	h("PUT /moat/dns/zones/{zone}/records/{type}/{name}", func(w http.ResponseWriter, r *http.Request) error {
		zone, err := lookupName(r.PathValue("zone"))
		if err != nil {
			return err
		}
		b, err := readBody(w, r, maxRecordBody)
		if err != nil {
			return err
		}
		var rec Record
		if err := decodeStrict(b, &rec); err != nil {
			return badInput(err)
		}
		typ := strings.ToUpper(r.PathValue("type"))
		if rec.Type == "" {
			rec.Type = typ
		}
		if !strings.EqualFold(rec.Type, typ) {
			return errcode.New(errcode.ArgumentInvalid, "the body's type %q is not the path's %q", rec.Type, typ)
		}
		pathName, err := relativeName(r.PathValue("name"), zone)
		if err != nil {
			return errcode.New(errcode.ArgumentInvalid, "record name: %v", err)
		}
		if rec.Name == "" {
			rec.Name = pathName
		}
		if n, err := relativeName(rec.Name, zone); err != nil || n != pathName {
			return errcode.New(errcode.ArgumentInvalid, "the body's name %q is not the path's %q", rec.Name, pathName)
		}
		if err := s.PutRecord(zone, rec); err != nil {
			return err
		}
		out, err := s.Record(zone, typ, pathName)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	})
	h("DELETE /moat/dns/zones/{zone}/records/{type}/{name}", func(w http.ResponseWriter, r *http.Request) error {
		if err := s.DeleteRecord(r.PathValue("zone"), r.PathValue("type"), r.PathValue("name")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	return mux
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errcode.New(errcode.MessageTooLarge, "request body over %d bytes", limit)
		}
		return nil, errcode.Wrap(errcode.ArgumentInvalid, err, "read request body")
	}
	return b, nil
}

type errorBody struct {
	Message string `json:"Message"`
}

func writeError(w http.ResponseWriter, e *errcode.Error) {
	w.Header().Set(errorCodeHeader, e.Code.Name)
	writeJSON(w, e.Code.Status, errorBody{Message: "ErrorCode:" + e.Code.Name + ";" + e.Message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, status = []byte(`{"Message":"ErrorCode:ServerError;internal server error"}`), http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
