-- Accounts and access tokens.
-- Times are unix milliseconds. Usernames are lowercase (checked by the service) and
-- never change; passwords are stored only as Argon2id PHC strings, tokens only as
-- SHA-256 hex digests.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    nickname      TEXT    NOT NULL DEFAULT '',
    avatar_url    TEXT    NOT NULL DEFAULT '',
    bio           TEXT    NOT NULL DEFAULT '',
    -- Last reported location, for "people nearby"; NULL until set.
    lat           DOUBLE PRECISION,
    lon           DOUBLE PRECISION,
    location_at   BIGINT,
    -- 1 when an admin disabled the account: no login, no CONNECT.
    disabled      BIGINT  NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);
-- Prefix search on nickname (case-insensitive).
CREATE INDEX users_nickname_lower_idx ON users (lower(nickname) text_pattern_ops);
CREATE INDEX users_location_idx ON users (lat, lon) WHERE lat IS NOT NULL;

CREATE TABLE tokens (
    id          BIGSERIAL PRIMARY KEY,
    user_id     BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the token, hex. The token itself is never stored.
    token_hash  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    -- Set when revoked (logout, password change, admin); a revoked token never works.
    revoked_at  BIGINT,
    CONSTRAINT tokens_hash_key UNIQUE (token_hash)
);
CREATE INDEX tokens_user_idx ON tokens (user_id);
