// Package broker is the backbone between nodes: it orders and stores room
// messages, carries events between nodes, and keeps cluster-wide presence.
// The Hub never calls it; connections and the REST API do, and a broker hands
// what it receives to its node through a Handler.
//
// Two implementations keep the same contract and pass the same suite
// (package brokertest): memory, one process (and several nodes in it for
// tests), and Redis, any number of processes.
package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"chat/internal/protocol"
)

// ErrUnavailable means the backbone could not confirm an operation: for a
// Publish the outcome is unknown, and a retry with the same Key is safe.
var ErrUnavailable = errors.New("broker unavailable")

// Broker is one node's handle on the backbone. All methods are safe for
// concurrent use.
//
// The invariants every implementation keeps:
//
//   - Publish is one atomic step per room: check the idempotency key, take
//     the room's next seq, append to history, and publish to every node
//     subscribed to the room. Were these separate, two nodes could publish
//     seq 7 and 8 in the order 8, 7, or a reader of history could see seq 8
//     before it is delivered and recover a state that later changes.
//   - Seqs of a room are 1, 2, 3, ... within an epoch, with no gaps and no
//     repeats. The epoch is a random string made when the sequence starts
//     (a new room, or one whose history was lost). Without it a client that
//     saw epoch A up to seq 3 and returns after the room restarted as
//     epoch B at seq 5 would be told it missed only 4 and 5 of a different
//     sequence.
//   - Deliveries of one topic reach a node's Handler in publish order, and
//     room messages in seq order.
//   - Subscribe returns once the subscription is active: every publication
//     on the topic made after it returns is delivered to this node.
//   - Presence of a node that stops refreshing (it died) expires after the
//     configured presence TTL without help from anyone.
type Broker interface {
	// Publish stores and publishes a room message. A repeated (room, from,
	// key) within the key window publishes nothing and returns the first
	// message. Errors wrap ErrUnavailable when the outcome is unknown.
	Publish(ctx context.Context, p Publication) (protocol.Message, error)

	// History reads a room's history; it starts the room's epoch if there
	// is none yet, so that a client always has an epoch to recover from.
	History(ctx context.Context, room string, q HistoryQuery) (History, error)

	// Subscribe and Unsubscribe start and stop delivery of a topic to this
	// node. They are idempotent; callers count references.
	Subscribe(ctx context.Context, topic Topic) error
	Unsubscribe(ctx context.Context, topic Topic) error

	// Emit delivers a best-effort event to the nodes subscribed to a topic,
	// or to every node for BroadcastTopic (at most once, no history).
	Emit(ctx context.Context, d Delivery) error

	// Connect and Disconnect record a connection of a user; Join and Leave
	// record its presence in a room and report the room's presence right
	// after, as one atomic step: of two connections of one user that join
	// at once, exactly one is told its user is new to the room. Both are
	// idempotent (a second Join of the same connection changes nothing).
	// Disconnect removes the connection's presence in every room.
	Connect(ctx context.Context, c Conn) error
	Disconnect(ctx context.Context, c Conn) error
	Join(ctx context.Context, room string, c Conn) (RoomPresence, error)
	Leave(ctx context.Context, room string, c Conn) (RoomPresence, error)

	// Members lists a page of a room's users with their connection counts,
	// sorted by user, and counts them all. Its cost grows with the page, not
	// with the room: a room of 10,000 members is read a page at a time.
	Members(ctx context.Context, room string, q MembersQuery) (MembersPage, error)
	// Rooms lists every room with at least one member present.
	Rooms(ctx context.Context) ([]RoomInfo, error)
	// UserConnections counts a user's connections on every node.
	UserConnections(ctx context.Context, user string) (int, error)
	// Session finds a live connection (Connect, not yet Disconnect nor
	// expired) by its client id, on any node: its node, user and key hash.
	Session(ctx context.Context, client string) (Conn, bool, error)

	// Grant, Revoke, Grants and HasGrant keep who may enter a private room
	// (SPEC §13). Grants are durable: no TTL, they outlive every node.
	Grant(ctx context.Context, room, user string) error
	Revoke(ctx context.Context, room, user string) error
	Grants(ctx context.Context, room string) ([]string, error) // sorted
	HasGrant(ctx context.Context, room, user string) (bool, error)

	// Nodes lists the live nodes, sorted by id: each node's broker
	// announces itself (with its connections in presence) as often as it
	// refreshes presence, and a node that stops expires with its presence.
	Nodes(ctx context.Context) ([]NodeInfo, error)
	// Users counts the distinct users with a live connection, cluster-wide.
	Users(ctx context.Context) (int, error)

	// ClaimUnstored and MarkStored carry every published message into the
	// durable store (SPEC §14), whoever published it and whether or not
	// its node still lives. With Options.Heads set, every publish marks its
	// room unstored, due StoreDelay later. ClaimUnstored hands out up to
	// limit rooms that are due, each to one caller for lease, with the
	// room's head and how far it is known to be stored; the caller makes
	// sure the messages in (Stored, Seq] are in the store (from History
	// while it still holds them) and calls MarkStored, which records the
	// room stored up to Seq and clears the mark, unless the room published
	// again after the claim: then the room stays due. A caller that dies
	// leaves its claims to expire after lease.
	ClaimUnstored(ctx context.Context, lease time.Duration, limit int) ([]Unstored, error)
	MarkStored(ctx context.Context, u Unstored) error

	// Ping reports whether the backbone answers.
	Ping(ctx context.Context) error
	// Close stops deliveries and releases the node's resources; its
	// presence is removed where the backbone can still be reached.
	Close() error
}

// Handler receives a node's deliveries. It is called from the broker's
// goroutines, in order per topic, and must not call back into the broker.
type Handler func(Delivery)

// Publication is a room message to publish.
type Publication struct {
	Room string
	From string
	Text string
	Key  string // idempotency key; "" for none
	ID   string // message id, unique across the cluster, made by the caller
}

// HistoryQuery selects messages of a room, oldest first in the result.
type HistoryQuery struct {
	After  int64 // only seqs greater than After (recovery); 0: no bound
	Before int64 // only seqs less than Before; 0: no bound
	Limit  int   // at most Limit messages, the newest that match; 0: all kept
}

// History is a page of a room's history and the room's head.
type History struct {
	Epoch    string
	Seq      int64 // the room's last seq (0 before any message)
	Messages []protocol.Message
}

// Head is where a room's sequence stands: its epoch and last seq.
type Head struct {
	Epoch string
	Seq   int64
}

// Unstored is a room claimed by ClaimUnstored.
type Unstored struct {
	Room   string
	Epoch  string // the room's epoch; "" when the backbone no longer holds the room
	Seq    int64  // the room's head
	Stored int64  // every seq up to Stored is in the store
	Claim  int64  // the claim's token, for MarkStored
}

// Conn identifies one connection in presence.
type Conn struct {
	Client string
	User   string
	Node   string
	// KeyHash is the hash of a session's command key (SPEC §12: commands
	// over HTTP reach the session from any node); "" for a WebSocket.
	KeyHash string
}

// NodeInfo is a live node as it last announced itself.
type NodeInfo struct {
	Node        string
	Connections int
	Started     time.Time
}

// RoomPresence is a room's presence right after a Join or Leave.
type RoomPresence struct {
	// Count is the number of distinct users present in the room,
	// cluster-wide, with the change counted.
	Count int
	// Changed: the connection's user is new to the room (Join: its first
	// connection there) or gone from it (Leave: its last connection left).
	// False when the call changed nothing, too.
	Changed bool
}

// MembersQuery selects a page of a room's members.
type MembersQuery struct {
	After string // only users after this one (by byte order); "": from the first
	Limit int    // at most Limit users; 0: all
}

// MembersPage is a page of a room's members and the room's total.
type MembersPage struct {
	Members []protocol.Member // sorted by user
	Count   int               // distinct users present in the room, on every page
}

// RoomInfo is a room with its number of distinct users present and its head seq.
type RoomInfo struct {
	Room    string
	Members int
	Seq     int64
}

// Kind says what a Delivery carries.
type Kind int

const (
	KindMessage Kind = iota + 1 // a room message (Message and Payload set)
	KindEvent                   // a best-effort event (Payload) for a topic's local clients
	KindKick                    // close the connections of Topic's user with 4003
	// KindResync: the node missed a room's messages up to Message.Seq that
	// history no longer holds; Payload is the "resync" event for members.
	KindResync
	// KindPresence: User joined (Joined) or left the large room Topic. A
	// node gathers these into periodic "presence" events for its members
	// rather than sending each one on (SPEC §15). Best effort, like KindEvent.
	KindPresence
	// KindCommand: a frame of commands (Payload) posted over HTTP for the
	// session Client, which lives on the node of the topic (a TopicNode).
	KindCommand
	// KindSubscribe / KindUnsubscribe: join every connection of Topic's
	// user to Room, or remove them from it (SPEC §13: a grant or a revoke
	// of the admin API). Best effort, like KindEvent.
	KindSubscribe
	KindUnsubscribe
)

// Delivery is what a node receives from the backbone.
type Delivery struct {
	Kind    Kind
	Topic   Topic
	Message protocol.Message // KindMessage
	Payload []byte           // the encoded event, shared by every recipient
	Exclude string           // a client id that must not receive it
	User    string           // KindPresence
	Joined  bool             // KindPresence: joined, else left
	Client  string           // KindCommand: the session; KindEvent and KindKick on a TopicNode: the one connection
	Room    string           // KindSubscribe, KindUnsubscribe
}

// Topic names what a subscription or event is about.
type Topic struct {
	Kind TopicKind
	Name string // room or user name; empty for TopicBroadcast
}

// TopicKind separates room, user and broadcast topics so that no name of
// one kind can collide with another.
type TopicKind int

const (
	TopicRoom TopicKind = iota + 1
	TopicUser
	TopicBroadcast
	TopicNode // one node: what only that node can do (a session's commands)
)

// Room, User and Broadcast build topics.
func Room(name string) Topic { return Topic{Kind: TopicRoom, Name: name} }
func User(name string) Topic { return Topic{Kind: TopicUser, Name: name} }

// NodeTopic reaches the node with the id; every node subscribes to its own.
func NodeTopic(id string) Topic { return Topic{Kind: TopicNode, Name: id} }

// BroadcastTopic reaches every node.
var BroadcastTopic = Topic{Kind: TopicBroadcast}

// Options configure history and presence; both implementations take them.
type Options struct {
	HistorySize int
	HistoryTTL  time.Duration
	PresenceTTL time.Duration
	KeyTTL      time.Duration // idempotency window
	// HistoryMaxBytes bounds all rooms' history together, where the
	// backbone keeps it in process memory (the memory broker): the least
	// recently used rooms lose theirs first. 0: no bound. Redis bounds its
	// own memory (maxmemory).
	HistoryMaxBytes int64

	// Heads, when set, is where a room continues when the backbone holds
	// no sequence for it (a new room, one whose history expired, was
	// evicted, or was lost with Redis): the durable store's head, so that
	// the room keeps its epoch and clients recover across the loss (SPEC
	// §14). A Head with no epoch starts a new one at its seq. An error
	// fails the operation (ErrUnavailable): a room never forks its
	// sequence because the store could not be asked. Without Heads such a
	// room starts a new epoch at seq 0.
	Heads func(ctx context.Context, room string) (Head, error)
	// StoreDelay is how long after a publish its room is due for
	// ClaimUnstored: the publishing node's own write normally lands first.
	StoreDelay time.Duration
}

// NewEpoch makes a room sequence's epoch: random, so that a sequence that
// restarts (history lost) can never be mistaken for the old one.
func NewEpoch() string {
	var e [8]byte
	_, _ = rand.Read(e[:])
	return hex.EncodeToString(e[:])
}

// DefaultKeyTTL is how long an idempotency key is remembered (SPEC §3).
const DefaultKeyTTL = 5 * time.Minute

// WithDefaults fills unset options with the SPEC's defaults.
func (o Options) WithDefaults() Options {
	if o.HistorySize <= 0 {
		o.HistorySize = 200
	}
	if o.HistoryTTL <= 0 {
		o.HistoryTTL = 24 * time.Hour
	}
	if o.PresenceTTL <= 0 {
		o.PresenceTTL = time.Minute
	}
	if o.KeyTTL <= 0 {
		o.KeyTTL = DefaultKeyTTL
	}
	return o
}
