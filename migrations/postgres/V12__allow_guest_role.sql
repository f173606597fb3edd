-- Guests (role 'guest'): visitors of a website chatting through the widget without an account.
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('user', 'admin', 'agent', 'guest'));
CREATE INDEX idx_users_role_created ON users (role, created_at);
