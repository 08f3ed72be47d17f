-- The tables of mysql.sql in SQLite's syntax: the same tables, columns and
-- indexes (a test compares the two). SQLite compares text byte for byte
-- (BINARY), like utf8mb4_bin. AUTOINCREMENT keeps ids from being reused, as
-- MySQL's AUTO_INCREMENT does. store.Open applies the statements one by one,
-- so none may contain a semicolon other than the one that ends it.

CREATE TABLE IF NOT EXISTS `room` (
  `name` varchar(64) NOT NULL PRIMARY KEY,
  `epoch` varchar(32) NOT NULL,
  `seq` bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS `message` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT,
  `room` varchar(64) NOT NULL,
  `epoch` varchar(32) NOT NULL,
  `seq` bigint NOT NULL,
  `msg_id` varchar(64) NOT NULL,
  `sender` varchar(64) NOT NULL,
  `text` text NOT NULL,
  `ts` bigint NOT NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS `message_room_epoch_seq` ON `message` (`room`, `epoch`, `seq`);

CREATE INDEX IF NOT EXISTS `message_ts` ON `message` (`ts`);

CREATE TABLE IF NOT EXISTS `offline_direct` (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT,
  `recipient` varchar(64) NOT NULL,
  `msg_id` varchar(64) NOT NULL,
  `sender` varchar(64) NOT NULL,
  `text` text NOT NULL,
  `ts` bigint NOT NULL
);

CREATE INDEX IF NOT EXISTS `offline_direct_recipient_id` ON `offline_direct` (`recipient`, `id`);

CREATE INDEX IF NOT EXISTS `offline_direct_ts` ON `offline_direct` (`ts`);
