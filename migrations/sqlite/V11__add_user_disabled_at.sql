-- An admin may disable an account: it can no longer sign in, and its logins are revoked.
ALTER TABLE users ADD COLUMN disabled_at TEXT;
