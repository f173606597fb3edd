-- Postgres' V20 orders events by the transactions that wrote them; SQLite has one writer, whose events
-- commit in the order of their numbers: nothing to change here. The version exists so both databases
-- have the same migration numbers.
SELECT 1;
