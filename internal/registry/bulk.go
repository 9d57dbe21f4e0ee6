package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/moat-iot/moat/internal/errcode"
)

// MaxBulkOps is the most entries one bulk request may carry.
const MaxBulkOps = 100

// Bulk import modes, lower-cased (requests use any case).
const (
	modeCreate            = "create"
	modeCreateOrUpdate    = "createorupdate"
	modeUpdate            = "update"
	modeUpdateIfMatchETag = "updateifmatchetag"
	modeDelete            = "delete"
	modeDeleteIfMatchETag = "deleteifmatchetag"
)

// Bulk applies up to 100 import operations (POST /devices). The request as a
// whole is refused (too many entries, an id twice, an unknown mode); otherwise
// each entry is applied on its own and failures are listed per device.
func (r *Registry) Bulk(ctx context.Context, ops []BulkOp) (BulkResult, error) {
	if len(ops) > MaxBulkOps {
		return BulkResult{}, errcode.New(errcode.TooManyDevices, "a bulk request may hold at most %d devices, got %d", MaxBulkOps, len(ops))
	}
	seen := make(map[string]bool, len(ops))
	for _, op := range ops {
		if seen[op.ID] {
			return BulkResult{}, errcode.New(errcode.DeviceDefinedMultipleTimes, "device %q is defined more than once", op.ID)
		}
		seen[op.ID] = true
		switch strings.ToLower(op.ImportMode) {
		case modeCreate, modeCreateOrUpdate, modeUpdate, modeUpdateIfMatchETag, modeDelete, modeDeleteIfMatchETag:
		default:
			return BulkResult{}, errcode.New(errcode.ArgumentInvalid, "unknown importMode %q for device %q", op.ImportMode, op.ID)
		}
	}
	res := BulkResult{IsSuccessful: true, Errors: []BulkError{}, Warnings: []BulkError{}}
	for _, op := range ops {
		if err := ctx.Err(); err != nil {
			return BulkResult{}, fmt.Errorf("bulk: %w", err)
		}
		if err := r.bulkOne(ctx, op); err != nil {
			var ce *errcode.Error
			if !errors.As(err, &ce) {
				return BulkResult{}, fmt.Errorf("bulk %s %q: %w", op.ImportMode, op.ID, err)
			}
			res.IsSuccessful = false
			res.Errors = append(res.Errors, BulkError{DeviceID: op.ID, ErrorCode: ce.Code.Number, ErrorStatus: ce.Message})
		}
	}
	return res, nil
}

func (r *Registry) bulkOne(ctx context.Context, op BulkOp) error {
	d := Device{
		DeviceID:     op.ID,
		Status:       op.Status,
		StatusReason: op.StatusReason,
		DeviceScope:  op.DeviceScope,
		ParentScopes: op.ParentScopes,
	}
	if op.Authentication != nil {
		d.Authentication = *op.Authentication
	}
	if op.Capabilities != nil {
		d.Capabilities = *op.Capabilities
	}
	keepCaps := op.Capabilities == nil
	ifMatch := func() (string, error) {
		if op.ETag == "" {
			return "", errcode.New(errcode.ArgumentInvalid, "eTag is required with importMode %s", op.ImportMode)
		}
		return `"` + strings.Trim(op.ETag, `"`) + `"`, nil
	}
	switch strings.ToLower(op.ImportMode) {
	case modeCreate:
		_, err := r.CreateDevice(ctx, d)
		return err
	case modeCreateOrUpdate:
		_, err := r.CreateDevice(ctx, d)
		if errcode.Is(err, errcode.DeviceAlreadyExists) {
			_, err = r.updateDevice(ctx, d, "*", keepCaps)
		}
		return err
	case modeUpdate:
		_, err := r.updateDevice(ctx, d, "*", keepCaps)
		return err
	case modeUpdateIfMatchETag:
		m, err := ifMatch()
		if err != nil {
			return err
		}
		_, err = r.updateDevice(ctx, d, m, keepCaps)
		return err
	case modeDelete:
		return r.DeleteDevice(ctx, op.ID, "*")
	case modeDeleteIfMatchETag:
		m, err := ifMatch()
		if err != nil {
			return err
		}
		return r.DeleteDevice(ctx, op.ID, m)
	}
	return errcode.New(errcode.ArgumentInvalid, "unknown importMode %q", op.ImportMode)
}
