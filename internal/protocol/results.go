package protocol

// The results of commands (SPEC §3), the "result" of a reply. The server
// encodes them; the tests and chatbench decode them.

// JoinResult answers join, and is what a "subscribed" event carries.
type JoinResult struct {
	Room      string    `json:"room"`
	Epoch     string    `json:"epoch"`
	Seq       int64     `json:"seq"`
	Members   []Member  `json:"members"` // the first page (all of a room within Chat.PresenceEventLimit)
	Count     int       `json:"count"`   // users present, all pages
	History   []Message `json:"history"`
	Recovered bool      `json:"recovered"`
}

// RoomResult answers leave.
type RoomResult struct {
	Room string `json:"room"`
}

// SendResult answers send.
type SendResult struct {
	Room string `json:"room"`
	Seq  int64  `json:"seq"`
	TS   int64  `json:"ts"`
}

// DirectResult answers direct.
type DirectResult struct {
	To string `json:"to"`
	TS int64  `json:"ts"`
	// Stored: the recipient had no connection; the store keeps the message
	// for its next one (SPEC §14).
	Stored bool `json:"stored,omitempty"`
}

// HistoryResult answers history.
type HistoryResult struct {
	Room     string    `json:"room"`
	Messages []Message `json:"messages"`
}

// MembersResult answers members: a page of the room's users and their total.
type MembersResult struct {
	Room    string   `json:"room"`
	Members []Member `json:"members"`
	Count   int      `json:"count"`
}

// RoomCount is a room in RoomsResult: its number of distinct users present.
type RoomCount struct {
	Room    string `json:"room"`
	Members int    `json:"members"`
}

// RoomsResult answers rooms.
type RoomsResult struct {
	Rooms []RoomCount `json:"rooms"`
}

// Subscribed tells a connection that the admin API joined it to a room
// (SPEC §13): what a join reply holds, as an event.
type Subscribed struct {
	Type string `json:"type"`
	JoinResult
}

// Removed tells a connection that the admin API removed it from a room.
type Removed struct {
	Type string `json:"type"`
	Room string `json:"room"`
	TS   int64  `json:"ts"`
}
