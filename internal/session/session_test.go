package session

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
)

func TestSQLiteStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	subs := []Subscription{{"$iothub/methods/POST/#", 0}, {"devices/d/messages/devicebound/#", 1}}
	if err := s.Save(ctx, "d", subs); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx, "d/m", subs[:1]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Load(ctx, "d")
	if err != nil || !reflect.DeepEqual(got, subs) {
		t.Fatalf("after reopen: %v %v", got, err)
	}
	if err := s.Save(ctx, "d", subs[1:]); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load(ctx, "d"); !reflect.DeepEqual(got, subs[1:]) {
		t.Fatalf("save does not replace: %v", got)
	}
	if err := s.Delete(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load(ctx, "d"); len(got) != 0 {
		t.Fatalf("after delete: %v", got)
	}
	if got, _ := s.Load(ctx, "d/m"); len(got) != 1 {
		t.Fatalf("other client touched: %v", got)
	}
}
