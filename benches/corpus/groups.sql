-- Statements with the groups they must fall in: every block names its
-- group (and dialect, postgres unless given); statements of one group must
-- share a fingerprint, statements of different groups must not, and none may
-- be a parse_error (all are valid SQL). The project's own statements, one
-- for each construct query analysis learned to handle; checked by
-- `query::fingerprint::tests::the_corpus_groups_hold`. Blocks are separated by
-- a line holding only ";;".
-- group: in-list
SELECT id FROM products WHERE category_id IN (3, 5, 8)
;;
-- group: in-list
SELECT id FROM products WHERE category_id IN (13)
;;
-- group: in-list-cast
SELECT id FROM products WHERE category_id IN ($1::bigint, $2::bigint, $3::bigint)
;;
-- group: in-list-cast
SELECT id FROM products WHERE category_id IN ($1::bigint)
;;
-- group: any-array
SELECT id FROM products WHERE category_id = ANY(ARRAY[1, 2, 3])
;;
-- group: any-array
SELECT id FROM products WHERE category_id = ANY(ARRAY[4])
;;
-- group: array-overlap
SELECT id FROM posts WHERE tags && ARRAY['rust', 'grpc']
;;
-- group: array-overlap
SELECT id FROM posts WHERE tags && ARRAY['sql']
;;
-- group: row-values
SELECT id FROM shipments WHERE (region, code) IN ((1, 'a'), (2, 'b'), (3, 'c'))
;;
-- group: row-values
SELECT id FROM shipments WHERE (region, code) IN ((9, 'z'))
;;
-- group: jsonb-key
SELECT id FROM documents WHERE body ? 'author'
;;
-- group: jsonb-key
SELECT id FROM documents WHERE body ? 'title'
;;
-- group: jsonb-equals
SELECT id FROM documents WHERE body = 'author'
;;
-- group: typmod
SELECT name::varchar(10) FROM users WHERE id = 1
;;
-- group: typmod
SELECT name::varchar(64) FROM users WHERE id = 2
;;
-- group: lock-no-key
SELECT id FROM jobs WHERE state = 'ready' ORDER BY id LIMIT 10 FOR NO KEY UPDATE SKIP LOCKED
;;
-- group: lock-no-key
SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED
;;
-- group: lock-key-share
SELECT id FROM accounts WHERE id = 7 FOR KEY SHARE
;;
-- group: symmetric
SELECT id FROM readings WHERE value BETWEEN SYMMETRIC 10 AND 1
;;
-- group: group-by-distinct
SELECT region, product FROM sales WHERE year = 2024 GROUP BY DISTINCT region, product
;;
-- group: frame-exclude
SELECT day, sum(amount) OVER (ORDER BY day ROWS BETWEEN 2 PRECEDING AND CURRENT ROW EXCLUDE TIES) FROM payments WHERE account = 3
;;
-- group: table
TABLE settings
;;
-- group: rows-from
SELECT * FROM ROWS FROM (generate_series(1, 3), generate_series(1, 4)) AS x(a, b)
;;
-- group: vacuum
VACUUM (ANALYZE) orders
;;
-- group: do-block
DO $$ BEGIN PERFORM pg_sleep(0); END $$
;;
-- group: adjacent-literals
SELECT 'part one'
  'part two' FROM greetings WHERE id = 1
;;
-- group: xmlelement
SELECT xmlelement(name item, title) FROM books WHERE id = 3
;;
-- group: cte
WITH recent AS (SELECT id, total FROM orders WHERE created_at > now() - interval '1 day') SELECT id FROM recent
;;
-- group: lateral
SELECT c.id, last.total FROM customers c, LATERAL (SELECT total FROM orders o WHERE o.customer_id = c.id ORDER BY o.id DESC LIMIT 1) last
;;
-- group: mysql-share-mode
-- dialect: mysql
SELECT id FROM accounts WHERE id = 7 LOCK IN SHARE MODE
;;
-- group: mysql-share-mode
-- dialect: mysql
SELECT id FROM accounts WHERE id = 8 LOCK IN SHARE MODE
