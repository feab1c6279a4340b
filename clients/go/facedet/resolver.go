package facedet

import "google.golang.org/grpc/resolver"

// listScheme is the scheme of the per-connection resolver that hands grpc a fixed address list
// (see Addresses); it is registered with the one ClientConn only (grpc.WithResolvers), never
// globally.
const listScheme = "facedet-list"

type listBuilder struct{ addresses []string }

func (b listBuilder) Scheme() string { return listScheme }

func (b listBuilder) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	state := resolver.State{}
	for _, address := range b.addresses {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: address})
	}
	cc.UpdateState(state)
	return listResolver{}, nil
}

// listResolver has nothing to re-resolve: the addresses are the ones the user gave.
type listResolver struct{}

func (listResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (listResolver) Close()                                {}
