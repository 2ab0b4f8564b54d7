package agentctl

import (
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// The generated code registers the agent's services in
	// protoregistry.GlobalFiles; Methods reads them from there.
	_ "github.com/hull-runtime/hull/api/agent/v1"
)

// Package is the protobuf package of the agent's services.
const Package = "hull.agent.v1"

// maxSuggestions is how many close matches an unknown method's error names.
const maxSuggestions = 4

// Method is one callable method of the agent.
type Method struct {
	desc protoreflect.MethodDescriptor
}

// Name is the method's short name, "System.Health".
func (m Method) Name() string {
	return string(m.desc.Parent().Name()) + "." + string(m.desc.Name())
}

// Service is the full name of the method's service, "hull.agent.v1.System",
// as ttRPC names it on the wire.
func (m Method) Service() string { return string(m.desc.Parent().FullName()) }

// Path is the method's full ttRPC name, "/hull.agent.v1.System/Health".
func (m Method) Path() string { return "/" + m.Service() + "/" + string(m.desc.Name()) }

// Request is the name of the request message, relative to Package when it
// belongs to it.
func (m Method) Request() string { return messageName(m.desc.Input()) }

// Response is the name of the response message, relative to Package when
// it belongs to it.
func (m Method) Response() string { return messageName(m.desc.Output()) }

func messageName(md protoreflect.MessageDescriptor) string {
	if md.ParentFile().Package() == Package {
		return strings.TrimPrefix(string(md.FullName()), Package+".")
	}
	return string(md.FullName())
}

// Methods returns the unary methods of every service of Package: services
// by name, methods in the order of their proto file.
func Methods() []Method {
	var services []protoreflect.ServiceDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage(Package, func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			services = append(services, fd.Services().Get(i))
		}
		return true
	})
	slices.SortFunc(services, func(a, b protoreflect.ServiceDescriptor) int {
		return strings.Compare(string(a.Name()), string(b.Name()))
	})
	var ms []Method
	for _, sd := range services {
		for i := range sd.Methods().Len() {
			md := sd.Methods().Get(i)
			// ttRPC's generic call is unary; the agent has no streams.
			if md.IsStreamingClient() || md.IsStreamingServer() {
				continue
			}
			ms = append(ms, Method{desc: md})
		}
	}
	return ms
}

// Lookup finds a method by its short name ("System.Health") or its full
// name ("/hull.agent.v1.System/Health", with or without the slash). An
// unknown name is a NotFound error that names close matches.
func Lookup(name string) (Method, error) {
	short := shortName(name)
	ms := Methods()
	for _, m := range ms {
		if m.Name() == short {
			return m, nil
		}
	}
	hint := `"hull agent list" shows every method`
	if near := closeMatches(short, ms); len(near) > 0 {
		hint = "did you mean " + strings.Join(near, ", ") + "? " + hint
	}
	return Method{}, fmt.Errorf("unknown method %q (%s): %w", name, hint, errdefs.ErrNotFound)
}

// shortName turns the full forms of a method name into "Service.Method".
func shortName(name string) string {
	s := strings.TrimPrefix(name, "/")
	s = strings.TrimPrefix(s, Package+".")
	return strings.Replace(s, "/", ".", 1)
}

// closeMatches returns the names of the methods that name might have meant:
// those within a few edits of it, or whose method part alone is, so that
// "Health" and "Containers.Health" find System.Health.
func closeMatches(name string, ms []Method) []string {
	want := strings.ToLower(name)
	_, wantMethod, hasService := strings.Cut(want, ".")
	if !hasService {
		wantMethod = want
	}
	limit := max(2, len(wantMethod)/3)
	type match struct {
		name string
		dist int
	}
	var found []match
	for _, m := range ms {
		d := editDistance(want, strings.ToLower(m.Name()))
		d = min(d, editDistance(wantMethod, strings.ToLower(string(m.desc.Name())))+1)
		if d <= limit {
			found = append(found, match{m.Name(), d})
		}
	}
	slices.SortStableFunc(found, func(a, b match) int { return a.dist - b.dist })
	var names []string
	for _, f := range found[:min(len(found), maxSuggestions)] {
		names = append(names, f.name)
	}
	return names
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
