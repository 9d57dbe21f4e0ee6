package hub

import (
	"fmt"

	"github.com/moat-iot/moat/internal/config"
	"github.com/moat-iot/moat/internal/endpoint"
)

// newSink builds a custom endpoint's delivery target from its settings.
func newSink(ep config.NamedEndpoint, hubName string) (endpoint.Sink, error) {
	switch s := ep.Settings.(type) {
	case endpoint.WebhookConfig:
		return endpoint.NewWebhook(s, nil), nil
	case endpoint.MQTTBridgeConfig:
		return endpoint.NewMQTTBridge(s)
	case endpoint.NATSConfig:
		return endpoint.NewNATS(s)
	case endpoint.EventHubConfig:
		return endpoint.NewEventHubs(s)
	case endpoint.KafkaConfig:
		return endpoint.NewKafka(s)
	case endpoint.StorageContainerConfig:
		s.HubName = hubName // {iothub} in blob names
		return endpoint.NewStorageContainer(s)
	default:
		return nil, fmt.Errorf("endpoint %s: no sink for %T", ep.Name, ep.Settings)
	}
}
