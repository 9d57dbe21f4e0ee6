package hub

import (
	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/endpoint"
)

// namedSink is a custom endpoint's delivery target.
type namedSink struct {
	name string
	sink endpoint.Sink
}

// customSinks builds the sink of every custom endpoint, one kind after
// another, in the order the configuration lists them.
func customSinks(eps config.RoutingEndpoints, hubName string) ([]namedSink, error) {
	var out []namedSink
	for _, w := range eps.WebHooks {
		out = append(out, namedSink{w.Name, endpoint.NewWebhook(w, nil)})
	}
	for _, b := range eps.MQTTBridges {
		sink, err := endpoint.NewMQTTBridge(b)
		if err != nil {
			return nil, err
		}
		out = append(out, namedSink{b.Name, sink})
	}
	for _, n := range eps.NATS {
		sink, err := endpoint.NewNATS(n)
		if err != nil {
			return nil, err
		}
		out = append(out, namedSink{n.Name, sink})
	}
	for _, e := range eps.EventHubs {
		sink, err := endpoint.NewEventHubs(e)
		if err != nil {
			return nil, err
		}
		out = append(out, namedSink{e.Name, sink})
	}
	for _, k := range eps.Kafka {
		sink, err := endpoint.NewKafka(k)
		if err != nil {
			return nil, err
		}
		out = append(out, namedSink{k.Name, sink})
	}
	for _, sc := range eps.StorageContainers {
		sc.HubName = hubName // {iothub} in blob names
		sink, err := endpoint.NewStorageContainer(sc)
		if err != nil {
			return nil, err
		}
		out = append(out, namedSink{sc.Name, sink})
	}
	return out, nil
}
