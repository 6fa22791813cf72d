//! The SQL dialects gantry parses, by the names the API accepts.

use sqlparser::dialect::{
    Dialect as SqlDialect, GenericDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    #[default]
    Generic,
    Postgres,
    Mysql,
    Sqlite,
}

impl Dialect {
    pub const NAMES: &'static str = "postgres, mysql, sqlite or generic";

    /// Empty is generic; names are case-insensitive; `postgresql` is postgres.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "" | "generic" => Some(Dialect::Generic),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" => Some(Dialect::Mysql),
            "sqlite" => Some(Dialect::Sqlite),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Generic => "generic",
            Dialect::Postgres => "postgres",
            Dialect::Mysql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }

    pub fn sqlparser(self) -> &'static dyn SqlDialect {
        match self {
            Dialect::Generic => &GenericDialect {},
            Dialect::Postgres => &PostgreSqlDialect {},
            Dialect::Mysql => &MySqlDialect {},
            Dialect::Sqlite => &SQLiteDialect {},
        }
    }

    /// Postgres numbers its placeholders; the others write `?`.
    pub fn numbered_placeholders(self) -> bool {
        self == Dialect::Postgres
    }

    /// Whether a quoted identifier keeps its case (Postgres: `"Users"` is
    /// not `users`); MySQL and SQLite compare column names without case.
    pub fn quoted_identifiers_keep_case(self) -> bool {
        matches!(self, Dialect::Postgres | Dialect::Generic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively_and_unknown_ones_do_not() {
        assert_eq!(Dialect::parse(""), Some(Dialect::Generic));
        assert_eq!(Dialect::parse("PostgreSQL"), Some(Dialect::Postgres));
        assert_eq!(Dialect::parse("mysql"), Some(Dialect::Mysql));
        assert_eq!(Dialect::parse("SQLite"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::parse("oracle"), None);
    }
}
