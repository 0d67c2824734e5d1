-- Uploaded files (attachments), stored once per content: the SHA-256 of the bytes is
-- the key here and the file name on disk (<data_dir>/files/<first 2 hex>/<sha256>).
-- Times are unix milliseconds.

CREATE TABLE files (
    -- Lowercase hex SHA-256 of the content.
    sha256       TEXT    NOT NULL,
    size         INTEGER  NOT NULL,
    -- Type sniffed from the bytes at upload (e.g. image/png), served as Content-Type.
    mime         TEXT    NOT NULL,
    -- Who uploaded it first (identical later uploads keep this row).
    uploader_id  INTEGER  CONSTRAINT files_uploader_fkey REFERENCES users (id) ON DELETE SET NULL,
    created_at   INTEGER  NOT NULL,
    CONSTRAINT files_pkey PRIMARY KEY (sha256),
    CONSTRAINT files_size_check CHECK (size >= 0)
);
CREATE INDEX files_uploader_idx ON files (uploader_id);
