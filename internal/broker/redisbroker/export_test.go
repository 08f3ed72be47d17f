package redisbroker

import "chat/internal/broker"

// RoomTraffic is how many publications reached b on room channels.
func RoomTraffic(b broker.Broker) int64 { return b.(*Broker).roomTraffic.Load() }
