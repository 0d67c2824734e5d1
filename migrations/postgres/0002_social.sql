-- The social graph: friend requests, friendships, blocks, groups, members and join
-- requests. Times are unix milliseconds.

CREATE TABLE friend_requests (
    id          BIGSERIAL PRIMARY KEY,
    from_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    to_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message     TEXT    NOT NULL DEFAULT '',
    -- pending | accepted | rejected | canceled
    state       TEXT    NOT NULL DEFAULT 'pending',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    CONSTRAINT friend_requests_not_self CHECK (from_id <> to_id)
);
-- At most one pending request per ordered pair.
CREATE UNIQUE INDEX friend_requests_pending_key ON friend_requests (from_id, to_id)
    WHERE state = 'pending';
CREATE INDEX friend_requests_to_idx ON friend_requests (to_id, state);
CREATE INDEX friend_requests_from_idx ON friend_requests (from_id, state);

-- A friendship is stored in both directions, so "my friends" is one index range.
CREATE TABLE friendships (
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    friend_id   BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    CONSTRAINT friendships_pkey PRIMARY KEY (user_id, friend_id)
);

-- user_id blocks blocked_id: blocked_id can neither message nor send requests to user_id.
CREATE TABLE blocks (
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id  BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    CONSTRAINT blocks_pkey PRIMARY KEY (user_id, blocked_id)
);

-- "groups" is a keyword in both engines, hence chat_groups.
CREATE TABLE chat_groups (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT    NOT NULL,
    announcement  TEXT    NOT NULL DEFAULT '',
    -- open | approval | invite_only
    join_policy   TEXT    NOT NULL,
    owner_id      BIGINT NOT NULL REFERENCES users (id),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    -- Set when the owner dissolves the group; a dissolved group accepts nothing.
    dissolved_at  BIGINT
);
CREATE INDEX chat_groups_name_lower_idx ON chat_groups (lower(name));

CREATE TABLE group_members (
    group_id     BIGINT NOT NULL REFERENCES chat_groups (id) ON DELETE CASCADE,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- owner | admin | member
    role         TEXT    NOT NULL DEFAULT 'member',
    -- The member may not send until this time (NULL: not muted).
    muted_until  BIGINT,
    joined_at    BIGINT NOT NULL,
    CONSTRAINT group_members_pkey PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user_idx ON group_members (user_id);

CREATE TABLE group_join_requests (
    id          BIGSERIAL PRIMARY KEY,
    group_id    BIGINT NOT NULL REFERENCES chat_groups (id) ON DELETE CASCADE,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message     TEXT    NOT NULL DEFAULT '',
    -- pending | accepted | rejected
    state       TEXT    NOT NULL DEFAULT 'pending',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX group_join_requests_pending_key ON group_join_requests (group_id, user_id)
    WHERE state = 'pending';
