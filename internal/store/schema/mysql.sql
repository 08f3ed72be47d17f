-- Durable history and offline direct messages (SPEC §14), for MySQL and
-- MariaDB. This file is the source of the models: after a change run, from
-- the repository root,
--   TMPDIR=$(mktemp -d) go tool goctl model mysql ddl -src internal/store/schema/mysql.sql -dir internal/store/model --style gozero
-- and make the same change in sqlite.sql (a test compares the two).
-- Names compare byte for byte (utf8mb4_bin), as they do in Redis.
-- store.Open applies the statements one by one, so none may contain a
-- semicolon other than the one that ends it.

CREATE TABLE IF NOT EXISTS `room` (
  `name` varchar(64) NOT NULL COMMENT 'room name',
  `epoch` varchar(32) NOT NULL COMMENT 'epoch of the last stored message',
  `seq` bigint NOT NULL COMMENT 'seq of the last stored message: the room continues from it',
  PRIMARY KEY (`name`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin COMMENT='each room''s head, kept when its messages expire';

CREATE TABLE IF NOT EXISTS `message` (
  `id` bigint NOT NULL AUTO_INCREMENT,
  `room` varchar(64) NOT NULL,
  `epoch` varchar(32) NOT NULL,
  `seq` bigint NOT NULL,
  `msg_id` varchar(64) NOT NULL COMMENT 'the message id clients see',
  `sender` varchar(64) NOT NULL,
  `text` text NOT NULL,
  `ts` bigint NOT NULL COMMENT 'unix ms',
  PRIMARY KEY (`id`),
  UNIQUE KEY `message_room_epoch_seq` (`room`, `epoch`, `seq`),
  KEY `message_ts` (`ts`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin COMMENT='room messages, each (room, epoch, seq) once';

CREATE TABLE IF NOT EXISTS `offline_direct` (
  `id` bigint NOT NULL AUTO_INCREMENT COMMENT 'insertion order: directs are delivered oldest first',
  `recipient` varchar(64) NOT NULL,
  `msg_id` varchar(64) NOT NULL,
  `sender` varchar(64) NOT NULL,
  `text` text NOT NULL,
  `ts` bigint NOT NULL COMMENT 'unix ms',
  PRIMARY KEY (`id`),
  KEY `offline_direct_recipient_id` (`recipient`, `id`),
  KEY `offline_direct_ts` (`ts`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin COMMENT='direct messages stored for users who were offline';
