-- A mixed corpus for query-analysis benchmarks: OLTP statements as ORMs and
-- hand-written services send them, then TPC-H's analytic queries. One
-- statement per block; blocks are separated by a line holding only ";;".
SELECT id, email, name, created_at FROM users WHERE id = 42
;;
SELECT * FROM users WHERE email = 'alice@example.com' LIMIT 1
;;
SELECT u.id, u.name, count(o.id) AS orders FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE u.created_at > '2024-01-01' GROUP BY u.id, u.name ORDER BY orders DESC LIMIT 20
;;
INSERT INTO orders (user_id, total, currency, status, created_at) VALUES (42, 129.50, 'EUR', 'pending', now())
;;
INSERT INTO order_items (order_id, product_id, quantity, price) VALUES (1001, 7, 2, 19.99), (1001, 9, 1, 5.00), (1001, 12, 4, 2.50)
;;
UPDATE orders SET status = 'paid', paid_at = now() WHERE id = 1001 AND status = 'pending'
;;
UPDATE inventory SET quantity = quantity - 2 WHERE product_id = 7 AND quantity >= 2
;;
DELETE FROM sessions WHERE expires_at < now() - interval '1 day'
;;
SELECT p.id, p.name, p.price FROM products p WHERE p.category_id IN (3, 5, 8, 13, 21) AND p.active = true ORDER BY p.price ASC LIMIT 50 OFFSET 100
;;
SELECT id FROM carts WHERE user_id = $1 AND updated_at > $2
;;
SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > 100 AND o.status IN ('paid', 'shipped') ORDER BY o.created_at DESC LIMIT 25
;;
SELECT count(*) FROM events WHERE tenant_id = 17 AND kind = 'login' AND at BETWEEN '2024-05-01' AND '2024-05-31'
;;
INSERT INTO audit_log (actor, action, target, at) VALUES ('svc-billing', 'refund', 'order:1001', '2024-05-02T10:00:00Z')
;;
SELECT a.id, a.balance FROM accounts a WHERE a.id = 5 FOR UPDATE
;;
UPDATE accounts SET balance = balance + 25.00 WHERE id = 9
;;
SELECT DISTINCT tag FROM post_tags pt JOIN posts p ON p.id = pt.post_id WHERE p.author_id = 3
;;
SELECT id, title FROM posts WHERE lower(title) LIKE '%rust%' ORDER BY published_at DESC LIMIT 10
;;
SELECT * FROM notifications WHERE user_id = 42 AND read_at IS NULL ORDER BY created_at DESC
;;
WITH recent AS (SELECT user_id, max(created_at) AS last_order FROM orders GROUP BY user_id) SELECT u.email FROM users u JOIN recent r ON r.user_id = u.id WHERE r.last_order < now() - interval '90 days'
;;
SELECT s.id FROM subscriptions s WHERE s.plan = 'pro' AND s.renews_at < '2024-06-01' AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.subscription_id = s.id AND i.paid)
;;
select
    l_returnflag,
    l_linestatus,
    sum(l_quantity) as sum_qty,
    sum(l_extendedprice) as sum_base_price,
    sum(l_extendedprice * (1 - l_discount)) as sum_disc_price,
    sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) as sum_charge,
    avg(l_quantity) as avg_qty,
    avg(l_extendedprice) as avg_price,
    avg(l_discount) as avg_disc,
    count(*) as count_order
from
    lineitem
where
    l_shipdate <= date '1998-12-01' - interval '90' day
group by
    l_returnflag,
    l_linestatus
order by
    l_returnflag,
    l_linestatus
;;
select
    l_orderkey,
    sum(l_extendedprice * (1 - l_discount)) as revenue,
    o_orderdate,
    o_shippriority
from
    customer,
    orders,
    lineitem
where
    c_mktsegment = 'BUILDING'
    and c_custkey = o_custkey
    and l_orderkey = o_orderkey
    and o_orderdate < date '1995-03-15'
    and l_shipdate > date '1995-03-15'
group by
    l_orderkey,
    o_orderdate,
    o_shippriority
order by
    revenue desc,
    o_orderdate
limit 10
;;
select
    o_orderpriority,
    count(*) as order_count
from
    orders
where
    o_orderdate >= date '1993-07-01'
    and o_orderdate < date '1993-07-01' + interval '3' month
    and exists (
        select * from lineitem where l_orderkey = o_orderkey and l_commitdate < l_receiptdate
    )
group by
    o_orderpriority
order by
    o_orderpriority
;;
select
    n_name,
    sum(l_extendedprice * (1 - l_discount)) as revenue
from
    customer, orders, lineitem, supplier, nation, region
where
    c_custkey = o_custkey
    and l_orderkey = o_orderkey
    and l_suppkey = s_suppkey
    and c_nationkey = s_nationkey
    and s_nationkey = n_nationkey
    and n_regionkey = r_regionkey
    and r_name = 'ASIA'
    and o_orderdate >= date '1994-01-01'
    and o_orderdate < date '1994-01-01' + interval '1' year
group by
    n_name
order by
    revenue desc
;;
select
    sum(l_extendedprice * l_discount) as revenue
from
    lineitem
where
    l_shipdate >= date '1994-01-01'
    and l_shipdate < date '1994-01-01' + interval '1' year
    and l_discount between 0.06 - 0.01 and 0.06 + 0.01
    and l_quantity < 24
;;
select
    c_custkey,
    c_name,
    sum(l_extendedprice * (1 - l_discount)) as revenue,
    c_acctbal,
    n_name,
    c_address,
    c_phone,
    c_comment
from
    customer, orders, lineitem, nation
where
    c_custkey = o_custkey
    and l_orderkey = o_orderkey
    and o_orderdate >= date '1993-10-01'
    and o_orderdate < date '1993-10-01' + interval '3' month
    and l_returnflag = 'R'
    and c_nationkey = n_nationkey
group by
    c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment
order by
    revenue desc
limit 20
;;
select
    l_shipmode,
    sum(case when o_orderpriority = '1-URGENT' or o_orderpriority = '2-HIGH' then 1 else 0 end) as high_line_count,
    sum(case when o_orderpriority <> '1-URGENT' and o_orderpriority <> '2-HIGH' then 1 else 0 end) as low_line_count
from
    orders, lineitem
where
    o_orderkey = l_orderkey
    and l_shipmode in ('MAIL', 'SHIP')
    and l_commitdate < l_receiptdate
    and l_shipdate < l_commitdate
    and l_receiptdate >= date '1994-01-01'
    and l_receiptdate < date '1994-01-01' + interval '1' year
group by
    l_shipmode
order by
    l_shipmode
;;
select
    100.00 * sum(case when p_type like 'PROMO%' then l_extendedprice * (1 - l_discount) else 0 end)
        / sum(l_extendedprice * (1 - l_discount)) as promo_revenue
from
    lineitem, part
where
    l_partkey = p_partkey
    and l_shipdate >= date '1995-09-01'
    and l_shipdate < date '1995-09-01' + interval '1' month
;;
select
    s_name,
    count(*) as numwait
from
    supplier, lineitem l1, orders, nation
where
    s_suppkey = l1.l_suppkey
    and o_orderkey = l1.l_orderkey
    and o_orderstatus = 'F'
    and l1.l_receiptdate > l1.l_commitdate
    and exists (select * from lineitem l2 where l2.l_orderkey = l1.l_orderkey and l2.l_suppkey <> l1.l_suppkey)
    and not exists (select * from lineitem l3 where l3.l_orderkey = l1.l_orderkey and l3.l_suppkey <> l1.l_suppkey and l3.l_receiptdate > l3.l_commitdate)
    and s_nationkey = n_nationkey
    and n_name = 'SAUDI ARABIA'
group by
    s_name
order by
    numwait desc,
    s_name
limit 100
