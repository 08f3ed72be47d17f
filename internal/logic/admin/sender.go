package admin

import "chat/internal/protocol"

// senderName is the "from" of an admin message: "system" unless given.
func senderName(from string) (string, error) {
	if from == "" || from == protocol.SystemUser {
		return protocol.SystemUser, nil
	}
	return protocol.NormalizeName(from)
}
