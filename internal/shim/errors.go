package shim

import (
	"context"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
)

// UnaryInterceptor is the task API's boundary, which the shim library
// chains into its ttRPC server: the call's span and log fields (intercept),
// then each error becomes, once, the gRPC status of its errdefs class,
// which containerd turns back into the class.
func (s *service) UnaryInterceptor() ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (interface{}, error) {
		return s.intercept(ctx, u, info, func(ctx context.Context, u func(any) error) (any, error) {
			resp, err := m(ctx, u)
			if err != nil {
				log.G(ctx).WithError(err).WithField("method", info.FullMethod).Debug("task call failed")
				return resp, errgrpc.ToGRPC(err)
			}
			return resp, nil
		})
	}
}
