-- Messages, per-conversation sequence numbers, read state and per-device delivery.
-- Times are unix milliseconds.

-- One row per conversation: "u:{a}:{b}" (a < b) or "g:{gid}". last_seq is the seq of
-- the newest message; the next message takes last_seq + 1 in the same transaction,
-- so seqs have no gaps and follow commit order.
CREATE TABLE conversations (
    id          TEXT    PRIMARY KEY,
    -- The two users of a one-to-one conversation (NULL for groups).
    user_a      INTEGER,
    user_b      INTEGER,
    -- The group of a group conversation (NULL for one-to-one).
    group_id    INTEGER,
    last_seq    INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX conversations_user_a_idx ON conversations (user_a);
CREATE INDEX conversations_user_b_idx ON conversations (user_b);
CREATE INDEX conversations_group_idx ON conversations (group_id);

CREATE TABLE messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id  TEXT    NOT NULL REFERENCES conversations (id),
    seq              INTEGER NOT NULL,
    sender_id        INTEGER NOT NULL REFERENCES users (id),
    to_user          INTEGER,
    to_group         INTEGER,
    -- text | image | voice | video | file | location | custom
    msg_type         TEXT    NOT NULL,
    content          TEXT    NOT NULL,
    -- The sender's idempotency key: a repeated send returns the stored message.
    client_msg_id    TEXT    NOT NULL,
    reply_to         INTEGER,
    created_at       INTEGER NOT NULL,
    -- Set when recalled; the content is then cleared.
    recalled_at      INTEGER,
    CONSTRAINT messages_conversation_seq_key UNIQUE (conversation_id, seq),
    CONSTRAINT messages_sender_client_msg_id_key UNIQUE (sender_id, client_msg_id)
);

-- How far each user has read each conversation (drives unread counts).
CREATE TABLE read_state (
    user_id          INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    conversation_id  TEXT    NOT NULL,
    read_seq         INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    CONSTRAINT read_state_pkey PRIMARY KEY (user_id, conversation_id)
);

-- Devices (MQTT client ids) seen per user.
CREATE TABLE devices (
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id   TEXT    NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    CONSTRAINT devices_pkey PRIMARY KEY (user_id, client_id)
);

-- Highest seq of each conversation a device has acknowledged (QoS 1 PUBACK or a
-- "delivered" receipt); offline delivery resumes after it.
CREATE TABLE device_cursors (
    user_id          INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id        TEXT    NOT NULL,
    conversation_id  TEXT    NOT NULL,
    acked_seq        INTEGER NOT NULL,
    CONSTRAINT device_cursors_pkey PRIMARY KEY (user_id, client_id, conversation_id)
);
