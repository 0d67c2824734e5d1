-- System notices sent by administrators (SYSTEM_NOTICE events). Online devices get them
-- at once; a device that was away gets the ones it has not had when it next subscribes
-- to its inbox (its position is kept in device_cursors under the pseudo-conversation
-- "sys:notices", seq = notice id).
CREATE TABLE notices (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- NULL: every user.
    user_id     INTEGER REFERENCES users (id) ON DELETE CASCADE,
    text        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX notices_user_idx ON notices (user_id);
