//! Anti-pattern rules over sqlparser's syntax tree. Each rule has a stable id,
//! a severity and a message that says what to do instead; docs/query-rules.md
//! has an example and the fix for each. Rules can be switched off and their
//! thresholds set in `[query]`.

use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Distinct, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, InTarget,
    LimitClause, ObjectName, Query, Select, SelectItem, SetExpr, SetOperator, SetQuantifier,
    Statement, TableFactor, Value, Visit, Visitor,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule_id: &'static str,
    pub severity: Severity,
    pub message: String,
    pub snippet: String,
}

/// A rule's identity and advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub severity: Severity,
    pub message: &'static str,
}

macro_rules! rules {
    ($($name:ident = $id:literal, $severity:ident, $message:literal;)*) => {
        $(pub const $name: Rule = Rule { id: $id, severity: Severity::$severity, message: $message };)*
        /// Every rule, in the order docs/query-rules.md lists them.
        pub const ALL: &[Rule] = &[$($name),*];
    };
}

rules! {
    PARSE_ERROR = "parse_error", Error,
        "the statement does not parse in this dialect; check the dialect and the syntax (the fingerprint comes from the tokens)";
    SELECT_STAR = "select_star", Warning,
        "SELECT * reads every column and breaks when columns change; list the columns you need";
    UNBOUNDED_SELECT = "select_without_where_or_limit", Warning,
        "SELECT over a table with neither WHERE nor LIMIT reads the whole table; filter or page it";
    UPDATE_WITHOUT_WHERE = "update_without_where", Critical,
        "UPDATE without WHERE changes every row; add a WHERE clause (WHERE true if you really mean all)";
    DELETE_WITHOUT_WHERE = "delete_without_where", Critical,
        "DELETE without WHERE removes every row; add a WHERE clause, or TRUNCATE if you mean all";
    LEADING_WILDCARD = "leading_wildcard_like", Warning,
        "LIKE with a leading wildcard cannot use a B-tree index; anchor the pattern or use full-text or trigram search";
    NULL_COMPARISON = "null_comparison", Error,
        "= NULL and != NULL are never true; use IS NULL or IS NOT NULL";
    NOT_IN_SUBQUERY = "not_in_subquery", Warning,
        "NOT IN (SELECT ...) returns no rows when the subquery yields a NULL; use NOT EXISTS";
    IMPLICIT_CROSS_JOIN = "implicit_cross_join", Warning,
        "tables listed with commas are joined implicitly, a cross join when a condition is missed; use JOIN ... ON";
    ORDER_BY_RANDOM = "order_by_random", Warning,
        "ORDER BY RAND()/RANDOM() sorts the whole table; pick random keys or use TABLESAMPLE";
    FUNCTION_ON_COLUMN = "function_on_column_in_where", Warning,
        "a function applied to a column in WHERE defeats its index; compare the bare column, or index the expression";
    LONG_IN_LIST = "long_in_list", Warning,
        "a very long IN list is slow to parse and plan; use a temporary table, VALUES list or = ANY(array)";
    LARGE_OFFSET = "large_offset", Warning,
        "a large OFFSET reads and discards every skipped row; page by key (WHERE id > last_id ORDER BY id LIMIT n)";
    INSERT_WITHOUT_COLUMNS = "insert_without_columns", Warning,
        "INSERT without a column list breaks when the table's columns change; name the columns";
    DISTINCT_WITH_JOIN = "distinct_with_join", Info,
        "SELECT DISTINCT over a join often hides a join fan-out; check the join condition or use EXISTS";
    SUBQUERY_AS_JOIN = "in_subquery_could_be_join", Info,
        "IN (SELECT ...) can often be a JOIN or EXISTS, which most planners handle better";
    MIXED_AND_OR = "mixed_and_or_without_parentheses", Warning,
        "AND and OR mixed without parentheses rely on precedence (AND binds first); add parentheses to say what you mean";
    UNION_WITHOUT_ALL = "union_without_all", Info,
        "UNION removes duplicates with a sort or hash; use UNION ALL when rows cannot repeat or duplicates are fine";
    MULTIPLE_STATEMENTS = "multiple_statements", Info,
        "more than one statement in one text; fingerprints and statistics are per text, so send statements one by one";
    NOT_ANALYZED = "not_analyzed", Info,
        "valid SQL that gantry's SQL parser does not support yet; the fingerprint and statistics are unaffected";
}

/// Which rules run and their thresholds (from `[query]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSettings {
    pub disabled: HashSet<String>,
    pub max_in_list: usize,
    pub max_offset: u64,
}

impl Default for RuleSettings {
    fn default() -> Self {
        Self {
            disabled: HashSet::new(),
            max_in_list: 100,
            max_offset: 1000,
        }
    }
}

const SNIPPET_CHARS: usize = 160;

fn snippet(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    if text.chars().count() <= SNIPPET_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(SNIPPET_CHARS).collect();
    cut.push('…');
    cut
}

pub struct Findings<'a> {
    settings: &'a RuleSettings,
    pub found: Vec<Finding>,
    /// The statement's CTE names (lower case): reading one is not reading a
    /// table — it has no index to miss and was filtered where it was defined.
    ctes: HashSet<String>,
    /// Subqueries whose reach is set by where they stand (IN / NOT IN,
    /// ALL / ANY, EXISTS), by address: the tree outlives the visit.
    placed_subqueries: HashSet<usize>,
    /// SELECTs directly under EXISTS: their projection is never read.
    exists_selects: HashSet<usize>,
    /// Every relation named in the statements checked (tables, views and
    /// CTE reads alike), as [`table_name`] writes them: gathered in the
    /// rules' walk, so Analyze walks the tree once.
    relations: BTreeSet<String>,
}

/// A table name as written: unquoted parts in lower case, quoted parts kept.
fn table_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) if ident.quote_style.is_none() => ident.value.to_lowercase(),
            Some(ident) => ident.value.clone(),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn address<T>(node: &T) -> usize {
    std::ptr::from_ref(node) as usize
}

impl<'a> Findings<'a> {
    pub fn new(settings: &'a RuleSettings) -> Self {
        Self {
            settings,
            found: Vec::new(),
            ctes: HashSet::new(),
            placed_subqueries: HashSet::new(),
            exists_selects: HashSet::new(),
            relations: BTreeSet::new(),
        }
    }

    /// The relations named in the statements checked so far (sorted).
    pub fn take_relations(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.relations)
    }

    /// A base table (not a CTE, not a table function, not a subquery).
    fn is_table(&self, relation: &TableFactor) -> bool {
        match relation {
            TableFactor::Table { name, args, .. } => {
                args.is_none()
                    && !name.0.last().is_some_and(|part| {
                        self.ctes.contains(&part.to_string().to_ascii_lowercase())
                    })
            }
            _ => false,
        }
    }

    /// Whether the SELECT reads a base table, joined or not.
    fn reads_a_table(&self, select: &Select) -> bool {
        select.from.iter().any(|t| {
            self.is_table(&t.relation) || t.joins.iter().any(|j| self.is_table(&j.relation))
        })
    }

    pub fn add(&mut self, rule: Rule, snippet_text: impl std::fmt::Display) {
        self.add_with(rule, rule.message.to_string(), snippet_text);
    }

    fn add_with(&mut self, rule: Rule, message: String, snippet_text: impl std::fmt::Display) {
        if self.settings.disabled.contains(rule.id) {
            return;
        }
        self.found.push(Finding {
            rule_id: rule.id,
            severity: rule.severity,
            message,
            snippet: snippet(snippet_text),
        });
    }

    /// The parser's own words, after the rule's advice.
    pub fn add_parse_error(&mut self, error: &str) {
        self.add_with(
            PARSE_ERROR,
            format!("{} ({error})", PARSE_ERROR.message),
            error,
        );
    }

    /// Valid SQL the parser does not know (`unsupported.rs`): information,
    /// not a finding against the query.
    pub fn add_not_analyzed(&mut self, construct: &str, rest_analyzed: bool) {
        let rest = if rest_analyzed {
            "the rest of the statement was analyzed"
        } else {
            "the statement was not checked by the rules"
        };
        self.add_with(
            NOT_ANALYZED,
            format!(
                "not analyzed: {construct} — {}; {rest}",
                NOT_ANALYZED.message
            ),
            construct,
        );
    }

    /// Runs every rule over one parsed statement.
    pub fn check(&mut self, statement: &Statement) {
        let _ = statement.visit(self);
    }
}

fn is_null(expr: &Expr) -> bool {
    matches!(expr, Expr::Value(v) if v.value == Value::Null)
}

fn function_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Function(f) => Some(f.name.to_string().to_ascii_lowercase()),
        _ => None,
    }
}

fn is_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
}

/// A column inside something that hides it from an index: a function call
/// with a column among its arguments (`lower(email)`), or the special forms
/// sqlparser gives their own nodes — a cast (`created_at::date`,
/// `CAST(created_at AS date)`), `substr`/`SUBSTRING`, `TRIM`, `EXTRACT`,
/// `CEIL`/`FLOOR`, `AT TIME ZONE`.
fn function_over_column(expr: &Expr) -> bool {
    match expr {
        Expr::Function(_) => function_call_over_column(expr),
        Expr::Cast { expr, .. }
        | Expr::Substring { expr, .. }
        | Expr::Trim { expr, .. }
        | Expr::Extract { expr, .. }
        | Expr::Ceil { expr, .. }
        | Expr::Floor { expr, .. }
        | Expr::AtTimeZone {
            timestamp: expr, ..
        } => is_column(expr) || function_over_column(expr),
        _ => false,
    }
}

/// A function call with a column among its arguments, e.g. `lower(email)`.
fn function_call_over_column(expr: &Expr) -> bool {
    let Expr::Function(f) = expr else {
        return false;
    };
    let FunctionArguments::List(list) = &f.args else {
        return false;
    };
    list.args.iter().any(|arg| match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
        | FunctionArg::Named {
            arg: FunctionArgExpr::Expr(e),
            ..
        } => is_column(e) || function_over_column(e),
        _ => false,
    })
}

/// Comparisons in a WHERE clause (through AND, OR and parentheses) whose
/// column side is wrapped in a function.
fn functions_on_columns<'e>(expr: &'e Expr, out: &mut Vec<&'e Expr>) {
    match expr {
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And | BinaryOperator::Or => {
                functions_on_columns(left, out);
                functions_on_columns(right, out);
            }
            BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
                if function_over_column(left) || function_over_column(right) =>
            {
                out.push(expr);
            }
            _ => {}
        },
        Expr::Nested(inner) => functions_on_columns(inner, out),
        Expr::Like { expr: e, .. }
        | Expr::ILike { expr: e, .. }
        | Expr::In { expr: e, .. }
        | Expr::Between { expr: e, .. }
            if function_over_column(e) =>
        {
            out.push(expr)
        }
        _ => {}
    }
}

/// The names a FROM item answers to (its alias, else its table's last name),
/// lower case; `None` for a LATERAL item, which is linked by construction.
fn item_names(item: &sqlparser::ast::TableWithJoins) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for relation in std::iter::once(&item.relation).chain(item.joins.iter().map(|j| &j.relation)) {
        match relation {
            TableFactor::Derived { lateral: true, .. } => return None,
            TableFactor::Function { lateral: true, .. } => return None,
            TableFactor::Table { name, alias, .. } => {
                if let Some(alias) = alias {
                    names.push(alias.name.value.to_ascii_lowercase());
                }
                if let Some(last) = name.0.last() {
                    names.push(last.to_string().to_ascii_lowercase());
                }
            }
            TableFactor::Derived {
                alias: Some(alias), ..
            } => names.push(alias.name.value.to_ascii_lowercase()),
            _ => {}
        }
    }
    Some(names)
}

/// The qualifiers (`o` in `o.customer_id`) of the columns in an expression,
/// and whether it has a column without one.
fn qualifiers(expr: &Expr, out: &mut Vec<String>, bare: &mut bool) {
    match expr {
        Expr::Identifier(_) => *bare = true,
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            out.push(parts[parts.len() - 2].value.to_ascii_lowercase());
        }
        Expr::BinaryOp { left, right, .. } => {
            qualifiers(left, out, bare);
            qualifiers(right, out, bare);
        }
        Expr::Nested(e) | Expr::Cast { expr: e, .. } | Expr::UnaryOp { expr: e, .. } => {
            qualifiers(e, out, bare)
        }
        Expr::Function(_) => {
            // lower(a.email) = b.email links a and b as well.
            let mut visitor = QualifierVisitor(out, bare);
            let _ = expr.visit(&mut visitor);
        }
        _ => {}
    }
}

struct QualifierVisitor<'o>(&'o mut Vec<String>, &'o mut bool);

impl Visitor for QualifierVisitor<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Identifier(_) => *self.1 = true,
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                self.0
                    .push(parts[parts.len() - 2].value.to_ascii_lowercase());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// Whether the predicates in WHERE connect every comma-separated FROM item
/// (a comparison between columns of two items links them). Only a FROM list
/// that stays in pieces is a real cross join; a comparison of two bare
/// columns cannot be placed and counts as linking everything.
fn comma_joins_are_linked(select: &Select) -> bool {
    let mut items: Vec<Vec<String>> = Vec::new();
    for item in &select.from {
        match item_names(item) {
            Some(names) => items.push(names),
            None => return true,
        }
    }
    let Some(selection) = &select.selection else {
        return false;
    };
    let mut group: Vec<usize> = (0..items.len()).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while group[i] != i {
            group[i] = group[group[i]];
            i = group[i];
        }
        i
    }
    let item_of = |q: &str| items.iter().position(|names| names.iter().any(|n| n == q));
    let mut comparisons = Vec::new();
    collect_comparisons(selection, &mut comparisons);
    for (left, right) in comparisons {
        let (mut lq, mut rq) = (Vec::new(), Vec::new());
        let (mut lbare, mut rbare) = (false, false);
        qualifiers(left, &mut lq, &mut lbare);
        qualifiers(right, &mut rq, &mut rbare);
        if lbare && rbare {
            return true;
        }
        for l in lq.iter().filter_map(|q| item_of(q)) {
            for r in rq.iter().filter_map(|q| item_of(q)) {
                let (a, b) = (root(&mut group, l), root(&mut group, r));
                group[a] = b;
            }
        }
    }
    let first = root(&mut group, 0);
    (1..items.len()).all(|i| root(&mut group, i) == first)
}

/// The two sides of every comparison in a WHERE clause (through AND, OR
/// and parentheses).
fn collect_comparisons<'e>(expr: &'e Expr, out: &mut Vec<(&'e Expr, &'e Expr)>) {
    match expr {
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And | BinaryOperator::Or => {
                collect_comparisons(left, out);
                collect_comparisons(right, out);
            }
            BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq => out.push((left, right)),
            _ => {}
        },
        Expr::Nested(inner) => collect_comparisons(inner, out),
        _ => {}
    }
}

fn limit_and_offset(query: &Query) -> (bool, Option<&Expr>) {
    let fetch = query.fetch.is_some();
    match &query.limit_clause {
        None => (fetch, None),
        Some(LimitClause::LimitOffset { limit, offset, .. }) => {
            (fetch || limit.is_some(), offset.as_ref().map(|o| &o.value))
        }
        Some(LimitClause::OffsetCommaLimit { offset, .. }) => (true, Some(offset)),
    }
}

fn number(expr: &Expr) -> Option<u64> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

impl Visitor for Findings<'_> {
    type Break = ();

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        self.relations.insert(table_name(name));
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Update(u) if u.selection.is_none() => {
                self.add(UPDATE_WITHOUT_WHERE, statement)
            }
            Statement::Delete(d) if d.selection.is_none() => {
                self.add(DELETE_WITHOUT_WHERE, statement)
            }
            Statement::Insert(i) if i.columns.is_empty() && i.source.is_some() => {
                self.add(INSERT_WITHOUT_COLUMNS, statement)
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.to_ascii_lowercase());
            }
        }
        let (limited, offset) = limit_and_offset(query);
        if let Some(offset) = offset
            && let Some(n) = number(offset)
            && n > self.settings.max_offset
        {
            self.add_with(
                LARGE_OFFSET,
                format!(
                    "OFFSET {n} is above {}: {}",
                    self.settings.max_offset, LARGE_OFFSET.message
                ),
                offset,
            );
        }
        if let Some(order_by) = &query.order_by
            && let sqlparser::ast::OrderByKind::Expressions(exprs) = &order_by.kind
        {
            for e in exprs {
                if matches!(function_name(&e.expr).as_deref(), Some("rand" | "random")) {
                    self.add(ORDER_BY_RANDOM, &e.expr);
                }
            }
        }
        if let SetExpr::SetOperation {
            op: SetOperator::Union,
            set_quantifier,
            ..
        } = &*query.body
            && matches!(
                set_quantifier,
                SetQuantifier::None | SetQuantifier::Distinct
            )
        {
            self.add(UNION_WITHOUT_ALL, &query.body);
        }
        if let SetExpr::Select(select) = &*query.body
            && !self.placed_subqueries.contains(&address(query))
            && self.reads_a_table(select)
            && select.selection.is_none()
            && !limited
            && select.top.is_none()
        {
            self.add(UNBOUNDED_SELECT, select);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(star) = select.projection.iter().find(|item| {
            matches!(
                item,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        }) && !self.exists_selects.contains(&address(select))
        {
            self.add(SELECT_STAR, star);
        }
        if select.from.len() > 1 && !comma_joins_are_linked(select) {
            let tables: Vec<String> = select.from.iter().map(|t| t.relation.to_string()).collect();
            self.add(IMPLICIT_CROSS_JOIN, format!("FROM {}", tables.join(", ")));
        }
        if matches!(select.distinct, Some(Distinct::Distinct))
            && select.from.iter().any(|t| !t.joins.is_empty())
        {
            self.add(DISTINCT_WITH_JOIN, "SELECT DISTINCT … JOIN");
        }
        if let Some(selection) = &select.selection
            && self.reads_a_table(select)
        {
            let mut hits = Vec::new();
            functions_on_columns(selection, &mut hits);
            for hit in hits {
                self.add(FUNCTION_ON_COLUMN, hit);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Exists { subquery, .. } => {
                self.placed_subqueries.insert(address(&**subquery));
                if let SetExpr::Select(select) = &*subquery.body {
                    self.exists_selects.insert(address(&**select));
                }
            }
            Expr::In {
                target: InTarget::Subquery(subquery),
                ..
            } => {
                self.placed_subqueries.insert(address(&**subquery));
            }
            Expr::AllOp { right, .. } | Expr::AnyOp { right, .. } => {
                if let Expr::Subquery(subquery) = &**right {
                    self.placed_subqueries.insert(address(&**subquery));
                }
            }
            _ => {}
        }
        match expr {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq | BinaryOperator::NotEq,
                right,
            } if is_null(left) || is_null(right) => self.add(NULL_COMPARISON, expr),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Or,
                right,
            } if [left, right].iter().any(|side| {
                matches!(
                    &***side,
                    Expr::BinaryOp {
                        op: BinaryOperator::And,
                        ..
                    }
                )
            }) =>
            {
                self.add(MIXED_AND_OR, expr)
            }
            Expr::Like { pattern, .. } | Expr::ILike { pattern, .. } => {
                // The pattern's first piece: `'%' || $1` starts with a wildcard too.
                let mut first = &**pattern;
                while let Expr::BinaryOp {
                    left,
                    op: BinaryOperator::StringConcat,
                    ..
                } = first
                {
                    first = left;
                }
                if let Expr::Value(v) = first
                    && let Value::SingleQuotedString(p) | Value::DoubleQuotedString(p) = &v.value
                    && (p.starts_with('%') || p.starts_with('_'))
                {
                    self.add(LEADING_WILDCARD, expr);
                }
            }
            // `<> ALL (subquery)`: the same NULL trap as NOT IN.
            Expr::AllOp {
                compare_op: BinaryOperator::NotEq,
                right,
                ..
            } if matches!(&**right, Expr::Subquery(_)) => self.add(NOT_IN_SUBQUERY, expr),
            Expr::In {
                target: InTarget::Subquery(_),
                negated: true,
                ..
            } => self.add(NOT_IN_SUBQUERY, expr),
            Expr::In {
                target: InTarget::Subquery(_),
                negated: false,
                ..
            } => self.add(SUBQUERY_AS_JOIN, expr),
            Expr::In {
                target: InTarget::List(list),
                ..
            } if list.len() > self.settings.max_in_list => self.add_with(
                LONG_IN_LIST,
                format!(
                    "IN list of {} items (above {}): {}",
                    list.len(),
                    self.settings.max_in_list,
                    LONG_IN_LIST.message
                ),
                format!("IN ({} items)", list.len()),
            ),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}
