package serviceapi

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/moat-iot/moat/internal/configurations"
	"github.com/moat-iot/moat/internal/errcode"
	"github.com/moat-iot/moat/internal/jobs"
	"github.com/moat-iot/moat/internal/query"
)

// jobsRoutes registers the scheduled-jobs (jobs v2) and automatic device
// configuration operations, each only when its service is configured (a
// server without them answers 404 NotFound there, as before they existed).
// Scheduled jobs invoke methods and write twins, so they need ServiceConnect
// like those calls; configurations are registry documents.
func (s *Server) jobsRoutes() {
	h := s.handle
	if s.cfg.Jobs != nil {
		h("PUT /jobs/v2/{id}", service, s.putJob)
		h("GET /jobs/v2/query", twinRead, s.queryJobs)
		h("GET /jobs/v2/{id}", twinRead, s.getJob)
		h("POST /jobs/v2/{id}/cancel", service, s.cancelJob)
	}
	if s.cfg.Configurations == nil {
		return
	}
	h("PUT /configurations/{id}", registryWrite, s.putConfiguration)
	h("GET /configurations/{id}", registryRead, s.getConfiguration)
	h("DELETE /configurations/{id}", registryWrite, s.deleteConfiguration)
	h("GET /configurations", registryRead, s.listConfigurations)
	h("GET /configurations/{$}", registryRead, s.listConfigurations)
	h("POST /devices/{id}/applyConfigurationContent", registryWrite, s.applyConfigurationContent)
}

func (s *Server) jobsService() (*jobs.Service, error) {
	if s.cfg.Jobs == nil {
		return nil, errcode.Wrap(errcode.ServiceUnavailable, errNotConfigured, "jobs are not available")
	}
	return s.cfg.Jobs, nil
}

func (s *Server) configurationsService() (*configurations.Service, error) {
	if s.cfg.Configurations == nil {
		return nil, errcode.Wrap(errcode.ServiceUnavailable, errNotConfigured, "configurations are not available")
	}
	return s.cfg.Configurations, nil
}

func (s *Server) putJob(w http.ResponseWriter, r *http.Request) error {
	js, err := s.jobsService()
	if err != nil {
		return err
	}
	b, err := readBody(w, r, MaxBodyBytes)
	if err != nil {
		return err
	}
	j, err := jobs.ParseRequest(b, r.PathValue("id"), s.cfg.Now())
	if err != nil {
		return err
	}
	j, err = js.Create(r.Context(), j)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, j)
	return nil
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) error {
	js, err := s.jobsService()
	if err != nil {
		return err
	}
	j, err := js.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, j)
	return nil
}

func (s *Server) cancelJob(w http.ResponseWriter, r *http.Request) error {
	js, err := s.jobsService()
	if err != nil {
		return err
	}
	j, err := js.Cancel(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, j)
	return nil
}

// pageSize reads x-ms-max-item-count (0 when absent).
func pageSize(r *http.Request) (int, error) {
	v := r.Header.Get(headerMaxItemCount)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0, errcode.New(errcode.ArgumentInvalid, "%s must be a non-negative integer", headerMaxItemCount)
	}
	return n, nil
}

// writePage answers one page of a paged result. The continuation header is
// omitted on the last page: the SDK's hasMoreResults is "the header is
// present".
func writePage(w http.ResponseWriter, items any, itemType, next string) {
	w.Header().Set(headerItemType, itemType)
	if next != "" {
		w.Header().Set(headerContinuation, next)
	}
	writeJSON(w, http.StatusOK, items)
}

func (s *Server) queryJobs(w http.ResponseWriter, r *http.Request) error {
	js, err := s.jobsService()
	if err != nil {
		return err
	}
	n, err := pageSize(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	page, next, err := js.List(r.Context(), q.Get("jobType"), q.Get("jobStatus"), n, r.Header.Get(headerContinuation))
	if err != nil {
		return err
	}
	if page == nil {
		page = []jobs.Job{}
	}
	writePage(w, page, "jobResponse", next)
	return nil
}

// queryWithJobs is POST /devices/query: queries over devices.jobs go to the
// job service, every other query to the registry as before.
func (s *Server) queryWithJobs(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Jobs == nil {
		return s.query(w, r)
	}
	b, err := readBody(w, r, MaxBodyBytes)
	if err != nil {
		return err
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	var body struct {
		Query string `json:"query"`
	}
	if json.Unmarshal(b, &body) != nil || !queriesDeviceJobs(body.Query) {
		return s.query(w, r)
	}
	n, err := pageSize(r)
	if err != nil {
		return err
	}
	items, next, err := s.cfg.Jobs.QueryDeviceJobs(r.Context(), body.Query, n, r.Header.Get(headerContinuation))
	if err != nil {
		return err
	}
	writePage(w, items, "deviceJob", next)
	return nil
}

func queriesDeviceJobs(q string) bool {
	if strings.TrimSpace(q) == "" {
		return false
	}
	sel, err := query.ParseSelect(q)
	return err == nil && strings.EqualFold(sel.From(), "devices.jobs")
}

func (s *Server) putConfiguration(w http.ResponseWriter, r *http.Request) error {
	cs, err := s.configurationsService()
	if err != nil {
		return err
	}
	b, err := readBody(w, r, MaxBodyBytes)
	if err != nil {
		return err
	}
	c, err := configurations.ParseConfiguration(b, r.PathValue("id"))
	if err != nil {
		return err
	}
	if ifMatch := r.Header.Get("If-Match"); ifMatch == "" {
		c, err = cs.Create(r.Context(), c)
	} else {
		c, err = cs.Update(r.Context(), c, ifMatch)
	}
	if err != nil {
		return err
	}
	writeEntity(w, c.ETag, c)
	return nil
}

func (s *Server) getConfiguration(w http.ResponseWriter, r *http.Request) error {
	cs, err := s.configurationsService()
	if err != nil {
		return err
	}
	c, err := cs.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeEntity(w, c.ETag, c)
	return nil
}

func (s *Server) deleteConfiguration(w http.ResponseWriter, r *http.Request) error {
	cs, err := s.configurationsService()
	if err != nil {
		return err
	}
	if err := cs.Delete(r.Context(), r.PathValue("id"), r.Header.Get("If-Match")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listConfigurations(w http.ResponseWriter, r *http.Request) error {
	cs, err := s.configurationsService()
	if err != nil {
		return err
	}
	top := 0
	if v := r.URL.Query().Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > configurations.MaxListTop {
			return errcode.New(errcode.ArgumentInvalid, "top must be an integer from 1 to %d", configurations.MaxListTop)
		}
		top = n
	}
	list, err := cs.List(r.Context(), top)
	if err != nil {
		return err
	}
	if list == nil {
		list = []configurations.Configuration{}
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) applyConfigurationContent(w http.ResponseWriter, r *http.Request) error {
	cs, err := s.configurationsService()
	if err != nil {
		return err
	}
	b, err := readBody(w, r, MaxBodyBytes)
	if err != nil {
		return err
	}
	content, err := configurations.ParseContent(b)
	if err != nil {
		return err
	}
	if err := cs.ApplyContent(r.Context(), r.PathValue("id"), content); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
