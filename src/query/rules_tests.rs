//! Every rule's positives and negatives, through `analyze` as Analyze runs it.

use super::analyze::analyze;
use super::dialect::Dialect;
use super::rules::{self, RuleSettings, Severity};

fn ids(sql: &str, dialect: Dialect) -> Vec<&'static str> {
    analyze(sql, dialect, &RuleSettings::default())
        .findings
        .iter()
        .map(|f| f.rule_id)
        .collect()
}

fn fires(rule: rules::Rule, sql: &str) {
    for d in [Dialect::Generic, Dialect::Postgres, Dialect::Mysql] {
        assert!(
            ids(sql, d).contains(&rule.id),
            "{} should fire ({d:?}) on: {sql}\n got {:?}",
            rule.id,
            ids(sql, d)
        );
    }
}

fn silent(rule: rules::Rule, sql: &str) {
    for d in [Dialect::Generic, Dialect::Postgres, Dialect::Mysql] {
        assert!(
            !ids(sql, d).contains(&rule.id),
            "{} should not fire ({d:?}) on: {sql}",
            rule.id
        );
    }
}

#[test]
fn select_star() {
    silent(
        rules::SELECT_STAR,
        "SELECT id FROM a WHERE EXISTS (SELECT * FROM b WHERE b.a_id = a.id)",
    );
    fires(rules::SELECT_STAR, "SELECT * FROM users WHERE id = 1");
    fires(rules::SELECT_STAR, "SELECT u.* FROM users u WHERE u.id = 1");
    silent(
        rules::SELECT_STAR,
        "SELECT id, name FROM users WHERE id = 1",
    );
    silent(
        rules::SELECT_STAR,
        "SELECT count(*) FROM users WHERE id = 1",
    );
}

#[test]
fn select_without_where_or_limit() {
    fires(rules::UNBOUNDED_SELECT, "SELECT id FROM users");
    fires(
        rules::UNBOUNDED_SELECT,
        "SELECT a.id FROM a JOIN b ON a.id = b.a_id",
    );
    silent(rules::UNBOUNDED_SELECT, "SELECT id FROM users WHERE active");
    silent(rules::UNBOUNDED_SELECT, "SELECT id FROM users LIMIT 10");
    silent(rules::UNBOUNDED_SELECT, "SELECT 1");
    // A CTE is already what the statement chose to read; a table function
    // is not a table; an anti-join's subquery reads what it must.
    silent(
        rules::UNBOUNDED_SELECT,
        "WITH recent AS (SELECT id FROM orders WHERE day = 1) SELECT id FROM recent",
    );
    for_postgres_silent(
        rules::UNBOUNDED_SELECT,
        "SELECT g FROM generate_series(1, 10) AS g",
    );
    silent(
        rules::UNBOUNDED_SELECT,
        "SELECT id FROM a WHERE id NOT IN (SELECT a_id FROM b)",
    );
    for_postgres_silent(
        rules::UNBOUNDED_SELECT,
        "SELECT id FROM a WHERE id <> ALL (SELECT a_id FROM b)",
    );
    silent(
        rules::UNBOUNDED_SELECT,
        "SELECT id FROM a WHERE EXISTS (SELECT 1 FROM b)",
    );
    // The CTE's own body still counts.
    fires(
        rules::UNBOUNDED_SELECT,
        "WITH everything AS (SELECT id FROM orders) SELECT id FROM everything WHERE id = 1",
    );
}

fn for_postgres_silent(rule: rules::Rule, sql: &str) {
    assert!(
        !ids(sql, Dialect::Postgres).contains(&rule.id),
        "{} should not fire (Postgres) on: {sql}",
        rule.id
    );
}

#[test]
fn update_and_delete_without_where_are_critical() {
    fires(
        rules::UPDATE_WITHOUT_WHERE,
        "UPDATE users SET active = false",
    );
    silent(
        rules::UPDATE_WITHOUT_WHERE,
        "UPDATE users SET active = false WHERE id = 3",
    );
    fires(rules::DELETE_WITHOUT_WHERE, "DELETE FROM sessions");
    silent(
        rules::DELETE_WITHOUT_WHERE,
        "DELETE FROM sessions WHERE expires_at < now()",
    );
    let a = analyze(
        "DELETE FROM sessions",
        Dialect::Postgres,
        &RuleSettings::default(),
    );
    assert_eq!(a.findings[0].severity, Severity::Critical);
    assert_eq!(a.findings[0].snippet, "DELETE FROM sessions");
}

#[test]
fn leading_wildcard_like() {
    fires(
        rules::LEADING_WILDCARD,
        "SELECT id FROM users WHERE email LIKE '%@example.com'",
    );
    fires(
        rules::LEADING_WILDCARD,
        "SELECT id FROM users WHERE name ILIKE '_ob'",
    );
    silent(
        rules::LEADING_WILDCARD,
        "SELECT id FROM users WHERE email LIKE 'bob%'",
    );
    // A leading wildcard built by concatenation is one too.
    for_postgres_fires(
        rules::LEADING_WILDCARD,
        "SELECT id FROM users WHERE email LIKE '%' || $1",
    );
    silent(
        rules::LEADING_WILDCARD,
        "SELECT id FROM users WHERE email LIKE 'bob' || '%'",
    );
}

#[test]
fn null_comparison() {
    fires(
        rules::NULL_COMPARISON,
        "SELECT id FROM users WHERE deleted_at = NULL",
    );
    fires(
        rules::NULL_COMPARISON,
        "SELECT id FROM users WHERE deleted_at <> NULL",
    );
    silent(
        rules::NULL_COMPARISON,
        "SELECT id FROM users WHERE deleted_at IS NULL",
    );
}

#[test]
fn not_in_subquery_and_in_subquery() {
    fires(
        rules::NOT_IN_SUBQUERY,
        "SELECT id FROM a WHERE id NOT IN (SELECT a_id FROM b)",
    );
    silent(
        rules::NOT_IN_SUBQUERY,
        "SELECT id FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.a_id = a.id)",
    );
    silent(
        rules::NOT_IN_SUBQUERY,
        "SELECT id FROM a WHERE id NOT IN (1, 2)",
    );
    // `<> ALL (subquery)` is the same NULL trap as NOT IN.
    for_postgres_fires(
        rules::NOT_IN_SUBQUERY,
        "SELECT id FROM a WHERE id <> ALL (SELECT a_id FROM b)",
    );
    fires(
        rules::SUBQUERY_AS_JOIN,
        "SELECT id FROM a WHERE id IN (SELECT a_id FROM b)",
    );
    silent(
        rules::SUBQUERY_AS_JOIN,
        "SELECT id FROM a WHERE id IN (1, 2, 3)",
    );
}

#[test]
fn implicit_cross_join() {
    // Only when no predicate links the tables: a real cross join.
    fires(
        rules::IMPLICIT_CROSS_JOIN,
        "SELECT a.id FROM a, b WHERE a.x = 1",
    );
    fires(rules::IMPLICIT_CROSS_JOIN, "SELECT a.id FROM a, b");
    fires(
        rules::IMPLICIT_CROSS_JOIN,
        "SELECT a.id FROM a, b, c WHERE a.id = b.a_id AND c.z = 2",
    );
    silent(
        rules::IMPLICIT_CROSS_JOIN,
        "SELECT a.id FROM a, b WHERE a.id = b.a_id",
    );
    silent(
        rules::IMPLICIT_CROSS_JOIN,
        "SELECT o.id FROM orders o, customers c, items i WHERE o.customer_id = c.id AND i.order_id = o.id AND c.active",
    );
    silent(
        rules::IMPLICIT_CROSS_JOIN,
        "SELECT a.id FROM a JOIN b ON a.id = b.a_id WHERE a.x = 1",
    );
    for_postgres_silent(
        rules::IMPLICIT_CROSS_JOIN,
        "SELECT t.id, x.n FROM t, LATERAL (SELECT count(*) AS n FROM u WHERE u.t_id = t.id) x",
    );
}

#[test]
fn order_by_random() {
    fires(
        rules::ORDER_BY_RANDOM,
        "SELECT id FROM quotes ORDER BY RANDOM() LIMIT 1",
    );
    fires(
        rules::ORDER_BY_RANDOM,
        "SELECT id FROM quotes ORDER BY rand() LIMIT 1",
    );
    silent(
        rules::ORDER_BY_RANDOM,
        "SELECT id FROM quotes ORDER BY id LIMIT 1",
    );
}

#[test]
fn function_on_column_in_where() {
    fires(
        rules::FUNCTION_ON_COLUMN,
        "SELECT id FROM users WHERE lower(email) = 'a@b.c'",
    );
    fires(
        rules::FUNCTION_ON_COLUMN,
        "SELECT id FROM orders WHERE status = 'x' AND date(created_at) = '2024-01-01'",
    );
    silent(
        rules::FUNCTION_ON_COLUMN,
        "SELECT id FROM users WHERE email = lower('A@B.C')",
    );
    silent(
        rules::FUNCTION_ON_COLUMN,
        "SELECT lower(email) FROM users WHERE id = 1",
    );
    // Functions compared with IN, and casts of a column, defeat an index too.
    fires(
        rules::FUNCTION_ON_COLUMN,
        "SELECT id FROM addresses WHERE substr(zip, 1, 5) IN ('12345', '67890')",
    );
    fires(
        rules::FUNCTION_ON_COLUMN,
        "SELECT id FROM orders WHERE CAST(created_at AS date) = '2024-01-01'",
    );
    for_postgres_fires(
        rules::FUNCTION_ON_COLUMN,
        "SELECT id FROM orders WHERE created_at::date = '2024-01-01'",
    );
    silent(
        rules::FUNCTION_ON_COLUMN,
        "SELECT id FROM orders WHERE created_at = CAST('2024-01-01' AS timestamp)",
    );
    // A CTE has no index to miss.
    silent(
        rules::FUNCTION_ON_COLUMN,
        "WITH r AS (SELECT id, email FROM users WHERE id < 10) SELECT id FROM r WHERE lower(email) = 'a'",
    );
}

fn for_postgres_fires(rule: rules::Rule, sql: &str) {
    assert!(
        ids(sql, Dialect::Postgres).contains(&rule.id),
        "{} should fire (Postgres) on: {sql}\n got {:?}",
        rule.id,
        ids(sql, Dialect::Postgres)
    );
}

#[test]
fn long_in_list_has_a_threshold() {
    let items: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let long = format!("SELECT id FROM t WHERE id IN ({})", items.join(", "));
    fires(rules::LONG_IN_LIST, &long);
    silent(
        rules::LONG_IN_LIST,
        "SELECT id FROM t WHERE id IN (1, 2, 3)",
    );
    let relaxed = RuleSettings {
        max_in_list: 200,
        ..RuleSettings::default()
    };
    assert!(
        analyze(&long, Dialect::Generic, &relaxed)
            .findings
            .iter()
            .all(|f| f.rule_id != rules::LONG_IN_LIST.id)
    );
    let message = &analyze(&long, Dialect::Generic, &RuleSettings::default())
        .findings
        .into_iter()
        .find(|f| f.rule_id == rules::LONG_IN_LIST.id)
        .unwrap()
        .message;
    assert!(message.contains("101 items (above 100)"), "{message}");
}

#[test]
fn large_offset() {
    fires(
        rules::LARGE_OFFSET,
        "SELECT id FROM t ORDER BY id LIMIT 20 OFFSET 50000",
    );
    silent(
        rules::LARGE_OFFSET,
        "SELECT id FROM t ORDER BY id LIMIT 20 OFFSET 40",
    );
    assert!(
        ids(
            "SELECT id FROM t ORDER BY id LIMIT 50000, 20",
            Dialect::Mysql
        )
        .contains(&rules::LARGE_OFFSET.id)
    );
}

#[test]
fn insert_without_columns() {
    fires(
        rules::INSERT_WITHOUT_COLUMNS,
        "INSERT INTO users VALUES (1, 'bob')",
    );
    silent(
        rules::INSERT_WITHOUT_COLUMNS,
        "INSERT INTO users (id, name) VALUES (1, 'bob')",
    );
}

#[test]
fn distinct_with_join() {
    fires(
        rules::DISTINCT_WITH_JOIN,
        "SELECT DISTINCT c.id FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.total > 5",
    );
    silent(
        rules::DISTINCT_WITH_JOIN,
        "SELECT DISTINCT country FROM customers WHERE active",
    );
}

#[test]
fn mixed_and_or_without_parentheses() {
    fires(
        rules::MIXED_AND_OR,
        "SELECT id FROM t WHERE a = 1 AND b = 2 OR c = 3",
    );
    silent(
        rules::MIXED_AND_OR,
        "SELECT id FROM t WHERE a = 1 AND (b = 2 OR c = 3)",
    );
    silent(
        rules::MIXED_AND_OR,
        "SELECT id FROM t WHERE (a = 1 AND b = 2) OR c = 3",
    );
    silent(rules::MIXED_AND_OR, "SELECT id FROM t WHERE a = 1 OR c = 3");
}

#[test]
fn union_without_all() {
    fires(
        rules::UNION_WITHOUT_ALL,
        "SELECT id FROM a WHERE x = 1 UNION SELECT id FROM b WHERE y = 2",
    );
    silent(
        rules::UNION_WITHOUT_ALL,
        "SELECT id FROM a WHERE x = 1 UNION ALL SELECT id FROM b WHERE y = 2",
    );
}

#[test]
fn parse_errors_and_multiple_statements() {
    let a = analyze("SELEC id FROM", Dialect::Postgres, &RuleSettings::default());
    assert_eq!(a.findings.len(), 1);
    assert_eq!(a.findings[0].rule_id, "parse_error");
    assert_eq!(a.fingerprinted.fingerprint.len(), 16);
    assert_eq!(a.statement_kind, "OTHER");
    fires(rules::MULTIPLE_STATEMENTS, "SELECT 1; SELECT 2");
    silent(rules::MULTIPLE_STATEMENTS, "SELECT 1;");
}

#[test]
fn disabled_rules_are_not_reported() {
    let settings = RuleSettings {
        disabled: ["select_star".to_string()].into_iter().collect(),
        ..RuleSettings::default()
    };
    let a = analyze("SELECT * FROM t WHERE id = 1", Dialect::Generic, &settings);
    assert!(a.findings.is_empty(), "{:?}", a.findings);
}

#[test]
fn every_rule_has_a_section_in_the_docs() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/query-rules.md"))
        .unwrap();
    for rule in rules::ALL {
        assert!(
            doc.contains(&format!("## `{}`", rule.id)),
            "docs/query-rules.md has no section for {}",
            rule.id
        );
    }
    assert!(rules::ALL.len() >= 16);
}

#[test]
fn kind_and_tables_come_from_the_parse() {
    let a = analyze(
        "WITH recent AS (SELECT * FROM orders WHERE created_at > now()) SELECT c.name FROM Customers c JOIN recent r ON r.customer_id = c.id",
        Dialect::Postgres,
        &RuleSettings::default(),
    );
    assert_eq!(a.statement_kind, "SELECT");
    assert_eq!(a.tables, vec!["customers", "orders"]);
    let kinds: Vec<&str> = [
        "INSERT INTO t (a) VALUES (1)",
        "UPDATE t SET a = 1 WHERE b = 2",
        "DELETE FROM t WHERE a = 1",
        "CREATE TABLE t (a int)",
        "BEGIN",
        "SELEC broken",
        "UPDATE broken broken",
    ]
    .iter()
    .map(|sql| analyze(sql, Dialect::Generic, &RuleSettings::default()).statement_kind)
    .collect();
    assert_eq!(
        kinds,
        vec![
            "INSERT", "UPDATE", "DELETE", "DDL", "OTHER", "OTHER", "UPDATE"
        ]
    );
}

#[test]
fn hostile_input_answers_without_a_panic() {
    let deep = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let a = analyze(&deep, Dialect::Postgres, &RuleSettings::default());
    assert_eq!(a.findings[0].rule_id, "parse_error");
    for garbage in [
        "",
        ";;;",
        "\u{0}\u{1}\u{2}",
        "'",
        "\"",
        "/* never closed",
        "$$",
        "SELECT 'é' || x'zz'",
    ] {
        let a = analyze(garbage, Dialect::Generic, &RuleSettings::default());
        assert_eq!(a.fingerprinted.fingerprint.len(), 16, "{garbage:?}");
    }
}

/// Valid SQL the parser does not know is information, not a parse error;
/// where the construct can be left out, the rest is still checked.
#[test]
fn valid_sql_the_parser_does_not_know_is_not_a_parse_error() {
    let cases = [
        (
            "SELECT sum(x) OVER (ORDER BY t ROWS BETWEEN 1 PRECEDING AND CURRENT ROW EXCLUDE TIES) FROM t WHERE a = 1",
            Dialect::Postgres,
            true,
        ),
        (
            "SELECT sum(x) OVER (ORDER BY t GROUPS BETWEEN 1 PRECEDING AND CURRENT ROW EXCLUDE TIES) FROM t WHERE a = 1",
            Dialect::Postgres,
            true,
        ),
        ("TABLE t", Dialect::Postgres, false),
        (
            "SELECT * FROM ROWS FROM (generate_series(1, 3), generate_series(1, 4)) AS x(a, b)",
            Dialect::Postgres,
            false,
        ),
        (
            "SELECT id FROM t WHERE id = 1 FOR NO KEY UPDATE",
            Dialect::Postgres,
            true,
        ),
        (
            "SELECT id FROM t WHERE id = 1 FOR KEY SHARE",
            Dialect::Postgres,
            true,
        ),
        ("VACUUM (ANALYZE) t", Dialect::Postgres, false),
        ("DO $$ BEGIN PERFORM 1; END $$", Dialect::Postgres, false),
        (
            "SELECT 'a'\n 'b' FROM t WHERE id = 1",
            Dialect::Postgres,
            true,
        ),
        (
            "SELECT a, b FROM t WHERE c = 1 GROUP BY DISTINCT a, b",
            Dialect::Postgres,
            true,
        ),
        (
            "SELECT id FROM t WHERE x BETWEEN SYMMETRIC 5 AND 1",
            Dialect::Postgres,
            true,
        ),
        (
            "SELECT xmlelement(name foo, 'bar') FROM t WHERE id = 1",
            Dialect::Postgres,
            false,
        ),
        (
            "SELECT id FROM t WHERE id = 1 LOCK IN SHARE MODE",
            Dialect::Mysql,
            true,
        ),
    ];
    for (sql, d, rest_analyzed) in cases {
        let a = analyze(sql, d, &RuleSettings::default());
        let ids: Vec<&str> = a.findings.iter().map(|f| f.rule_id).collect();
        assert!(!ids.contains(&"parse_error"), "{sql}: {ids:?}");
        let note = a
            .findings
            .iter()
            .find(|f| f.rule_id == "not_analyzed")
            .unwrap_or_else(|| panic!("{sql}: no not_analyzed in {ids:?}"));
        assert_eq!(note.severity, Severity::Info);
        assert!(
            note.message.starts_with("not analyzed: "),
            "{}",
            note.message
        );
        assert_eq!(
            note.message
                .contains("the rest of the statement was analyzed"),
            rest_analyzed,
            "{sql}: {}",
            note.message
        );
        if rest_analyzed {
            assert!(!a.tables.is_empty(), "{sql}: tables come from the rest");
        }
    }
    // The rest is checked by the rules: a leading wildcard next to a locking clause.
    let a = analyze(
        "SELECT id FROM t WHERE email LIKE '%x' FOR NO KEY UPDATE",
        Dialect::Postgres,
        &RuleSettings::default(),
    );
    assert!(
        a.findings
            .iter()
            .any(|f| f.rule_id == "leading_wildcard_like")
    );
    // Text that is simply wrong is still a parse error.
    let a = analyze(
        "SELEC id FROM t",
        Dialect::Postgres,
        &RuleSettings::default(),
    );
    assert!(a.findings.iter().any(|f| f.rule_id == "parse_error"));
}
